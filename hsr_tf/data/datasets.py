"""Per-dataset specifications of the real depth benchmarks (NYU, ICVL, MSRA).

A :class:`DatasetSpec` says, for one dataset: the names and order of its annotated
joints, the joints and frames of its evaluation protocols, the crop used to cut
the hand out of a frame (cube side and depth window, mm), and the paper's
approximate correspondence between OUR 21 hand-model joints and the dataset's
joints (Deng et al., section III-E-2), as index arrays that the losses can use:

    ours = spec.transform_our_joints(model_joints)          # [..., 21, 3]
    loss = mse(tf.gather(ours, spec.our_joint_indices, axis=-2),
               tf.gather(gt, spec.dataset_joint_indices, axis=-2))

Our joints are the 21 of ``hsr_tf.hand_model.skeleton`` (0 wrist, 1-4 thumb
CMC..tip, 5-8 index MCP..tip, 9-12 middle, 13-16 ring, 17-20 pinky).

Correspondences (paper indices are 1-based; stored here 0-based):

* NYU: our joint k pairs with NYU joint ``NYU_PAPER_LIST[k] - 1`` for all 21 of ours,
  paper list ``[31, 29, 27, 26, 25, 24, 22, 20, 19, 18, 16, 14, 13, 12, 10, 8, 7, 6,
  4, 2, 1]``; e.g. our wrist <-> NYU 30 (PALM_1), our index tip <-> NYU 18 (F4_KNU3_A).
* ICVL: our joints are first *transformed*: joint 0 (wrist) is replaced by a virtual
  palm centre, the midpoint of our wrist (0) and middle-finger MCP (9); the other 20
  are kept. Transformed 1-based joints ``[1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17,
  19, 20, 21]`` pair, in order, with ICVL's 16 joints.
* MSRA: its 21 joints pair by name/role (wrist, then each finger root -> tip). MSRA
  orders fingers index, middle, ring, little, thumb; its thumb's first joint (named
  "mcp" by MSRA like the other fingers) is the thumb root, which is our thumb CMC.

Legend: J dataset joints, K paired joints, ... any leading shape.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from hsr_tf.hand_model import skeleton

# ---------------------------------------------------------------------- joint names
_NYU_FINGERS = ("F1", "F2", "F3", "F4")  # pinky, ring, middle, index
_NYU_PARTS = ("KNU3_A", "KNU3_B", "KNU2_A", "KNU2_B", "KNU1_A", "KNU1_B")
#: The 36 joints of ``joint_data.mat`` in file order (Tompson et al. 2014).
#: F1 pinky, F2 ring, F3 middle, F4 index, TH thumb; KNU3_A is the fingertip,
#: going towards the palm: KNU3_B, KNU2_A, KNU2_B, KNU1_A, KNU1_B; PALM_1..6 palm/wrist.
NYU_JOINT_NAMES = tuple(f"{f}_{p}" for f in _NYU_FINGERS for p in _NYU_PARTS) + tuple(
    f"TH_{p}" for p in _NYU_PARTS) + tuple(f"PALM_{i}" for i in range(1, 7))

#: ICVL's 16 joints in label-file order (Tang et al. 2014).
ICVL_JOINT_NAMES = ("palm",) + tuple(f"{f}_{p}" for f in ("thumb", "index", "middle", "ring", "pinky")
                                     for p in ("root", "mid", "tip"))

#: MSRA's 21 joints in joint.txt order (Sun et al. 2015).
MSRA_JOINT_NAMES = ("wrist",) + tuple(f"{f}_{p}" for f in ("index", "middle", "ring", "little", "thumb")
                                      for p in ("mcp", "pip", "dip", "tip"))

# ---------------------------------------------------------------------- paper constants
#: Deng et al. III-E-2, NYU, 1-based, one entry per OUR joint (our order).
NYU_PAPER_LIST = (31, 29, 27, 26, 25, 24, 22, 20, 19, 18, 16, 14, 13, 12, 10, 8, 7, 6, 4, 2, 1)
#: The 14 standard NYU evaluation joints (0-based), Tompson et al. / DeepPrior.
NYU_EVAL14 = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)
#: The ten joints of the model-based protocol on the first 2,440 NYU test frames
#: (Tagliasacchi et al. 2015, Tan et al. 2016, Taylor et al. 2016). OUR READING, see
#: docs/papers.md ("Real-data evaluation protocols"): the fingertip and the middle joint of each of the five
#: fingers, i.e. the 14 standard joints without the three palm/wrist joints (30, 31, 32)
#: and the thumb base (27), whose positions depend on each tracker's palm model.
NYU_MODEL_BASED10 = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25)
NYU_MODEL_BASED_FRAMES = 2440
#: Deng et al. III-E-2, ICVL, 1-based indices into our palm-centre-transformed joints.
ICVL_PAPER_LIST = (1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20, 21)
#: Our joint index for each MSRA joint (pairing by name/role).
MSRA_TO_OURS = (0,                      # wrist
                5, 6, 7, 8,             # index mcp pip dip tip
                9, 10, 11, 12,          # middle
                13, 14, 15, 16,         # ring
                17, 18, 19, 20,         # little -> our pinky
                1, 2, 3, 4)             # thumb root..tip -> our thumb cmc, mcp, ip, tip


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Attributes:
      name: short name, e.g. 'standard14'.
      joint_indices: int32 [E] indices into the dataset's joints.
      num_frames: evaluate the first ``num_frames`` test frames (None: all).
      description: one line for reports.
    """

    name: str
    joint_indices: np.ndarray
    num_frames: int | None
    description: str


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything dataset-specific that readers, losses and evaluation need.

    Attributes:
      name: 'nyu', 'icvl' or 'msra' (also the ``hsr_tf.geometry.camera`` preset).
      joint_names: [J] names of the annotated joints, in file order.
      our_joint_indices: int32 [K] indices into ``transform_our_joints(ours)`` [.., 21, 3].
      dataset_joint_indices: int32 [K] the paired indices into the dataset joints.
      eval_joint_indices: int32 [E] the joints the joint-regression network predicts
        and the main protocol evaluates (NYU 14, ICVL 16, MSRA 21).
      protocols: evaluation protocols by name (the first is the default).
      cube_size: side (mm) of the axis-aligned cube around the hand centre that the
        crop keeps (x and y extent).
      depth_window: (near, far) mm: keep points with centre_z - near <= z <= centre_z + far.
      depth_range: (min, max) mm of plausible sensor depth; pixels outside are invalid.
      palm_centre: True when our joint 0 is replaced by the palm centre (ICVL).
      train_frames, test_frames: frame counts of the public release (for checks/notes).
    """

    name: str
    joint_names: tuple
    our_joint_indices: np.ndarray
    dataset_joint_indices: np.ndarray
    eval_joint_indices: np.ndarray
    protocols: dict
    cube_size: float
    depth_window: tuple
    depth_range: tuple
    palm_centre: bool = False
    train_frames: int | None = None
    test_frames: int | None = None

    @property
    def num_joints(self) -> int:
        """J, the number of annotated joints."""
        return len(self.joint_names)

    @property
    def num_eval_joints(self) -> int:
        return int(len(self.eval_joint_indices))

    @property
    def correspondence_joint_indices(self) -> np.ndarray:
        """Dataset joints paired with our joints (int32 [K]); the 21-joint reg-joint target
        of the paper's ablation (section IV-C) for NYU."""
        return self.dataset_joint_indices

    def regression_joint_indices(self, which: str = "eval") -> np.ndarray:
        """Dataset joints the joint-regression network predicts.

        Args:
          which: 'eval' (the evaluation joints: NYU 14, ICVL 16, MSRA 21), 'correspondence'
            (the joints paired with ours: NYU 21, as in the paper's ablation) or 'all'.
        Returns:
          int32 [E] indices into the dataset joints.
        """
        if which == "eval":
            return self.eval_joint_indices
        if which == "correspondence":
            return self.dataset_joint_indices
        if which == "all":
            return np.arange(self.num_joints, dtype=np.int32)
        raise ValueError(f"which: expected 'eval', 'correspondence' or 'all', found {which!r}")

    def protocol(self, name: str | None = None) -> Protocol:
        """The named evaluation protocol (default: the dataset's main one)."""
        if name is None:
            return next(iter(self.protocols.values()))
        if name not in self.protocols:
            raise ValueError(f"protocol: expected one of {list(self.protocols)} for {self.name}, found {name!r}")
        return self.protocols[name]

    def transform_our_joints(self, joints):
        """Our 21 model joints -> the set ``our_joint_indices`` indexes.

        Identity for NYU and MSRA; for ICVL joint 0 becomes the palm centre
        (midpoint of wrist 0 and middle MCP 9). Works on NumPy arrays and TF tensors.

        Args:
          joints: [..., 21, 3] mm.
        Returns:
          [..., 21, 3] same type and dtype.
        """
        if not self.palm_centre:
            _check_21(joints)
            return joints
        return add_palm_centre(joints)

    def paired(self, our_joints, dataset_joints):
        """(ours [..., K, 3], theirs [..., K, 3]) — the paired joints, NumPy or TF."""
        ours = self.transform_our_joints(our_joints)
        return _gather(ours, self.our_joint_indices), _gather(dataset_joints, self.dataset_joint_indices)

    def joint_index(self, name: str) -> int:
        """Index of a dataset joint by name."""
        if name not in self.joint_names:
            raise ValueError(f"joint name: expected one of {self.joint_names}, found {name!r}")
        return self.joint_names.index(name)


