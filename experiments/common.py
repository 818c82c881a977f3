"""Shared flags and the run pipeline of the depth-model experiment programs.

Programs (thin absl wrappers over :func:`run`):
  python -m experiments.synth_full --flagfile=experiments/flags/demo.flags --workdir=W   (shape loss on)
  python -m experiments.synth_weak --flagfile=...  --workdir=W                          (no shape loss)

A run: (1) render the synthetic set into --data_dir if it holds no shards and --render_if_empty;
(2) train with hsr_tf.train.loop.Trainer (resumes from W/checkpoints; same command = same data order);
(3) evaluate on the test split -> W/eval/{metrics.json, per_joint.csv, threshold_curve.csv|png};
(4) export a SavedModel -> W/export (fallback ops, in a subprocess so it is traced without the compiled
    kernels) and (5) predict one rendered depth image -> W/predict/{mesh.ply, joints.json, overlay.png}.
Steps 3-5 are switched by --evaluate / --export / --predict.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time

from absl import flags, logging

from experiments.model_spec import workdir_flag  # noqa: F401 (re-exported: programs read recorded flags with it)

FLAGS = flags.FLAGS

# ---------------------------------------------------------------------------------------------- data
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard, flags.txt, eval/, export/).")
flags.DEFINE_string("data_dir", "data/synth_small", "Shard directory ({train,test}-*.h5).")
flags.DEFINE_bool("render_if_empty", True, "Render the synthetic set into --data_dir first when it has no shards.")
flags.DEFINE_integer("synth_num_subjects", 10, "Rendering: subjects (test split = 10% of them, at least 1).")
flags.DEFINE_integer("synth_poses_per_subject", 100, "Rendering: poses per subject.")
flags.DEFINE_integer("synth_views_per_pose", 3, "Rendering: views per pose.")
flags.DEFINE_enum("synth_noise", "kinect", ["kinect", "none"], "Rendering: sensor noise model.")
flags.DEFINE_integer("synth_seed", 0, "Rendering: seed of subjects, poses and views.")
flags.DEFINE_integer("synth_workers", 0, "Rendering: worker processes (0 = all cores).")
flags.DEFINE_float("synth_cone_deg", 70.0, "Rendering: palm (or back) normal within this angle of facing the camera.")
flags.DEFINE_float("synth_back_prob", 0.5, "Rendering: probability that the back of the hand faces the camera.")
flags.DEFINE_float("synth_inplane_deg", 180.0, "Rendering: in-plane (roll) rotation range +-deg.")
flags.DEFINE_bool("augment", True, "Online augmentation of section III-E-1 (rotation, x/y scaling, shift).")
flags.DEFINE_float("aug_rot_z_deg", 90.0, "Augmentation: in-plane rotation range +-deg (paper prints '[-0, pi/2]').")
flags.DEFINE_integer("shuffle_buffer", 8192, "Frames in the reader's shuffle buffer.")

# ---------------------------------------------------------------------------------------------- training
flags.DEFINE_integer("seed", 0, "Seed of initialisation, data order and augmentation.")
flags.DEFINE_integer("batch_size", 32, "Batch size (paper: 32).")
flags.DEFINE_float("learning_rate", 1e-3, "Initial Adam learning rate (paper: 1e-3).")
flags.DEFINE_float("lr_decay", 0.9, "Learning-rate factor applied once per --lr_decay_samples samples seen, staircase "
                   "(paper: 0.9 per epoch).")
flags.DEFINE_integer("lr_decay_samples", 248_400,
                     "Samples (frames, global batch x steps) seen between two learning-rate decays. Default: the "
                     "paper's epoch, the 248,400 training frames of its synthetic set -- NOT one pass over "
                     "--data_dir, so a small set keeps the paper's schedule per sample instead of decaying every "
                     "few dozen steps. 0 = once per pass over --data_dir (the behaviour before this flag).")
flags.DEFINE_integer("num_epochs", 50, "Epochs to train.")
flags.DEFINE_integer("max_steps", 0, "Stop after this many steps in total (0 = num_epochs * steps_per_epoch).")
flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints (and one at the end).")
flags.DEFINE_integer("summary_every", 20, "Steps between scalar summaries.")
flags.DEFINE_integer("eval_every", 1000, "Steps between held-out evaluations (0 = only at the end).")
flags.DEFINE_integer("eval_batches", 8, "Held-out batches per evaluation during training (0 = whole split).")
flags.DEFINE_integer("visual_every", 1000, "Steps between mesh / image summaries (0 = never).")
flags.DEFINE_enum("ops", "auto", ["auto", "compiled", "fallback"], "PointNet++ ops backend used for training.")
flags.DEFINE_bool("progress", True, "Console progress bar.")
flags.DEFINE_integer("log_every", 0, "With --noprogress: steps between progress log lines (step, loss, samples/s, lr, "
                     "ETA); 0 = --summary_every.")
flags.DEFINE_enum("on_nonfinite", "stop", ["stop", "skip"],
                  "A NaN/Inf loss or gradient: stop with a message naming the step and the batch's frames (no update "
                  "applied, no checkpoint of the poisoned weights), or skip the batch and count it "
                  "(TensorBoard faults/nonfinite_skipped).")
flags.DEFINE_enum("distribution", "none", ["none", "mirrored", "multi_worker"],
                  "tf.distribute strategy: none (one device), mirrored (every local GPU), multi_worker "
                  "(MultiWorkerMirroredStrategy across machines, cluster from TF_CONFIG). --batch_size is the "
                  "global batch, split evenly over the replicas. See docs/training.md.")
flags.DEFINE_bool("sync_batchnorm", True, "With several replicas: BatchNorm statistics over the global batch, as on "
                  "one device (--nosync_batchnorm: each replica's slice, faster).")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16", "auto"],
                  "Keras dtype policy of the network's MLPs (geometry, losses and metrics stay float32; see "
                  "hsr_tf/precision.py). auto: mixed_bfloat16 where the CPU (amx_bf16 / avx512_bf16) or GPU "
                  "(compute capability >= 8.0) has native bfloat16, else float32; mixed_float16 adds loss scaling.")

# ---------------------------------------------------------------------------------------------- model
flags.DEFINE_integer("num_stages", 2, "Shape-network stages (paper: 2; 1 = 'without stage 2').")
flags.DEFINE_bool("joint_regression", True, "Joint regression network after the mesh (paper: on).")
flags.DEFINE_enum("transform", "procrustes", ["procrustes", "regress"],
                  "Hand-to-input transform {s,R,t}: similarity Procrustes of model joints onto predicted joints, "
                  "or regressed directly.")
flags.DEFINE_string("hand_model", None, "Hand model .npz (default: the packaged asset).")
flags.DEFINE_string("init_from", None,
                    "Initial weights: a run's WORKDIR (its newest checkpoint) or 'pretrained:NAME' (the weights shipped "
                    "in hsr_tf/assets/pretrained/NAME, e.g. pretrained:depth). Variables are matched by path and shape "
                    "(e.g. a joint regression of another joint count stays initialised); the hand model's constants "
                    "come from --hand_model, not from the source. Ignored when WORKDIR already has a checkpoint "
                    "(resume). The network flags (--shape_network, --num_stages, ...) must describe the source's "
                    "network for its weights to fit.")
flags.DEFINE_string("shape_network", None,
                    "JSON dict of ShapeNetwork overrides (see hsr_tf.models.SHAPE_NETWORK_DEFAULTS), e.g. smaller "
                    "set-abstraction levels for CPU demos.")

# ---------------------------------------------------------------------------------------------- loss
flags.DEFINE_float("lambda_joint", 2.0, "lambda_J (paper: 2).")
flags.DEFINE_float("lambda_chamfer", 1.0, "lambda_C (paper: 1; 0 switches the Chamfer loss off).")
flags.DEFINE_float("lambda_mean_shape", 1.0, "lambda_B0 (paper: 1; 0 switches it off).")
flags.DEFINE_float("lambda_shape", None, "lambda_S; default 1 for synth_full, must stay 0 for synth_weak.")
flags.DEFINE_float("chamfer_tau_mm", 5.0, "Chamfer cut-off tau, mm (paper: 5).")
flags.DEFINE_enum("loss_reduction", "mean", ["mean", "sum"], "Per-term reduction (see hsr_tf/losses.py).")
flags.DEFINE_integer("stage_joint_decay_epoch", 20, "Stage joint loss x0.1 from this epoch (paper: 20).")
flags.DEFINE_bool("supervise_joints_input", True, "Apply the stage joint loss to J_input too.")

# ---------------------------------------------------------------------------------------------- after training
flags.DEFINE_bool("evaluate", True, "Evaluate the final model on the whole test split.")
flags.DEFINE_bool("export", True, "Export a SavedModel to WORKDIR/export after training.")
flags.DEFINE_bool("predict", True, "Render one test depth image and run the exported model on it.")

HPARAM_FLAGS = ("num_stages", "joint_regression", "transform", "lambda_joint", "lambda_chamfer", "lambda_mean_shape",
                "lambda_shape", "chamfer_tau_mm", "loss_reduction", "batch_size", "learning_rate", "lr_decay", "lr_decay_samples",
                "augment", "seed", "supervision")
HPARAM_METRICS = ("metrics/mean_joint_error_mm", "metrics/shape_error_mm", "metrics/point_cloud_error_mm")


def command_line() -> str:
    """The command that started this process, as ``python -m package.module args`` when run with -m."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = [sys.executable, "-m", spec.name] if spec is not None and spec.name else [sys.executable, sys.argv[0]]
    return " ".join(shlex.quote(a) for a in head + sys.argv[1:])


