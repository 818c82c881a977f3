"""Anatomical hand poses: joint limits, named gestures and a sampled library of key poses.

A pose is a set of anatomical angles ``angles [21, 3]`` (radians): for every joint j of
skeleton.py, ``angles[j] = (flexion, abduction, twist)`` of the bone that rotates with joint j,
relative to its parent bone. Rows of the wrist (0) and the tips (4, 8, 12, 16, 20) are zero.
Sign conventions (every subject has its own axes, see ``Subject.joint_axes``):

* flexion > 0 bends the bone towards its pad side (fingers: towards the palm; thumb: across the palm
  towards the little finger); flexion < 0 is hyperextension;
* abduction > 0 moves the bone towards its radial side for the four long fingers (towards the thumb,
  every finger the same way: spreading moves the index radially, > 0, and the ring and little finger
  ulnarly, < 0); for the thumb, abduction > 0 is palmar abduction (away from the palm plane);
* twist > 0 is a right-handed rotation about the bone's own distal direction.

The rotation of joint j is R = R_flex R_abd R_twist (twist applied first, flexion last), each about
the subject's rest axes; ``Subject.theta_for`` turns it into SMPL axis-angle theta.

Legend: P poses, J joints (21).
"""
import dataclasses

import numpy as np

from hsr_tf.hand_model import skeleton as sk

FLEX, ABD, TWIST = 0, 1, 2

# Joint limits in degrees: (flex_min, flex_max), (abd_min, abd_max), (twist_min, twist_max).
_FINGER_MCP_ABD = {"index": (-15.0, 20.0), "middle": (-15.0, 15.0), "ring": (-20.0, 12.0), "pinky": (-30.0, 12.0)}
_LIMITS_DEG = {}
for _name, _abd in _FINGER_MCP_ABD.items():
    _mcp, _pip, _dip = sk.FINGER_JOINTS[sk.FINGER_NAMES.index(_name)][:3]
    _LIMITS_DEG[_mcp] = ((-20.0, 90.0), _abd, (-10.0, 10.0))
    _LIMITS_DEG[_pip] = ((0.0, 110.0), (-5.0, 5.0), (-5.0, 5.0))
    _LIMITS_DEG[_dip] = ((0.0, 80.0), (-3.0, 3.0), (-3.0, 3.0))
_LIMITS_DEG[1] = ((-20.0, 50.0), (-10.0, 60.0), (-15.0, 40.0))  # thumb CMC
_LIMITS_DEG[2] = ((-10.0, 65.0), (-10.0, 10.0), (-10.0, 10.0))  # thumb MCP
_LIMITS_DEG[3] = ((-15.0, 85.0), (-3.0, 3.0), (-3.0, 3.0))  # thumb IP

#: [21, 3, 2] (min, max) radians of (flexion, abduction, twist) per joint; zero for wrist and tips.
JOINT_LIMITS = np.zeros((sk.NUM_JOINTS, 3, 2))
for _j, _lim in _LIMITS_DEG.items():
    JOINT_LIMITS[_j] = np.radians(np.array(_lim))


def within_limits(angles, tol=1e-9):
    """Whether each pose keeps every joint within JOINT_LIMITS.

    Args:
      angles: [..., 21, 3] anatomical angles (radians).
      tol: slack (radians).
    Returns:
      bool array [...].
    """
    angles = np.asarray(angles, dtype=np.float64)
    if angles.shape[-2:] != (sk.NUM_JOINTS, 3):
        raise ValueError(f"angles: expected shape [..., {sk.NUM_JOINTS}, 3], found {angles.shape}")
    ok = (angles >= JOINT_LIMITS[..., 0] - tol) & (angles <= JOINT_LIMITS[..., 1] + tol)
    return np.all(ok, axis=(-2, -1))


def clip_to_limits(angles):
    """Clips anatomical angles [..., 21, 3] into JOINT_LIMITS."""
    return np.clip(angles, JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1])


@dataclasses.dataclass
class PoseLibrary:
    """Key poses: names [P] (gesture name, '<gesture>_vNN' variant or 'sample_NNNN'), angles [P, 21, 3]."""
    names: list
    angles: np.ndarray

    def __len__(self):
        return len(self.names)


