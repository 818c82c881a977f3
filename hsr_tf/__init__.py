"""hsr_tf: single-image 3D hand shape recovery in TensorFlow 2 / Keras 3.

Subpackages: ops (PointNet++ ops), geometry, hand_model, layers, models, data,
train, losses, metrics, export. Import what you need; nothing heavy happens here.
"""
__version__ = "0.1.0"
