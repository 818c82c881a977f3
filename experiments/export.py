"""Export a trained run as a self-contained SavedModel (camera-frame mm in and out).

  python -m experiments.export --workdir=W --export_dir=E [--export_ops=fallback|compiled] [--precision=...]

serving_default: points float32 [B, 1024, 3] camera mm -> vertices [B, 1305, 3], joints [B, 21, 3],
dataset_joints [B, D, 3] (camera mm), center [B, 3], scale [B]; signature "faces" -> [F, 3].
The normalisation rule is read from the training shards' attributes. By default the graph is traced
with the pure-TF fallback ops so it loads with TensorFlow alone; --export_ops=compiled keeps the custom
kernels (then `import hsr_tf.ops` before tf.saved_model.load). After writing, the export is reloaded
and checked against the Keras model on test frames (max abs difference reported, must be < 0.05 mm).

An RGB run (W/run_kind.txt says rgb, or W/model_config.json is an RGBMeshNet) gets the RGB signature instead
(experiments/_export_rgb.py, hsr_tf/export.py): image uint8 [B, 256, 256, 3], camera [B, 4], root_depth [B],
bone_scale [B], is_left [B] -> vertices, joints (camera mm), joints_uv (px), heatmaps [B, 64, 64, 21]; checked
against the Keras model (right hands) and against its own mirrored outputs (left hands). --pretrained=rgb exports
the shipped RGB model the same way (checked on its reference frames, also against the stored outputs).
"""
import json
import os

import numpy as np
from absl import app, flags, logging

from experiments import common, model_spec

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "SavedModel output directory (default WORKDIR/export).")
flags.DEFINE_enum("export_ops", "fallback", ["fallback", "compiled"], "Ops traced into the SavedModel.")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the newest in WORKDIR/checkpoints).")
flags.DEFINE_string("pretrained", None, "Export the model shipped under this name (hsr_tf.pretrained: depth, rgb) "
                    "instead of a run; --workdir is then not used and the check runs on its reference frames "
                    "(packages under another root: set HSR_TF_PRETRAINED_ROOT).")
flags.DEFINE_integer("check_frames", 4, "Test frames used to check the export against the Keras model (0 = skip).")


def custom_ops_in_saved_model(export_dir: str) -> list:
    """Names of hsr_tf custom op types (``Hsr*``) anywhere in the SavedModel's graphs."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    found = set()
    for mg in sm.meta_graphs:
        nodes = list(mg.graph_def.node)
        for fn in mg.graph_def.library.function:
            nodes.extend(fn.node_def)
        found.update(n.op for n in nodes if n.op.startswith("Hsr"))
    return sorted(found)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None and not FLAGS.pretrained:
        raise app.UsageError("--workdir (or --pretrained=NAME) is required")
    if FLAGS.pretrained and not FLAGS.export_dir:
        raise app.UsageError("--export_dir is required with --pretrained")
    from experiments import _export_rgb  # RGB runs: recognised by W/run_kind.txt (hsr_tf.train.run_kind)

    if FLAGS.pretrained:
        from hsr_tf import pretrained

        if pretrained.check_kind(FLAGS.pretrained) == "rgb":
            report = _export_rgb.export_rgb_pretrained(FLAGS.pretrained, FLAGS.export_dir, FLAGS.check_frames,
                                                       common.apply_precision())
            print(json.dumps(report, indent=2))
            return
    elif _export_rgb.is_rgb_run(FLAGS.workdir):
        report = _export_rgb.export_rgb_run(FLAGS.workdir, FLAGS.export_dir or os.path.join(FLAGS.workdir, "export"),
                                            FLAGS.checkpoint, common.resolve_data_dir(FLAGS.workdir),
                                            FLAGS.check_frames, common.apply_precision())
        print(json.dumps(report, indent=2))
        return
    from hsr_tf import export as export_lib
    from hsr_tf import ops
    from hsr_tf.data import reader as reader_lib
    from hsr_tf.train import loop, pipeline

    from hsr_tf import pretrained

    data_dir = None if FLAGS.pretrained else common.resolve_data_dir(FLAGS.workdir)
    info = pretrained.data_info(FLAGS.pretrained) if FLAGS.pretrained else pipeline.read_data_info(data_dir, "train")
    norm = info["normalization"]
    if norm is None:
        logging.warning("%s: shards carry no 'normalization' attribute; assuming centre=mean, scale=fixed 150 mm",
                        data_dir)
        norm = {"center_mode": "mean", "scale_mode": "fixed", "fixed_scale": 150.0, "obb": False}
    if norm["obb"]:
        raise ValueError(f"{data_dir}: expected shards normalised without OBB rotation to export, found obb=True")
    meta_precision = common.apply_precision()  # the MLPs' compute dtype of the exported graph
    model, ckpt = model_spec.load_model_spec(f"{model_spec.PRETRAINED_PREFIX}{FLAGS.pretrained}") if FLAGS.pretrained else \
        loop.load_model_from_workdir(FLAGS.workdir, FLAGS.checkpoint, example_points_shape=(1, info["num_points"], 3))
    faces = model.faces
    export_dir = FLAGS.export_dir or os.path.join(FLAGS.workdir, "export")
    meta = {"joint_names": [str(n) for n in info["joint_names"]],
            "model_joint_names": list(__import__("hsr_tf.hand_model.skeleton", fromlist=["x"]).JOINT_NAMES),
            "checkpoint": os.path.abspath(ckpt), "ops_backend": FLAGS.export_ops, "camera": info["camera"],
            "dataset": info["dataset"], "precision": meta_precision}
    with ops.use_backend(FLAGS.export_ops):
        export_lib.export_saved_model(model, export_dir, faces, num_points=info["num_points"],
                                      center_mode=norm["center_mode"], scale_mode=norm["scale_mode"],
                                      fixed_scale=norm["fixed_scale"], metadata=meta)
    custom = custom_ops_in_saved_model(export_dir)
    if FLAGS.export_ops == "fallback" and custom:
        raise RuntimeError(f"{export_dir}: expected only standard TensorFlow ops with --export_ops=fallback, "
                           f"found custom ops {custom}")
    logging.info("Exported %s -> %s (custom ops in graph: %s)", ckpt, export_dir, custom or "none")
    report = {"export_dir": os.path.abspath(export_dir), "checkpoint": ckpt, "custom_ops": custom,
              "normalisation": norm}
    if FLAGS.check_frames:
        batch = pretrained.reference_batch(FLAGS.pretrained) if FLAGS.pretrained else \
            pipeline.take_batch(pipeline.eval_dataset(data_dir, FLAGS.check_frames, include_vertices=False))
        points_mm = reader_lib.to_camera_mm(batch["points"], batch)
        served = export_lib.LoadedModel(export_dir)(points_mm.numpy())
        ref = model(batch["points"], training=False)
        diffs = {}
        for k in export_lib.OUTPUT_KEYS:
            diffs[k] = float(np.max(np.abs(served[k] - reader_lib.to_camera_mm(ref[k], batch).numpy())))
        report["max_abs_diff_mm_vs_keras"] = diffs
        logging.info("SavedModel vs Keras model, max |difference| (mm): %s", diffs)
        if max(diffs.values()) > 0.05:
            raise RuntimeError(f"{export_dir}: expected the export to match the Keras model within 0.05 mm, "
                               f"found {diffs}")
    with open(os.path.join(export_dir, "export_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
