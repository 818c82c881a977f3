"""Models: ``HandShapeNet`` (depth, Deng et al.) and its ``ShapeNetwork`` stages.

``from hsr_tf.models import HandShapeNet, outputs_to_camera_mm``.
"""
from hsr_tf.models.hand_shape_net import (SHAPE_NETWORK_DEFAULTS, HandShapeNet, ShapeNetwork,
                                          outputs_to_camera_mm)

__all__ = ["HandShapeNet", "ShapeNetwork", "outputs_to_camera_mm", "SHAPE_NETWORK_DEFAULTS"]