def has_shards(data_dir: str) -> bool:
    from hsr_tf.data import shards as shards_lib
    return os.path.isdir(data_dir) and bool(shards_lib.list_shards(data_dir, "train")) and \
        bool(shards_lib.list_shards(data_dir, "test"))


def synth_dataset_config():
    """The DatasetConfig of data_prep.synth for the --synth_* flags (defaults of the renderer otherwise)."""
    from data_prep.synth import render

    base = render.FrameConfig()
    view = dataclasses.replace(base.view, cone_deg=FLAGS.synth_cone_deg, back_prob=FLAGS.synth_back_prob,
                               inplane_deg=FLAGS.synth_inplane_deg)
    frame = dataclasses.replace(base, noise=FLAGS.synth_noise, view=view)
    return render.DatasetConfig(num_subjects=FLAGS.synth_num_subjects, poses_per_subject=FLAGS.synth_poses_per_subject,
                                views_per_pose=FLAGS.synth_views_per_pose, seed=FLAGS.synth_seed, frame=frame)


def ensure_data(data_dir: str) -> None:
    """Make sure ``data_dir`` holds a whole synthetic set before training.

    Shards without a ``manifest.json`` (converted elsewhere) are used as they are. A directory rendered by
    ``data_prep.synth`` is checked against its manifest: an interrupted render is finished (same
    configuration as the --synth_* flags, with --render_if_empty) or refused, never trained on half-done;
    a complete set rendered with other settings than the --synth_* flags is used, with a warning that names
    the differing settings. An empty directory is rendered with the flags' configuration (--render_if_empty).
    """
    from data_prep.synth import render

    config = synth_dataset_config()
    manifest = render.read_manifest(data_dir) if os.path.isdir(data_dir) else None
    if manifest is None and has_shards(data_dir):
        return
    if manifest is not None:
        diff = render.same_configuration(manifest, config)
        missing = render.missing_shards(data_dir, manifest)
        if not missing:
            if diff:
                logging.warning("%s was rendered with other settings than the --synth_* flags (%s differ); "
                                "training on the data as rendered", data_dir, ", ".join(diff))
            return
        if diff or not FLAGS.render_if_empty:
            raise FileNotFoundError(
                f"{data_dir}: expected a complete synthetic set, found an interrupted render ({len(missing)} "
                f"planned shards missing, first {missing[0]}); finish it by rerunning the python -m "
                f"data_prep.synth command that started it" + (f" (its settings differ from the --synth_* flags "
                                                              f"in {diff})" if diff else
                                                              " or pass --render_if_empty"))
        logging.info("%s: interrupted render, %d shards missing: resuming it", data_dir, len(missing))
    elif not FLAGS.render_if_empty:
        raise FileNotFoundError(f"{data_dir}: expected train-*.h5 and test-*.h5 shards, found none "
                                "(render them with python -m data_prep.synth or pass --render_if_empty)")
    else:
        logging.info("No shards in %s: rendering the synthetic set (%d subjects x %d poses x %d views)", data_dir,
                     FLAGS.synth_num_subjects, FLAGS.synth_poses_per_subject, FLAGS.synth_views_per_pose)
    t0 = time.time()
    render.generate(data_dir, config, num_workers=FLAGS.synth_workers, progress=FLAGS.progress,
                    log=logging.info)
    logging.info("Rendering took %.1f s", time.time() - t0)


