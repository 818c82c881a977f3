"""The 21-joint hand skeleton shared by the generator, the hand model and the losses.

Joint order (0-based): 0 wrist; 1-4 thumb (CMC, MCP, IP, tip); 5-8 index (MCP, PIP,
DIP, tip); 9-12 middle; 13-16 ring; 17-20 pinky. Each finger runs root -> tip.

Kinematics follow SMPL: ``theta[j]`` is the axis-angle (radians) of joint ``j``
relative to its parent, expressed in the axes of the hand frame at rest;
``theta[0]`` is the global orientation about joint 0. The global transform of
joint j is ``G_j = G_parent(j) @ [R(theta_j) | J_j - J_parent(j)]`` with
``G_0 = [R(theta_0) | J_0]``.

Hand frame at the neutral pose (all thetas zero): a right hand, millimetres,
wrist joint at the origin, fingers along +y, palm facing -z, thumb towards +x.
This is a right hand in the project's camera convention (x right, y up, z away from the viewer), which is a
left-handed frame: a right-handed 3D viewer (open3d, matplotlib) shows the same numbers as a left hand unless it
flips one axis.

Legend: J joints (21), P any leading batch shape.
"""
import numpy as np

NUM_JOINTS = 21

JOINT_NAMES = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)

#: parent of every joint; -1 for the root (wrist).
PARENTS = np.array([-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19], dtype=np.int32)

FINGER_NAMES = ("thumb", "index", "middle", "ring", "pinky")
#: joint indices of each finger, root -> tip, shape [5, 4].
FINGER_JOINTS = np.arange(1, 21, dtype=np.int32).reshape(5, 4)
FINGER_ROOTS = FINGER_JOINTS[:, 0]
FINGER_TIPS = FINGER_JOINTS[:, 3]
#: joints that lie on the palm: the wrist and the five finger roots (used for the palm frame).
PALM_JOINTS = np.array([0, 1, 5, 9, 13, 17], dtype=np.int32)


def axis_angle_to_matrix_np(axis_angle):
    """Rodrigues' formula in NumPy (float64), exact near zero.

    Args:
      axis_angle: [..., 3] rotation vectors, radians.
    Returns:
      [..., 3, 3] rotation matrices.
    """
    aa = np.asarray(axis_angle, dtype=np.float64)
    if aa.shape[-1] != 3:
        raise ValueError(f"axis_angle: expected shape [..., 3], found {aa.shape}")
    angle_sq = np.sum(aa * aa, axis=-1)[..., None, None]
    angle = np.sqrt(angle_sq)
    small = angle_sq < 1e-8
    safe = np.where(small, 1.0, angle)
    # sin(a)/a and (1-cos(a))/a^2 with their Taylor series where a is tiny.
    a_coef = np.where(small, 1.0 - angle_sq / 6.0, np.sin(safe) / safe)
    b_coef = np.where(small, 0.5 - angle_sq / 24.0, (1.0 - np.cos(safe)) / (safe * safe))
    x, y, z = aa[..., 0], aa[..., 1], aa[..., 2]
    zero = np.zeros_like(x)
    skew = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(aa.shape[:-1] + (3, 3))
    eye = np.broadcast_to(np.eye(3), skew.shape)
    return eye + a_coef * skew + b_coef * (skew @ skew)


def forward_kinematics_np(theta, rest_joints, parents=PARENTS):
    """Global joint transforms of the kinematic chain (NumPy reference).

    Args:
      theta: [..., J, 3] axis-angle per joint relative to its parent (radians).
      rest_joints: [..., J, 3] joint positions at the neutral pose (mm).
      parents: [J] parent indices, -1 for the root; parents precede children.
    Returns:
      (transforms [..., J, 4, 4], posed_joints [..., J, 3]) where transforms map
      rest-frame coordinates *relative to the joint's rest position* onto posed
      coordinates, i.e. posed = R_global @ (x - J_rest) + J_posed.
    """
    theta = np.asarray(theta, dtype=np.float64)
    rest_joints = np.asarray(rest_joints, dtype=np.float64)
    num_joints = len(parents)
    if theta.shape[-2:] != (num_joints, 3):
        raise ValueError(f"theta: expected [..., {num_joints}, 3], found {theta.shape}")
    if rest_joints.shape[-2:] != (num_joints, 3):
        raise ValueError(f"rest_joints: expected [..., {num_joints}, 3], found {rest_joints.shape}")
    batch = np.broadcast_shapes(theta.shape[:-2], rest_joints.shape[:-2])
    theta = np.broadcast_to(theta, batch + (num_joints, 3))
    rest_joints = np.broadcast_to(rest_joints, batch + (num_joints, 3))
    local_rot = axis_angle_to_matrix_np(theta)
    global_rot = np.zeros(batch + (num_joints, 3, 3))
    posed = np.zeros(batch + (num_joints, 3))
    for j in range(num_joints):
        p = parents[j]
        if p < 0:
            global_rot[..., j, :, :] = local_rot[..., j, :, :]
            posed[..., j, :] = rest_joints[..., j, :]
        else:
            global_rot[..., j, :, :] = global_rot[..., p, :, :] @ local_rot[..., j, :, :]
            offset = rest_joints[..., j, :] - rest_joints[..., p, :]
            posed[..., j, :] = posed[..., p, :] + np.einsum("...ab,...b->...a", global_rot[..., p, :, :], offset)
    transforms = np.zeros(batch + (num_joints, 4, 4))
    transforms[..., :3, :3] = global_rot
    # x_posed = R (x - J_rest) + J_posed  =>  translation = J_posed - R J_rest
    transforms[..., :3, 3] = posed - np.einsum("...jab,...jb->...ja", global_rot, rest_joints)
    transforms[..., 3, 3] = 1.0
    return transforms, posed
