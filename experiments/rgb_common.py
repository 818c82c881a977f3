"""Flags and run pipeline of the RGB programs (Ge et al. CVPR 2019), reusable by the weak fine-tuning programs.

  python -m experiments.rgb_synth --flagfile=experiments/flags/rgb_demo.flags --workdir=W

A run (``experiments.rgb_run.run``, the program ``experiments.rgb_synth``):
  (1) render the synthetic RGB set (``data_prep.synth_rgb``) into --data_dir when it is empty (resumable);
  (2) the paper's schedule (section 4.3), each phase a resumable Trainer in ``W/phase<N>`` with its own
      seeded data order, initialised from the final checkpoints of the phases before it:
        phase 1  the stacked hourglass alone, L_H                                   (W/phase1)
        phase 2  the pose regressor alone on ground-truth meshes, L_J (variant mesh) (W/phase2)
        phase 3  hourglass + encoder + head (mesh Graph CNN for ours), L_fully;
                 the pose regressor stays frozen                                    (W/phase3)
      RMSprop, batch 32, learning rate 1e-3 (flags). The final network is published to W/checkpoints with
      W/model_config.json and W/run_kind.txt ('rgb'), so ``loop.load_model_from_workdir(W)`` rebuilds it;
  (3) evaluate on the held-out subjects (test split) -> W/eval (``hsr_tf.train.rgb_evaluation``);
  (4) export a SavedModel (``experiments.export``) and (5) predict one rendered image
      (``experiments.predict_rgb``), in subprocesses; each is skipped with a log line while the program does
      not handle RGB runs yet.
--distribution / --sync_batchnorm (``experiments.rgb_distribute``): networks built under the strategy's scope,
every phase's Trainer distributed, the run's files, evaluation, export and predict on the chief only.

Pieces for other programs (stable signatures): :func:`build_model`, :func:`build_loss`,
:func:`train_dataset_fn`, :func:`mesh_dataset_fn`, :func:`heldout_dataset`, :func:`train_phase`,
:func:`init_from_phases`, :func:`publish`, :func:`evaluate`.
"""
from __future__ import annotations

import json
import os

import keras
import tensorflow as tf
from absl import flags, logging

from experiments import common  # the shared flags: workdir, data_dir, seed, batch_size, learning_rate, ...
from experiments import rgb_distribute
from experiments.rgb_render import ensure_rgb_data, rgb_dataset_config  # noqa: F401 (with the --synth_* RGB flags)

FLAGS = flags.FLAGS

# ---------------------------------------------------------------------------------------------- data
flags.DEFINE_integer("image_size", 256, "Network input size S (px; paper 256). Crops are resized to it.")
flags.DEFINE_float("heatmap_sigma", 0.0, "Heat-map Gaussian sigma, px at the S/4 heat-map (0 = the paper's 4 px at "
                   "64 x 64, scaled with S: 1 px for a 64 px input).")
flags.DEFINE_string("background_dir", None, "Folder of background images (default: procedural backgrounds).")

# ---------------------------------------------------------------------------------------------- model
flags.DEFINE_enum("variant", "mesh", ["mesh", "direct_lbs", "hand_model", "baseline1"],
                  "mesh: ours (Graph CNN); direct_lbs / hand_model: Table 2 baselines; baseline1: Table 3.")
flags.DEFINE_bool("task_transfer", False, "Add the 3-FC pose head on the latent vector (supplementary C).")
flags.DEFINE_string("rgb_network", None, "JSON dict of RGBMeshNet width overrides (filters, num_stacks, "
                    "num_residual, gcn_fc, gcn_features, regressor_features, regressor_hidden, mlp_hidden); "
                    "default: the paper's widths.")

# ---------------------------------------------------------------------------------------------- loss (Eq. 6)
flags.DEFINE_float("lambda_heatmap", 0.5, "lambda_H of L_fully (paper 0.5).")
flags.DEFINE_float("lambda_mesh", 1.0, "lambda_M (paper 1).")
flags.DEFINE_float("lambda_vertex", 1.0, "lambda_v (paper 1).")
flags.DEFINE_float("lambda_normal", 1.0, "lambda_n (paper 1; 0 = Table 1 '-Normal').")
flags.DEFINE_float("lambda_edge", 1.0, "lambda_e (paper 1; 0 = '-Edge').")
flags.DEFINE_float("lambda_laplacian", 50.0, "lambda_l (paper 50; 0 = '-Laplacian').")
flags.DEFINE_float("lambda_pose", 1.0, "lambda_J (paper 1; 0 = '-3D Pose').")