def apply_precision() -> str:
    """Set Keras' global dtype policy from --precision (before any layer is built); returns and logs it."""
    from hsr_tf import precision

    name = precision.resolve(FLAGS.precision)
    precision.set_policy(name)
    logging.info("Precision: --precision=%s -> %s", FLAGS.precision, name)
    return name


def build_model(data_info: dict):
    """HandShapeNet for the model flags and the data's joints (normalised input frame), under --precision."""
    import json
    from hsr_tf.hand_model import HandModel
    from hsr_tf.models import HandShapeNet

    if apply_precision() == "mixed_bfloat16":
        from hsr_tf.ops import mlp_train

        # What runs the shared MLPs' bfloat16 products when this model trains: the compiled block products (AMX
        # tiles or AVX512-BF16 dot products) or TensorFlow's; the speed differs by 1.2x or more (docs/training.md).
        logging.info("Training's bfloat16 block products: %s",
                     mlp_train.bf16_products_backend() or "TensorFlow's (no AMX or AVX512-BF16, or no compiled ops)")
    overrides = json.loads(FLAGS.shape_network) if FLAGS.shape_network else None
    with distribution_strategy().scope():  # variables mirrored over the replicas of --distribution
        return HandShapeNet(hand_model=HandModel.load(FLAGS.hand_model), num_dataset_joints=data_info["num_joints"],
                            num_stages=FLAGS.num_stages, use_joint_regression=FLAGS.joint_regression,
                            transform=FLAGS.transform, shape_network=overrides)


