"""The statistical hand model: skeleton, learned SMPL-style model, Keras layer, fitting.

``HandModel``/``HandModelLayer`` are imported lazily so that ``hsr_tf.hand_model.skeleton``
stays importable without TensorFlow.
"""

__all__ = ["HandModel", "HandModelLayer"]


def __getattr__(name):
    if name == "HandModel":
        from hsr_tf.hand_model.model import HandModel
        return HandModel
    if name == "HandModelLayer":
        from hsr_tf.hand_model.layer import HandModelLayer
        return HandModelLayer
    raise AttributeError(name)