# ---------------------------------------------------------------------------------------------- schedule
flags.DEFINE_integer("phase1_steps", 2000, "Steps of phase 1 (hourglass, L_H); 0 skips it.")
flags.DEFINE_integer("phase2_steps", 2000, "Steps of phase 2 (pose regressor on GT meshes, L_J); 0 skips it.")
flags.DEFINE_integer("phase3_steps", 20000, "Steps of phase 3 (end to end, L_fully).")
flags.DEFINE_enum("rgb_optimizer", "rmsprop", ["rmsprop", "adam"], "Optimizer of every phase (paper: RMSprop).")
flags.DEFINE_integer("num_overlays", 8, "Held-out frames drawn in W/eval/overlays.")

PHASE_DIRS = {1: "phase1", 2: "phase2", 3: "phase3"}
HPARAM_FLAGS = ("variant", "task_transfer", "image_size", "lambda_heatmap", "lambda_mesh", "lambda_vertex",
                "lambda_normal", "lambda_edge", "lambda_laplacian", "lambda_pose", "batch_size", "learning_rate",
                "phase1_steps", "phase2_steps", "phase3_steps", "augment", "seed")
HPARAM_METRICS = ("metrics/pose_error_mm", "metrics/mesh_error_mm", "metrics/aligned_mesh_error_mm")


def apply_rgb_defaults() -> None:
    """Defaults of the shared flags that differ for the RGB programs (call before parsing): the paper states no
    learning-rate decay for RGB, and the synthetic RGB set goes to its own directory."""
    FLAGS.set_default("lr_decay", 1.0)
    FLAGS.set_default("data_dir", "data/rgb_synth")
    FLAGS.set_default("synth_noise", "none")