_STRATEGY = {}


def distribution_strategy():
    """The tf.distribute strategy of --distribution, created once per process; build models under its scope().

    Call it early (``run`` does, first thing): multi_worker configures TensorFlow's collective runtime.
    """
    if "strategy" not in _STRATEGY:
        from hsr_tf.train import distribute

        _STRATEGY["strategy"] = distribute.make_strategy(FLAGS.distribution)
        logging.info("%s", distribute.describe(_STRATEGY["strategy"], FLAGS.batch_size))
    return _STRATEGY["strategy"]


def lock_workdir(workdir: str) -> None:
    """Hold ``workdir``'s lock until the program exits (chief only): a second run on it refuses to start
    (hsr_tf.train.workdir_lock; the training loop's own acquisition nests inside)."""
    from hsr_tf.train import distribute, workdir_lock

    os.makedirs(workdir, exist_ok=True)
    if distribute.is_chief(distribution_strategy()):
        _STRATEGY.setdefault("locks", []).append(workdir_lock.WorkdirLock(workdir, command=command_line()).acquire())


def build_loss(model, lambda_shape: float):
    from hsr_tf import losses

    cfg = losses.LossConfig(joint_weight=FLAGS.lambda_joint, chamfer_weight=FLAGS.lambda_chamfer,
                            mean_shape_weight=FLAGS.lambda_mean_shape, shape_weight=lambda_shape,
                            use_chamfer=FLAGS.lambda_chamfer > 0, use_mean_shape=FLAGS.lambda_mean_shape > 0,
                            use_shape=lambda_shape > 0, chamfer_tau_mm=FLAGS.chamfer_tau_mm,
                            reduction=FLAGS.loss_reduction, stage_joint_decay_epoch=FLAGS.stage_joint_decay_epoch,
                            supervise_joints_input=FLAGS.supervise_joints_input)
    loss = losses.HandShapeLoss(model.mean_shape(), cfg)

    def loss_fn(batch, outputs, epoch):
        total, terms = loss(outputs, batch, epoch)
        return total, {k: v for k, v in terms.items() if k != "total"}

    return loss_fn


def resolve_lambda_shape(supervision: str) -> float:
    if supervision == "full":
        return 1.0 if FLAGS.lambda_shape is None else float(FLAGS.lambda_shape)
    if FLAGS.lambda_shape not in (None, 0.0):
        raise ValueError(f"--lambda_shape: expected 0 (or unset) for weak supervision (synth_weak), found "
                         f"{FLAGS.lambda_shape}; use experiments.synth_full for the shape loss")
    return 0.0