def _hand(thumb=(0, 0, 0, 0, 0), index=(0, 0, 0, 0), middle=(0, 0, 0, 0), ring=(0, 0, 0, 0),
          pinky=(0, 0, 0, 0)):
    """Angles [21, 3] from degrees.

    thumb = (cmc flex, cmc abd, cmc twist, mcp flex, ip flex);
    long finger = (mcp flex, pip flex, dip flex, mcp abd).
    """
    a = np.zeros((sk.NUM_JOINTS, 3))
    c, m, i = sk.FINGER_JOINTS[0][:3]
    a[c] = thumb[0], thumb[1], thumb[2]
    a[m, FLEX] = thumb[3]
    a[i, FLEX] = thumb[4]
    for name, spec in (("index", index), ("middle", middle), ("ring", ring), ("pinky", pinky)):
        mcp, pip, dip = sk.FINGER_JOINTS[sk.FINGER_NAMES.index(name)][:3]
        a[mcp, FLEX], a[pip, FLEX], a[dip, FLEX], a[mcp, ABD] = spec
    return np.radians(a)


_FIST = (85, 100, 60, 0)
_CURL_R = (85, 100, 60, -3)
_CURL_P = (85, 100, 60, -6)
_STRAIGHT = (0, 0, 0, 0)
# Thumb angles of the curled-finger gestures, chosen with a winding-number interpenetration check
# on subjects 0-2 of seed 0 (WORKSPACE_NOTES.md ("Generator")): the earlier (40, 10, 15, 45, 30) and
# (45, 20, 20, 55, 40) pushed the thumb through the curled index and middle fingers.
_THUMB_OVER = (44, 39, 30, 22, 10)  # thumb lying on the middle phalanges of the curled fingers
_THUMB_IN = (48, 30, 35, 34, 17)  # thumb reaching across towards a curled little finger

#: Named gestures (anatomical angles [21, 3], radians).
GESTURES = {
    "open": _hand(),
    "relaxed": _hand((10, 10, 5, 10, 10), (20, 25, 15, 2), (25, 30, 18, 0), (28, 32, 20, -2), (30, 35, 22, -4)),
    "fist": _hand(_THUMB_OVER, _FIST, _FIST, _CURL_R, _CURL_P),
    "point": _hand(_THUMB_OVER, _STRAIGHT, _FIST, _CURL_R, _CURL_P),
    "pinch": _hand((25, 35, 25, 15, 20), (40, 45, 25, 0), (20, 25, 15, 0), (18, 22, 12, -3), (15, 20, 10, -6)),
    "grasp": _hand((15, 45, 30, 10, 15), (45, 55, 30, 0), (45, 55, 30, 0), (45, 55, 30, -2), (45, 55, 30, -4)),
    "ok": _hand((25, 35, 25, 20, 25), (45, 60, 35, 0), (5, 5, 3, -3), (5, 5, 3, -8), (5, 5, 3, -15)),
    "one": _hand(_THUMB_OVER, _STRAIGHT, _FIST, _CURL_R, _CURL_P),
    "two": _hand(_THUMB_OVER, (0, 0, 0, 5), (0, 0, 0, -3), _CURL_R, _CURL_P),
    "three": _hand(_THUMB_IN, (0, 0, 0, 5), (0, 0, 0, 0), (0, 0, 0, -5), _CURL_P),
    "four": _hand((45, 25, 25, 60, 50), (0, 0, 0, 5), (0, 0, 0, 0), (0, 0, 0, -5), (0, 0, 0, -10)),
    "five": _hand((-5, 20, 0, 0, 0), (0, 0, 0, 12), (0, 0, 0, 0), (0, 0, 0, -8), (0, 0, 0, -18)),
    "thumbs_up": _hand((-10, 20, 0, 0, 0), _FIST, _FIST, _CURL_R, _CURL_P),
    "victory": _hand(_THUMB_OVER, (0, 0, 0, 12), (0, 0, 0, -8), _CURL_R, _CURL_P),
    "claw": _hand((20, 30, 15, 30, 40), (0, 80, 60, 5), (0, 80, 60, 0), (0, 80, 60, -5), (0, 80, 60, -10)),
    "rock": _hand(_THUMB_OVER, (0, 0, 0, 5), _FIST, _CURL_R, (0, 0, 0, -10)),
    "spread": _hand((-15, 45, 10, 0, 0), (0, 0, 0, 20), (0, 0, 0, 0), (0, 0, 0, -15), (0, 0, 0, -28)),
    "call_me": _hand((-10, 30, 0, 0, 0), _FIST, _FIST, _CURL_R, (0, 0, 0, -15)),
    "gun": _hand((-10, 20, 0, 0, 0), (0, 0, 0, 0), _FIST, _CURL_R, _CURL_P),
    "tabletop": _hand((10, 30, 10, 10, 5), (90, 0, 0, 0), (90, 0, 0, 0), (90, 0, 0, 0), (90, 0, 0, 0)),
    "hook": _hand((0, 10, 0, 5, 5), (10, 90, 65, 0), (10, 90, 65, 0), (10, 90, 65, 0), (10, 90, 65, 0)),
    "tripod": _hand((25, 40, 30, 20, 20), (40, 45, 25, 0), (45, 45, 25, -3), (30, 35, 20, -5), (25, 30, 15, -8)),
}
GESTURE_NAMES = tuple(GESTURES)