# ---------------------------------------------------------------------------------------------- data
def heatmap_kwargs(image_size=None) -> dict:
    """Heat-maps at S/4 with --heatmap_sigma, by default the paper's (4 px at 64 x 64 for a 256 input) scaled
    with S."""
    s = image_size or FLAGS.image_size
    return {"heatmap_size": s // 4, "heatmap_sigma": FLAGS.heatmap_sigma or 4.0 * s / 256.0}


def train_dataset_fn(data_dir, split: str = "train", augment=None, seed=None):
    """``epoch -> dataset`` of augmented reader batches (drop_remainder), deterministic in (seed, epoch)."""
    from hsr_tf.data import rgb_reader

    augment = FLAGS.augment if augment is None else augment
    seed = FLAGS.seed if seed is None else seed

    def fn(epoch):
        return rgb_reader.make_rgb_dataset(data_dir, split, FLAGS.batch_size, image_size=FLAGS.image_size,
                                           augment=augment, seed=seed, epoch=int(epoch), shuffle=True,
                                           background_dir=FLAGS.background_dir, drop_remainder=True,
                                           **heatmap_kwargs())

    return fn


def steps_per_epoch(data_dir, split: str = "train") -> int:
    from hsr_tf.data import rgb_reader

    n = rgb_reader.count_frames(data_dir, split)
    if n < FLAGS.batch_size:
        raise ValueError(f"{data_dir}: expected at least --batch_size={FLAGS.batch_size} {split} frames, found {n}")
    return n // FLAGS.batch_size


def mesh_dataset_fn(data_dir, split: str = "train", seed=None):
    """``epoch -> dataset`` of ground-truth meshes for phase 2: batches of ``vertices``, ``joints`` (mm),
    ``camera`` (of the crop resized to --image_size), ``root_depth``, ``bone_scale``; no image is decoded.
    Frame order: the permutation ``default_rng([seed, epoch])``, as the image reader's."""
    import numpy as np
    import tensorflow as tf

    from hsr_tf.data import rgb_reader, rgb_shards

    seed = FLAGS.seed if seed is None else seed
    fields = ("vertices", "joints", "camera", "root_depth", "bone_scale")
    arrays = {k: [] for k in fields}
    for path in rgb_reader.resolve_files(data_dir, split):
        data, attrs = rgb_shards.read_rgb_shard(path, fields, check=False)
        k = FLAGS.image_size / float(attrs["image_size"])
        cam = data["camera"].astype(np.float32).copy()
        cam[:, :2] *= k
        cam[:, 2:] = (cam[:, 2:] + 0.5) * k - 0.5  # pixel-centre convention of rgb_shards
        data["camera"] = cam
        for key in fields:
            arrays[key].append(data[key].astype(np.float32))
    arrays = {k: np.concatenate(v) for k, v in arrays.items()}  # ~16 KB a frame
    n = len(arrays["joints"])

    def fn(epoch):
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
        return tf.data.Dataset.from_tensor_slices({k: v[order] for k, v in arrays.items()}).batch(
            FLAGS.batch_size, drop_remainder=True)

    return fn


def heldout_dataset(data_dir, split: str = "test", batch_size=None, image_size=None):
    """Un-augmented batches of ``split`` in file order (same frames, backgrounds and order every time)."""
    from hsr_tf.data import rgb_reader

    s = image_size or FLAGS.image_size
    return rgb_reader.make_rgb_dataset(data_dir, split, batch_size or FLAGS.batch_size, image_size=s,
                                       augment=False, seed=FLAGS.seed, shuffle=False,
                                       background_dir=FLAGS.background_dir, **heatmap_kwargs(s))


# ---------------------------------------------------------------------------------------------- model, loss
def network_kwargs() -> dict:
    from hsr_tf.models.rgb_mesh_net import PAPER_CONFIG

    kw = dict(PAPER_CONFIG, image_size=FLAGS.image_size)
    if FLAGS.rgb_network:
        overrides = json.loads(FLAGS.rgb_network)
        unknown = sorted(set(overrides) - set(PAPER_CONFIG) - {"image_size"})
        if unknown:
            raise ValueError(f"--rgb_network: expected keys among {sorted(PAPER_CONFIG)}, found {unknown}")
        kw.update(overrides)
    return kw


def build_model():
    """RGBMeshNet for --variant, --task_transfer, --image_size and --rgb_network, under --precision, built (its
    variables created) under the --distribution strategy's scope."""
    from hsr_tf.models.rgb_mesh_net import RGBMeshNet

    common.apply_precision()
    with rgb_distribute.scope():
        net = RGBMeshNet(FLAGS.variant, task_transfer=FLAGS.task_transfer, **network_kwargs())
        net(net.example_input(1), training=False)
    return net


def loss_config():
    """RGBLossConfig of the --lambda_* flags. direct_lbs and baseline1 have no trainable mesh: L_M is off
    (supplementary B trains direct LBS with L_H and L_J)."""
    from hsr_tf import losses_rgb

    mesh = FLAGS.lambda_mesh if FLAGS.variant in ("mesh", "hand_model") else 0.0
    return losses_rgb.RGBLossConfig(lambda_h=FLAGS.lambda_heatmap, lambda_m=mesh, lambda_j=FLAGS.lambda_pose,
                                    lambda_v=FLAGS.lambda_vertex, lambda_n=FLAGS.lambda_normal,
                                    lambda_e=FLAGS.lambda_edge, lambda_l=FLAGS.lambda_laplacian)


def build_loss(model, phase: int, config=None):
    """``loss_fn(batch, outputs, epoch) -> (total, terms)`` of a phase: 1 L_H, 2 L_J (on the regressor's joints),
    3 L_fully (``config``, default :func:`loss_config`), plus, with a task-transfer head, its L_J."""
    from hsr_tf import losses_rgb

    if phase == 1:
        def heatmap_loss_fn(batch, outputs, epoch):
            h = losses_rgb.heatmap_loss(outputs["heatmaps_all"], batch["heatmaps"])
            return h, {"heatmap": h}

        return heatmap_loss_fn
    if phase == 2:
        def pose_loss_fn(batch, outputs, epoch):
            j = losses_rgb.pose_loss(outputs["joints"], batch["joints"], batch["bone_scale"])
            return j, {"pose": j}

        return pose_loss_fn
    cfg = config or loss_config()
    faces = model.faces

    def loss_fn(batch, outputs, epoch):
        total, terms = losses_rgb.fully_supervised_loss(batch, outputs, faces, cfg, model.image_size)
        if "joints_transfer" in outputs:
            terms["pose_transfer"] = losses_rgb.pose_loss(outputs["joints_transfer"], batch["joints"],
                                                          batch["bone_scale"])
            total += terms["pose_transfer"]
        return total, terms

    return loss_fn


class HourglassStage(keras.Model):
    """Phase 1: the network's stacked hourglass alone. Call: image [B, S, S, 3] in [0, 1] -> dict ``heatmaps``,
    ``heatmaps_all``, ``features``. Shares the layer with the RGBMeshNet (save that one, not this)."""

    def __init__(self, net, **kwargs):
        super().__init__(**kwargs)
        self.hourglass = net.hourglass

    def call(self, image, training=False):
        return self.hourglass(tf.cast(image, tf.float32) - 0.5, training=training)  # as RGBMeshNet.call


def phase_model(net, phase: int):
    """(model trained in ``phase``, its input key, variables_fn or None) sharing layers with ``net``."""
    from hsr_tf.models.rgb_mesh_net import PoseRegressorModel

    if phase == 1:
        return HourglassStage(net), "image", None
    if phase == 2:
        return PoseRegressorModel(net.pose_regressor, net.image_size), \
            ("vertices", "camera", "root_depth", "bone_scale"), None

    def variables_fn(m):  # the pose regressor keeps its phase-2 weights (section 4.3)
        return [v for name, part in m.sub_networks().items() if name != "pose_regressor"
                for v in part.trainable_variables]

    return net, ("image", "camera", "root_depth", "bone_scale"), variables_fn


# ---------------------------------------------------------------------------------------------- phases
def phase_workdir(workdir: str, phase: int) -> str:
    return os.path.join(workdir, PHASE_DIRS[phase])


def train_phase(model, loss_fn, dataset_fn, workdir: str, num_steps: int, steps_per_epoch: int, input_key,
                variables_fn=None, learning_rate=None, eval_fn=None, visual_fn=None, hparams=None,
                stop_after=None) -> dict:
    """Train ``model`` for ``num_steps`` steps in ``workdir`` (resuming from its newest checkpoint) with the
    optimizer, learning-rate and logging flags. ``learning_rate`` defaults to --learning_rate.

    Returns the Trainer's result dict plus ``steps_here`` (steps run by this call) and ``history``.
    """
    import math

    from hsr_tf.train import loop

    cfg = loop.TrainConfig(workdir=workdir, steps_per_epoch=steps_per_epoch,
                           num_epochs=max(1, math.ceil(num_steps / steps_per_epoch)), max_steps=num_steps,
                           learning_rate=FLAGS.learning_rate if learning_rate is None else learning_rate,
                           lr_decay=FLAGS.lr_decay, lr_decay_samples=FLAGS.lr_decay_samples or None,
                           batch_size=FLAGS.batch_size, checkpoint_every=FLAGS.checkpoint_every,
                           summary_every=FLAGS.summary_every, eval_every=FLAGS.eval_every,
                           visual_every=FLAGS.visual_every, progress=FLAGS.progress, optimizer=FLAGS.rgb_optimizer,
                           sync_batchnorm=FLAGS.sync_batchnorm)
    run_info = {"flags": FLAGS.flags_into_string(), "command": common.command_line(), "hparams": hparams or {},
                "hparam_metrics": HPARAM_METRICS if hparams else ()}
    trainer = loop.Trainer(model, loss_fn, dataset_fn, cfg, eval_fn=eval_fn, visual_fn=visual_fn,
                           run_info=run_info, input_key=input_key, seed=FLAGS.seed, variables_fn=variables_fn,
                           strategy=rgb_distribute.strategy())
    logging.info("Training %s: %d steps (%d per epoch)", workdir, cfg.total_steps, steps_per_epoch)
    result = trainer.train(stop_after=stop_after)
    return {**result, "steps_here": len(trainer.history), "history": trainer.history}


def restore_into(model, workdir: str) -> str:
    """Restore the newest checkpoint of ``workdir/checkpoints`` into ``model`` (built); returns its path."""
    from hsr_tf.train import loop

    path = tf.train.latest_checkpoint(os.path.join(workdir, loop.CHECKPOINT_SUBDIR))
    if path is None:
        raise FileNotFoundError(f"{workdir}/{loop.CHECKPOINT_SUBDIR}: expected a finished phase's checkpoint, "
                                "found none")
    # read(), not restore(): the Trainer's checkpoints carry no save counter of their own Checkpoint object.
    status = tf.train.Checkpoint(**loop.model_checkpoint_objects(model)).read(path)
    status.expect_partial()  # optimizer slots and step belong to that phase's Trainer
    status.assert_existing_objects_matched()
    return path


def init_from_phases(net, workdir: str, phases) -> None:
    """Load the final weights of the earlier ``phases`` (of W/phase<N>) into the built ``net``."""
    for p in phases:
        path = restore_into(phase_model(net, p)[0], phase_workdir(workdir, p))
        logging.info("Phase %d weights from %s", p, path)


publish = rgb_distribute.publish  # the final network -> W/checkpoints (chief; the other workers take part)


def schedule_steps() -> dict:
    """{phase: steps}: phase 2 exists only for the mesh variant (the other heads have no pose regressor)."""
    return {1: FLAGS.phase1_steps, 2: FLAGS.phase2_steps if FLAGS.variant == "mesh" else 0,
            3: FLAGS.phase3_steps}


def train_schedule(net, data_dir: str, workdir: str, heldout=None, stop_after=None) -> dict:
    """Phases 1-3 of section 4.3 on the built ``net`` (module docstring). ``stop_after``: return after that
    many steps of this process, as a kill would (test hook). Returns {"interrupted", "phases": {N: result}}."""
    from hsr_tf.train import rgb_evaluation

    steps = schedule_steps()
    if steps[3] < 1:
        raise ValueError(f"--phase3_steps: expected >= 1, found {steps[3]}")
    spe = steps_per_epoch(data_dir)
    hparams = {k: getattr(FLAGS, k) for k in HPARAM_FLAGS}
    results = {}
    left = stop_after
    for phase in (1, 2, 3):
        if steps[phase] <= 0:
            continue
        init_from_phases(net, workdir, [p for p in (1, 2) if p < phase and steps[p] > 0])
        model, key, variables_fn = phase_model(net, phase)
        if phase == 2:
            data_fn = mesh_dataset_fn(data_dir, seed=FLAGS.seed + phase)
        else:
            data_fn = train_dataset_fn(data_dir, seed=FLAGS.seed + phase)
        eval_fn = visual_fn = None
        if phase == 3 and heldout is not None:
            predict = rgb_evaluation.make_predict_fn(net)

            def eval_fn(m, step):
                res = rgb_evaluation.evaluate(m, heldout, max_batches=FLAGS.eval_batches or None, predict_fn=predict)
                return rgb_evaluation.scalar_metrics(res)

            if FLAGS.visual_every:
                from hsr_tf.train import pipeline
                visual_fn = rgb_evaluation.make_visual_fn(pipeline.take_batch(heldout), net.faces)
        results[phase] = train_phase(model, build_loss(net, phase), data_fn, phase_workdir(workdir, phase),
                                     steps[phase], spe, key, variables_fn=variables_fn, eval_fn=eval_fn,
                                     visual_fn=visual_fn, hparams=hparams if phase == 3 else None, stop_after=left)
        if results[phase]["interrupted"]:
            return {"interrupted": True, "phases": results}
        if left is not None:
            left -= results[phase]["steps_here"]
            if left <= 0 and phase < 3:
                return {"interrupted": True, "phases": results}
    return {"interrupted": False, "phases": results}


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(net, data_dir: str, out_dir: str, split: str = "test", max_batches=None, label=None,
             extra=None) -> dict:
    """The section-5.1 evaluation of ``net`` on ``data_dir/split`` with the mean baseline of the training split
    (when there is one) -> ``out_dir`` (``hsr_tf.train.rgb_evaluation.write_report``). Returns metrics.json."""
    from hsr_tf.data import rgb_reader, rgb_shards
    from hsr_tf.train import rgb_evaluation

    try:
        mean_pose = rgb_evaluation.mean_pose_from_shards(rgb_reader.resolve_files(data_dir, "train"))
    except rgb_shards.RGBShardError as e:
        logging.warning("No mean baseline (%s)", e)
        mean_pose = None
    files = rgb_reader.resolve_files(data_dir, split)
    names = rgb_shards.validate_rgb_shard(files[0])["attrs"]["joint_names"]
    res = rgb_evaluation.evaluate(net, heldout_dataset(data_dir, split, image_size=net.image_size),
                                  max_batches=max_batches,
                                  mean_pose=mean_pose, num_overlay_frames=FLAGS.num_overlays)
    paths = rgb_evaluation.write_report(res, out_dir, faces=net.faces, joint_names=names, label=label or "model",
                                        extra={"data_dir": os.path.abspath(data_dir), "split": split,
                                               **(extra or {})})
    with open(paths["metrics"]) as f:
        return json.load(f)


def write_run_info(workdir: str) -> None:
    """W/flags.txt (the flags of this run; evaluate reads --data_dir from it) and W/command.txt (appended); the
    chief's (nothing on another worker)."""
    if not rgb_distribute.is_chief():
        return
    with open(os.path.join(workdir, "flags.txt"), "w") as f:
        f.write(FLAGS.flags_into_string())
    with open(os.path.join(workdir, "command.txt"), "a") as f:
        f.write(common.command_line() + "\n")