def _check_21(joints):
    shape = tuple(joints.shape)
    if len(shape) < 2 or shape[-2] != skeleton.NUM_JOINTS or shape[-1] != 3:
        raise ValueError(f"joints: expected shape [..., {skeleton.NUM_JOINTS}, 3], found {shape}")


def _is_tf(x) -> bool:
    """True for TF tensors/variables (eager or symbolic), False for NumPy arrays and lists."""
    return type(x).__module__.split(".")[0] in ("tensorflow", "keras")


def _gather(x, idx):
    if _is_tf(x):
        import tensorflow as tf

        return tf.gather(x, idx, axis=-2)
    return np.take(np.asarray(x), idx, axis=-2)


def add_palm_centre(joints):
    """Replace our joint 0 (wrist) by the virtual palm centre (ICVL correspondence).

    Args:
      joints: [..., 21, 3] our joints (NumPy or TF), mm.
    Returns:
      [..., 21, 3]: index 0 is ``(joints[..., 0, :] + joints[..., 9, :]) / 2``, the rest unchanged.
    """
    _check_21(joints)
    if _is_tf(joints):
        import tensorflow as tf

        centre = 0.5 * (joints[..., 0:1, :] + joints[..., 9:10, :])
        return tf.concat([centre, joints[..., 1:, :]], axis=-2)
    j = np.asarray(joints)
    out = j.copy()
    out[..., 0, :] = 0.5 * (j[..., 0, :] + j[..., 9, :])
    return out