def _finger_angles(rng, curl, spread):
    """Long-finger angles [P, 4, 3] (MCP flex, PIP flex, DIP flex) and MCP abduction [P, 4]."""
    num = curl.shape[0]
    mcp = curl * np.radians(85.0) + rng.normal(0, np.radians(8.0), (num, 4))
    mcp = np.where(curl < 0.1, mcp - rng.uniform(0, np.radians(15.0), (num, 4)) * (curl < 0.05), mcp)
    pip = curl * np.radians(100.0) + rng.normal(0, np.radians(10.0), (num, 4))
    pip = np.clip(pip, 0.0, np.radians(110.0))
    dip = pip * (2.0 / 3.0) + rng.normal(0, np.radians(4.0), (num, 4))  # DIP ~ 2/3 PIP
    spread_max = np.radians(np.array([18.0, 2.0, -12.0, -24.0]))
    abd = spread[:, None] * spread_max * (1.0 - 0.7 * np.clip(curl, 0, 1)) + rng.normal(0, np.radians(2.5), (num, 4))
    return np.stack([mcp, pip, dip], axis=-1), abd


def sample_poses(num_poses, rng):
    """Poses [P, 21, 3] sampled within the limits with natural coupling between fingers and joints."""
    num = int(num_poses)
    angles = np.zeros((num, sk.NUM_JOINTS, 3))
    # neighbouring fingers correlated: a global curl plus an AR(1) perturbation from index to pinky
    base = rng.uniform(0.0, 1.0, num)
    noise = np.zeros((num, 4))
    noise[:, 0] = rng.normal(0, 1, num)
    for q in range(1, 4):
        noise[:, q] = 0.6 * noise[:, q - 1] + 0.8 * rng.normal(0, 1, num)
    curl = base[:, None] + 0.2 * noise
    # a third of the poses are gesture-like: some fingers fully extended, the others curled
    gesture_like = rng.uniform(size=num) < 0.35
    extended = rng.uniform(size=(num, 4)) < 0.5
    for q in range(1, 4):  # a finger often does what its radial neighbour does
        follow = rng.uniform(size=num) < 0.6
        extended[:, q] = np.where(follow, extended[:, q - 1], extended[:, q])
    curl = np.where(gesture_like[:, None], np.where(extended, rng.uniform(0, 0.12, (num, 4)),
                                                     rng.uniform(0.75, 1.05, (num, 4))), curl)
    curl = np.clip(curl, -0.1, 1.05)
    spread = rng.uniform(-0.3, 1.0, num)
    flex, abd = _finger_angles(rng, curl, spread)
    for q in range(4):
        mcp, pip, dip = sk.FINGER_JOINTS[q + 1][:3]
        angles[:, mcp, FLEX] = flex[:, q, 0]
        angles[:, pip, FLEX] = flex[:, q, 1]
        angles[:, dip, FLEX] = flex[:, q, 2]
        angles[:, mcp, ABD] = abd[:, q]
        angles[:, mcp, TWIST] = rng.normal(0, np.radians(3.0), num)
        angles[:, pip, ABD] = rng.normal(0, np.radians(1.5), num)
    # thumb: opposition couples palmar abduction with pronation (twist); IP follows MCP loosely
    across = rng.uniform(0.0, 1.0, num)
    c, m, i = sk.FINGER_JOINTS[0][:3]
    angles[:, c, FLEX] = np.radians(-15.0 + 60.0 * across) + rng.normal(0, np.radians(5.0), num)
    angles[:, c, ABD] = rng.uniform(np.radians(-5.0), np.radians(55.0), num)
    angles[:, c, TWIST] = 0.5 * angles[:, c, ABD] + rng.normal(0, np.radians(6.0), num)
    angles[:, m, FLEX] = np.radians(-5.0 + 55.0 * across) + rng.normal(0, np.radians(8.0), num)
    angles[:, i, FLEX] = 0.8 * angles[:, m, FLEX] + rng.normal(0, np.radians(10.0), num)
    return clip_to_limits(angles)