def run_subprocess(module: str, args: list[str], env_extra: dict | None = None) -> None:
    cmd = [sys.executable, "-m", module] + args
    logging.info("Running: %s", " ".join(shlex.quote(c) for c in cmd))
    env = dict(os.environ, **(env_extra or {}))
    res = subprocess.run(cmd, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{module} failed with exit code {res.returncode}: {' '.join(cmd)}")


def train_model(model, loss_fn, data_dir: str, workdir: str, heldout, eval_fn, hparams: dict,
                hparam_metrics=(), train_split: str = "train", include_vertices: bool = True) -> dict:
    """Train ``model`` on ``data_dir/train_split`` with the schedule, augmentation and logging flags.

    Shared by the synthetic (:func:`run`) and real-dataset (``experiments.real_common``) programs: builds the
    seeded per-epoch input pipeline (section III-E-1 augmentation unless --noaugment), the training config,
    the visual summaries of the first ``heldout`` batch, and runs :class:`hsr_tf.train.loop.Trainer` (resuming
    from the newest checkpoint of ``workdir``). Returns the trainer's result dict.
    """
    import math

    from hsr_tf.data import augment as augment_lib
    from hsr_tf.train import loop, pipeline

    rot_z = math.radians(FLAGS.aug_rot_z_deg)
    aug_cfg = augment_lib.AugmentConfig(rot_z=(-rot_z, rot_z))
    train_fn = pipeline.epoch_dataset_fn(data_dir, FLAGS.batch_size, FLAGS.seed, augment=FLAGS.augment,
                                         augment_config=aug_cfg, split=train_split,
                                         shuffle_buffer=FLAGS.shuffle_buffer, include_vertices=include_vertices)
    spe = pipeline.steps_per_epoch(data_dir, FLAGS.batch_size, split=train_split)
    cfg = loop.TrainConfig(workdir=workdir, steps_per_epoch=spe, num_epochs=FLAGS.num_epochs,
                           max_steps=FLAGS.max_steps or None, learning_rate=FLAGS.learning_rate,
                           lr_decay=FLAGS.lr_decay, lr_decay_samples=FLAGS.lr_decay_samples or None,
                           batch_size=FLAGS.batch_size, checkpoint_every=FLAGS.checkpoint_every,
                           summary_every=FLAGS.summary_every, eval_every=FLAGS.eval_every,
                           visual_every=FLAGS.visual_every, progress=FLAGS.progress, log_every=FLAGS.log_every,
                           on_nonfinite=FLAGS.on_nonfinite, sync_batchnorm=FLAGS.sync_batchnorm)
    visual_fn = None
    if FLAGS.visual_every:
        visual_fn = pipeline.make_visual_fn(pipeline.take_batch(heldout), model.faces)
    run_info = {"flags": FLAGS.flags_into_string(), "command": command_line(), "hparams": hparams,
                "hparam_metrics": hparam_metrics}
    trainer = loop.Trainer(model, loss_fn, train_fn, cfg, eval_fn=eval_fn, visual_fn=visual_fn, run_info=run_info,
                           seed=FLAGS.seed, strategy=distribution_strategy())
    loop.save_model_config(model, workdir)
    logging.info("Training: %d steps per epoch, %d steps in total, workdir %s", spe, cfg.total_steps, workdir)
    return trainer.train()


def run(supervision: str) -> dict:
    """Render (if needed), train, evaluate, export, predict. ``supervision``: 'full' or 'weak'."""
    if FLAGS.workdir is None:
        raise ValueError("--workdir: expected a run directory, found none")
    if FLAGS.ops == "fallback":
        os.environ["HSR_TF_OPS"] = "fallback"
    t_start = time.time()
    distribution_strategy()  # before any other TensorFlow work (multi_worker)
    workdir = FLAGS.workdir
    lock_workdir(workdir)  # before anything is written into it
    lambda_shape = resolve_lambda_shape(supervision)
    ensure_data(FLAGS.data_dir)
    t_data = time.time()

    import keras
    from hsr_tf import ops
    from hsr_tf.train import evaluation, pipeline

    if FLAGS.ops == "compiled" and ops.backend() != "compiled":
        raise RuntimeError(f"--ops=compiled: the compiled ops are unavailable ({ops.fallback_reason()})")
    logging.info("PointNet++ ops backend: %s", ops.backend())
    info = pipeline.read_data_info(FLAGS.data_dir)
    keras.utils.set_random_seed(FLAGS.seed)
    model = build_model(info)
    import tensorflow as tf
    from hsr_tf.train import loop

    if FLAGS.init_from and tf.train.latest_checkpoint(os.path.join(workdir, loop.CHECKPOINT_SUBDIR)) is None:
        from experiments import model_spec

        model_spec.init_from(model, FLAGS.init_from, info["num_points"], scope=distribution_strategy().scope())
    loss_fn = build_loss(model, lambda_shape)
    heldout = pipeline.eval_dataset(FLAGS.data_dir, FLAGS.batch_size, include_vertices=info["has_vertices"])
    predict_fn = None

    def eval_fn(m, step):
        nonlocal predict_fn
        predict_fn = predict_fn or evaluation.make_predict_fn(m)
        res = evaluation.evaluate(m, heldout, max_batches=FLAGS.eval_batches or None, predict_fn=predict_fn)
        return evaluation.scalar_metrics(res)

    hparams = {k: (getattr(FLAGS, k) if k != "supervision" else supervision) for k in HPARAM_FLAGS}
    hparams["lambda_shape"] = lambda_shape
    t_train0 = time.time()
    result = train_model(model, loss_fn, FLAGS.data_dir, workdir, heldout, eval_fn, hparams, HPARAM_METRICS,
                         include_vertices=info["has_vertices"])
    t_train = time.time() - t_train0
    timings = {"render_s": t_data - t_start, "train_s": t_train}
    if FLAGS.evaluate:
        t0 = time.time()
        run_subprocess("experiments.evaluate", [f"--workdir={workdir}", f"--data_dir={FLAGS.data_dir}"])
        timings["evaluate_s"] = time.time() - t0
    export_dir = os.path.join(workdir, "export")
    if FLAGS.export:
        t0 = time.time()
        run_subprocess("experiments.export", [f"--workdir={workdir}", f"--export_dir={export_dir}",
                                              f"--data_dir={FLAGS.data_dir}"])
        timings["export_s"] = time.time() - t0
    if FLAGS.predict and FLAGS.export:
        t0 = time.time()
        pred_dir = os.path.join(workdir, "predict")
        png, center = render_demo_depth(os.path.join(pred_dir, "input_depth.png"))
        run_subprocess("experiments.predict", [f"--saved_model={export_dir}", f"--depth={png}", "--camera=nyu",
                                               "--center=" + ",".join(f"{c:.1f}" for c in center),
                                               f"--out_dir={pred_dir}"])
        timings["predict_s"] = time.time() - t0
    timings["total_s"] = time.time() - t_start
    with open(os.path.join(workdir, "timings.json"), "w") as f:
        import json
        json.dump(timings, f, indent=2)
    logging.info("Done: step %d; timings %s", result["step"], {k: round(v, 1) for k, v in timings.items()})
    return {"train": result, "timings": timings}


def render_demo_depth(png_path: str, subject_index: int = -1, pose_index: int = 0, seed: int = 12345):
    """Render one full-frame NYU-like depth image of a test-split synthetic subject to a 16-bit PNG (mm).

    Returns:
      (png_path, (u, v, d) of the hand centroid: the --center a user would click).
    """
    import numpy as np
    from PIL import Image

    from data_prep.synth import hands, poses, render

    cfg = synth_dataset_config()
    split = render.split_subjects(cfg.num_subjects, cfg.test_fraction, cfg.seed)
    subjects = hands.make_subjects(num_subjects=cfg.num_subjects, seed=cfg.seed)
    subject = subjects[split["test"][subject_index]]
    lib = poses.pose_library(cfg.poses_per_subject, cfg.seed)  # the rendered set's library (held-out subject)
    theta = subject.theta_for(lib)[pose_index]
    verts, _ = subject.pose(theta)
    fc = cfg.frame
    placed = render.place_and_render(verts, hands.FACES, fc, np.random.default_rng(seed))
    if placed is None:
        raise RuntimeError(f"predict demo: no viewpoint in {fc.view.max_view_tries} draws kept test subject "
                           f"{subject_index}, pose {pose_index} inside the image (seed {seed})")
    depth, v_cam = placed["depth"], placed["vertices"]
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    Image.fromarray(np.round(depth).astype(np.uint16)).save(png_path)
    center = fc.camera.points_to_uvd(v_cam.mean(axis=0))
    return png_path, tuple(float(c) for c in center)


def resolve_data_dir(workdir: str) -> str:
    """--data_dir when given on the command line, else the one the run in ``workdir`` trained on."""
    if FLAGS["data_dir"].present:
        return FLAGS.data_dir
    return workdir_flag(workdir, "data_dir") or FLAGS.data_dir