def _idx(seq) -> np.ndarray:
    a = np.asarray(seq, dtype=np.int32)
    a.setflags(write=False)
    return a


NYU = DatasetSpec(
    name="nyu",
    joint_names=NYU_JOINT_NAMES,
    our_joint_indices=_idx(range(21)),
    dataset_joint_indices=_idx([i - 1 for i in NYU_PAPER_LIST]),
    eval_joint_indices=_idx(NYU_EVAL14),
    protocols={
        "standard14": Protocol("standard14", _idx(NYU_EVAL14), None,
                               "14 standard joints, all 8,252 test frames (kinect 1)"),
        "model_based10": Protocol("model_based10", _idx(NYU_MODEL_BASED10), NYU_MODEL_BASED_FRAMES,
                                  "10 joints (tip + middle joint of each finger), first 2,440 test frames"),
    },
    cube_size=300.0,
    depth_window=(150.0, 150.0),
    depth_range=(10.0, 2000.0),
    train_frames=72757,
    test_frames=8252,
)

ICVL = DatasetSpec(
    name="icvl",
    joint_names=ICVL_JOINT_NAMES,
    our_joint_indices=_idx([i - 1 for i in ICVL_PAPER_LIST]),
    dataset_joint_indices=_idx(range(16)),
    eval_joint_indices=_idx(range(16)),
    protocols={"standard16": Protocol("standard16", _idx(range(16)), None,
                                      "16 joints, 1,596 test frames (test_seq_1 + test_seq_2)")},
    cube_size=250.0,
    depth_window=(125.0, 125.0),
    depth_range=(10.0, 2000.0),
    palm_centre=True,
    train_frames=None,  # 16,008 unrotated (paper: "16K"); more with the rotated copies
    test_frames=1596,
)

MSRA = DatasetSpec(
    name="msra",
    joint_names=MSRA_JOINT_NAMES,
    our_joint_indices=_idx(MSRA_TO_OURS),
    dataset_joint_indices=_idx(range(21)),
    eval_joint_indices=_idx(range(21)),
    protocols={"loso21": Protocol("loso21", _idx(range(21)), None,
                                  "21 joints, leave-one-subject-out over P0..P8, mean of the 9 folds")},
    cube_size=200.0,
    depth_window=(100.0, 100.0),
    depth_range=(10.0, 2000.0),
    train_frames=None,
    test_frames=None,  # 76,375 frames in all, 9 subjects
)

SPECS = {"nyu": NYU, "icvl": ICVL, "msra": MSRA}

#: MSRA's subjects and gesture folders.
MSRA_SUBJECTS = tuple(f"P{i}" for i in range(9))
MSRA_GESTURES = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "I", "IP", "L", "MP", "RP", "T", "TIP", "Y")


def get_spec(name: str) -> DatasetSpec:
    """The spec of 'nyu', 'icvl' or 'msra' (case-insensitive)."""
    key = str(name).lower()
    if key not in SPECS:
        raise ValueError(f"dataset: expected one of {sorted(SPECS)}, found {name!r}")
    return SPECS[key]