def jitter(angles, rng, flex_sd=5.0, abd_sd=2.5):
    """Small variations [N, 21, 3] of poses [N, 21, 3] (degrees of spread), clipped to the limits."""
    out = np.array(angles, dtype=np.float64, copy=True)
    out[..., FLEX] += rng.normal(0, np.radians(flex_sd), out[..., FLEX].shape)
    out[..., ABD] += rng.normal(0, np.radians(abd_sd), out[..., ABD].shape)
    for q in range(4):  # keep the DIP ~ 2/3 PIP coupling
        _, pip, dip = sk.FINGER_JOINTS[q + 1][:3]
        out[..., dip, FLEX] = 0.5 * out[..., dip, FLEX] + 0.5 * (2.0 / 3.0) * out[..., pip, FLEX]
    mask = np.zeros((sk.NUM_JOINTS, 1))
    mask[[j for f in range(5) for j in sk.FINGER_JOINTS[f][:3]]] = 1.0
    return clip_to_limits(out * mask)


def pose_library(num_poses=1840, seed=0, variants_per_gesture=20):
    """The key-pose library: every named gesture, jittered variants of them, then sampled poses.

    Which poses, for P = ``num_poses``:

    * P >= len(GESTURES) (22): all named gestures (in ``GESTURE_NAMES`` order), then up to
      ``variants_per_gesture`` jittered variants of each (as many as fit evenly), then sampled poses to fill P.
    * 1 <= P < 22: the first P named gestures in ``GESTURE_NAMES`` order (open, relaxed, fist, point, pinch, ...),
      no randomness. These are also the first P poses of every larger library, so a small set is a prefix of a
      bigger one with the same seed.

    Args:
      num_poses: total number of poses (>= 1).
      seed: integer seed (deterministic).
      variants_per_gesture: jittered copies of each gesture.
    Returns:
      PoseLibrary with names [num_poses] and angles [num_poses, 21, 3] (radians), all within limits.
    """
    if isinstance(num_poses, bool) or int(num_poses) != num_poses or num_poses < 1:
        raise ValueError(f"num_poses: expected a positive whole number of poses, found {num_poses!r}")
    num_poses = int(num_poses)
    if num_poses < len(GESTURES):
        names = list(GESTURE_NAMES[:num_poses])
        return PoseLibrary(names, np.stack([GESTURES[n] for n in names]))
    rng = np.random.default_rng(int(seed))
    names = list(GESTURE_NAMES)
    blocks = [np.stack([GESTURES[n] for n in names])]
    n_var = min(variants_per_gesture, (num_poses - len(names)) // len(GESTURES))
    for name in GESTURE_NAMES:
        blocks.append(jitter(np.repeat(GESTURES[name][None], n_var, axis=0), rng))
        names += [f"{name}_v{k:02d}" for k in range(n_var)]
    rest = num_poses - len(names)
    blocks.append(sample_poses(rest, rng))
    names += [f"sample_{k:04d}" for k in range(rest)]
    angles = np.concatenate(blocks, axis=0)
    if not np.all(within_limits(angles)):
        raise AssertionError("pose library: a pose exceeds the joint limits")
    return PoseLibrary(names, angles)
