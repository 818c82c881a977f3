"""The model card of a packaged pretrained model, written from its card.json alone (no evaluation here).

  python -m experiments.model_card --name=depth --card=docs/model_card_depth.md
  python -m experiments.model_card --name=rgb --card=docs/model_card_rgb.md

card.json's ``kind`` ('depth', the default for cards written before RGB packages existed, or 'rgb') picks the
layout: :func:`render` (depth) or :func:`render_rgb`.

``experiments.package_pretrained`` calls :func:`write` after measuring; this program rewrites the card (and its
curve PNG, <card>_curve.png) from the shipped card.json, e.g. after a change of wording.
"""
import json
import os

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("card", None, "Model card to (re)write from card.json (default docs/model_card_<name>.md; '' = "
                    "none); its curve PNG goes beside it as <card>_curve.png.")
flags.DEFINE_string("name", "depth", "Name of the packaged model (hsr_tf.pretrained.load(name)).")

ROWS = (("mean_joint_error_mm", "joint (regression)"), ("model_joint_error_mm", "model joints (21)"),
        ("shape_error_mm", "shape (vertices)"), ("aligned_shape_error_mm", "aligned shape"),
        ("rest_shape_error_mm", "rest shape"), ("point_cloud_error_mm", "point cloud"))
RGB_ROWS = (("pose_error_mm", "pose (21 joints, root-relative)"), ("mesh_error_mm", "mesh (vertices)"),
            ("aligned_mesh_error_mm", "aligned mesh"))
TARGET_MM = 12.0


def merge_curves(prior: dict, own: dict) -> dict:
    """{metric: [[step, value], ...]} of both, sorted by step; ``own`` wins at a step present in both."""
    out = {}
    for key in sorted(set(prior) | set(own)):
        rows = {int(s): float(v) for s, v in prior.get(key, [])}
        rows.update({int(s): float(v) for s, v in own.get(key, [])})
        out[key] = [[s, rows[s]] for s in sorted(rows)]
    return out


def read_prior_curve(path: str) -> tuple:
    """(curve dict, source text) of a --prior_curve file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--prior_curve: expected a JSON file of earlier evaluations, found nothing at {path}")
    with open(path) as f:
        doc = json.load(f)
    curve = {k: v for k, v in doc.items() if k != "source"}
    bad = [k for k, v in curve.items() if not all(isinstance(r, list) and len(r) == 2 for r in v)]
    if bad:
        raise ValueError(f"{path}: expected {{metric: [[step, value], ...]}}, found other entries under {bad}")
    return curve, doc.get("source")


def plot_curve(card: dict, path: str) -> bool:
    """Held-out errors against training step (the run's evaluations); False when the run recorded none."""
    curve = card.get("curve") or {}
    if not curve:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = card.get("kind") == "rgb"
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    all_steps = np.unique([r[0] for rows in curve.values() for r in rows])
    spacing = np.diff(all_steps).min() if len(all_steps) > 1 else 1.0
    for key, label in (RGB_ROWS if rgb else ROWS):
        if key in curve:
            s, v = np.asarray(curve[key], np.float64).T
            # No line across steps that were not evaluated (a line would look like data).
            breaks = np.nonzero(np.diff(s) > 1.5 * spacing)[0] + 1
            s, v = np.insert(s, breaks, np.nan), np.insert(v, breaks, np.nan)
            ax.plot(s, v, marker=".", label=label)
    if not rgb:
        ax.axhline(TARGET_MM, color="0.5", ls="--", lw=0.8, label=f"target joint error {TARGET_MM:g} mm")
    ax.axvline(card["step"], color="tab:red", lw=0.8, label=f"shipped (step {card['step']:,})")
    ax.set_xlabel("phase-3 training step" if rgb else "training step")
    ax.set_ylabel("held-out error (mm)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    frames = card["test_frames"]
    if rgb and _flag(card, "eval_batches") not in (None, "0"):  # RGB runs evaluate their first test batches
        frames = min(frames, int(_flag(card, "eval_batches")) * int(card["batch_size"]))
    ax.set_title(f"'{card['name']}': held-out test frames during training ({frames} frames)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _flag(card, name):
    for line in card.get("flags") or []:
        if line.startswith(f"--{name}="):
            return line.split("=", 1)[1]
    return None


def _on_off(card, name, default="on"):
    """'on' / 'off' for a boolean flag as absl writes it (--name or --noname), ``default`` when not recorded."""
    lines = card.get("flags") or []
    if f"--{name}" in lines or f"--{name}=true" in lines:
        return "on"
    if f"--no{name}" in lines or f"--{name}=false" in lines:
        return "off"
    return default


def _trend(card, key: str = "mean_joint_error_mm") -> str:
    rows = (card.get("curve") or {}).get(key)
    if not rows or len(rows) < 6:
        return (f"The run recorded {len(rows or [])} held-out evaluation(s) during training: too few (6 needed) for "
                "this card to judge from them alone whether the error was still falling.")
    v = np.asarray(rows, np.float64)[:, 1]
    recent, before = v[-3:].mean(), v[-6:-3].mean()
    state = "still falling" if recent < before - 0.5 else "flat"
    return (f"Held-out {'pose' if key == 'pose_error_mm' else 'joint'} error over the last evaluations: mean "
            f"{before:.1f} mm -> {recent:.1f} mm "
            f"(steps {int(rows[-6][0]):,}-{int(rows[-1][0]):,}): {state}.")


def _wall_time_line(wt: dict, what: str = "") -> str:
    """The card's wall-time bullet from ``card['wall_time']`` (``what``: e.g. ' over the three phases')."""
    if wt.get("active_hours") is None:
        return "- Wall time: not recorded in the workdir (no training summaries)."
    return (f"- Wall time: {wt['active_hours']:.2f} h of training{what} ({wt['first_to_last_hours']:.2f} h first to "
            f"last summary, {wt['pauses']} pauses longer than the gap limit excluded), on the machine recorded in "
            "the notes.")


def _short_command(command: str) -> str:
    """The packaging command as a reader retypes it: ``python -m ...``, the note elided (it is in the card)."""
    import shlex

    args = shlex.split(command)
    if len(args) > 2 and args[1] == "-m":
        args[0] = "python"
    return " ".join("--card_note=..." if a.startswith("--card_note=") else shlex.quote(a) for a in args)


def render(card: dict, curve_name) -> str:
    """Markdown text of the card (an RGB card: :func:`render_rgb`)."""
    if card.get("kind") == "rgb":
        return render_rgb(card, curve_name)
    d, f = card["heldout"]["default"], card["heldout"]["frontal"]
    td, view = card["training_data"], card["view"]
    wt = card["wall_time"]
    name = card["name"]
    lines = [f"# Model card: pretrained depth model (`hsr_tf.pretrained.load(\"{name}\")`)", "",
             f"Generated from `hsr_tf/assets/pretrained/{name}/card.json` by `{_short_command(card['package_command'])}` "
             f"({card['packaged_utc']}). Regenerate every figure after more training with that command (pointing "
             "`--workdir`/`--checkpoint` at the new checkpoint); rewrite only the text with "
             f"`python -m experiments.model_card --name={name}`.", "",
             "## What ships", "",
             f"- Checkpoint step {card['step']:,}" + (f" ({card['samples_seen']:,} samples seen)"
                                                       if card.get("samples_seen") else "")
             + f" of `{card['source_workdir']}`; model variables only, {card['package_mb']:.1f} MB in all "
             f"({card['num_parameters']:,} trainable parameters).",
             "- Network: HandShapeNet (Deng et al.), "
             f"{_flag(card, 'num_stages') or '2'} stages, joint regression {_on_off(card, 'joint_regression')}, "
             f"transform {_flag(card, 'transform') or 'procrustes'}, precision {_flag(card, 'precision') or 'float32'}"
             f"; shape network `{_flag(card, 'shape_network') or 'paper size (defaults)'}`.",
             f"- Use: `hsr_tf.pretrained.load(\"{name}\")` (normalised points in); fine-tune with "
             f"`--init_from=pretrained:{name}`; SavedModel (camera mm in and out) with "
             f"`python -m experiments.export --pretrained={name} --export_dir=D`; the main job "
             f"`python -m experiments.reconstruct --workdir=runs/main` shows it on held-out hands.", "",
             "## Training data", "",
             f"- `data_prep.synth`: {td['num_subjects']} subjects x {td['poses_per_subject']} poses x "
             f"{td['views_per_pose']} views, seed {td['seed']}, {card['noise']} sensor noise; viewpoints: palm or "
             f"back (back with probability {view['back_prob']}) within {view['cone_deg']:g} deg of facing the "
             f"camera, roll +-{view['inplane_deg']:g} deg, {view['distance_mm'][0]:g}-{view['distance_mm'][1]:g} mm.",
             f"- {card['train_frames']:,} training frames; held-out test split: subjects {card['heldout_subjects']} "
             f"({card['test_frames']:,} frames), never trained on. Online augmentation: "
             f"{_on_off(card, 'augment', 'not recorded')} (paper's, section III-E-1).", "",
             "## Training", ""]
    if card.get("command"):
        lines += ["Command (the run's command.txt; resumable: rerun it to continue):", "", "```",
                  card["command"], "```", ""]
    keep = ("batch_size", "learning_rate", "lr_decay", "lr_decay_samples", "stage_joint_decay_epoch", "augment",
            "lambda_joint", "lambda_chamfer", "lambda_mean_shape", "lambda_shape", "seed", "max_steps")
    chosen = [ln for ln in card.get("flags") or [] if ln.split("=", 1)[0][2:] in keep]
    lines += [f"- Flags: {' '.join(f'`{c}`' for c in chosen) if chosen else 'not recorded in the workdir'}."]
    lines += [_wall_time_line(wt)]
    lines += ["", "## Held-out errors (mm, camera frame)", "",
              "| set | frames | " + " | ".join(label for _, label in ROWS) + " | frames with max joint error <= 20 / 40 mm |",
              "|---|---|" + "---|" * len(ROWS) + "---|"]
    for label, r in (("default views (the run's test split)", d), ("frontal views (same subjects and poses)", f)):
        fr = r["fraction_good_frames"]
        lines.append(f"| {label} | {int(r['num_frames']):,} | " + " | ".join(
            f"{r[k]:.1f}" if k in r else "-" for k, _ in ROWS) + f" | {fr.get('20', float('nan')):.0%} / "
                     f"{fr.get('40', float('nan')):.0%} |")
    reached = d["mean_joint_error_mm"] <= TARGET_MM
    lines += ["", f"Target (issue 14): held-out joint error <= {TARGET_MM:g} mm on default views: "
              f"**{'reached' if reached else 'not reached'}** ({d['mean_joint_error_mm']:.1f} mm).", "",
              "Joint: the joint-regression output against the 21 true joints; model joints: the hand model's own "
              "joints; shape: mean vertex distance; aligned shape: the same after a similarity alignment of the "
              "predicted mesh onto the true one (shape free of placement, rotation and size); rest shape: the "
              "predicted neutral mesh at the predicted size against the subject's (shape free of pose); point "
              "cloud: input point to the nearest predicted vertex.", ""]
    if curve_name:
        lines += ["## Held-out error during training", "", f"![held-out error against step]({curve_name})", ""]
        if card.get("curve_prior"):
            lines += [f"Points from `{card['curve_prior']['file']}`: {card['curve_prior']['source']}; the others "
                      "from the run's TensorBoard evaluations.", ""]
    lines += ["## What limited it", "", _trend(card)]
    if card.get("note"):
        lines += ["", card["note"]]
    lines += ["", "Scope: held-out subjects, not held-out poses (the test subjects use the training set's pose "
              "library); the hand model itself was learned from 50 subjects of the same generator and seed, which "
              "include the test subjects. Synthetic depth only: the model has never seen a real sensor.", ""]
    return "\n".join(lines)


def render_rgb(card: dict, curve_name) -> str:
    """Markdown text of an RGB card (experiments/_package_rgb.py writes its card.json)."""
    from hsr_tf.models.rgb_mesh_net import PAPER_CONFIG

    name, net, r = card["name"], card["network"], card["heldout"]["default"]
    td, fr, view = card.get("training_data") or {}, card.get("frame") or {}, card.get("view") or {}
    wt, steps = card["wall_time"], card.get("phase_steps") or {}
    widths = ", ".join(f"{k} {net[k]}" for k in ("filters", "num_stacks", "num_residual", "gcn_fc", "gcn_features",
                                                  "regressor_features", "regressor_hidden", "mlp_hidden"))
    paper = all(list(np.atleast_1d(net[k])) == list(np.atleast_1d(v)) for k, v in PAPER_CONFIG.items())
    lines = [f"# Model card: pretrained RGB model (`hsr_tf.pretrained.load(\"{name}\")`)", "",
             f"Generated from `hsr_tf/assets/pretrained/{name}/card.json` by `{_short_command(card['package_command'])}` "
             f"({card['packaged_utc']}). Rewrite only the text with "
             f"`python -m experiments.model_card --name={name} --card=docs/model_card_{name}.md`.", "",
             "## What ships", "",
             ("- Final network of " if card.get("published", True) else "- Phase-3 checkpoint (the run had not "
              "finished: not its final network) of ") + f"`{card['source_workdir']}` (phase-3 step {card['step']:,}); "
             "model variables only, "
             f"{card['package_mb']:.1f} MB in all ({card['num_parameters']:,} trainable parameters).",
             f"- Network: RGBMeshNet (Ge et al. CVPR 2019), variant `{net['variant']}`, "
             f"{net['image_size']} x {net['image_size']} px input, task transfer {'on' if net['task_transfer'] else 'off'}; "
             f"widths {widths}" + ("." if paper else " -- NOT the paper's (input 256 px, filters 256, Graph CNN "
                                                      f"{PAPER_CONFIG['gcn_features']}): CPU-sized."),
             f"- Use: `hsr_tf.pretrained.load(\"{name}\")` (input dict: image [B, {net['image_size']}, "
             f"{net['image_size']}, 3] in [0, 1], camera fx, fy, cx, cy of that crop in px, root_depth and bone_scale "
             f"in mm; out: vertices and joints in camera mm, joints_uv in px); fine-tune with "
             f"`python -m experiments.rgb_synth --init_from=pretrained:{name}` (same network flags); SavedModel "
             f"(uint8 256 x 256 crops in) with `python -m experiments.export --pretrained={name} --export_dir=D`, "
             "then `python -m experiments.predict_rgb --saved_model=D ...`.", "",
             "## Training data", ""]
    if td:
        lines += [f"- `data_prep.synth_rgb`: {td['num_subjects']} subjects x {td['poses_per_subject']} poses x "
                  f"{td['views_per_pose']} views, seed {td['seed']}, {fr.get('image_size')} px crops, "
                  f"{len(fr.get('skin_tones') or [])} skin tones, {len(fr.get('lighting') or [])} lighting set-ups, "
                  "procedural backgrounds composited by the reader; viewpoints: palm or back (back with probability "
                  f"{view.get('back_prob')}) within {view.get('cone_deg')} deg of facing the camera, roll "
                  f"+-{view.get('inplane_deg')} deg."]
    else:
        lines += [f"- Shards of `{card['data_dir']}` (no data_prep.synth_rgb manifest)."]
    lines += [f"- {card['train_frames']:,} training frames; held-out test split: subjects {card['heldout_subjects']} "
              f"({card['test_frames']:,} frames), never trained on. Online augmentation: "
              f"{_on_off(card, 'augment', 'not recorded')}.", "", "## Training", ""]
    if card.get("command"):
        lines += ["Command (the run's command.txt; resumable: rerun it to continue):", "", "```", card["command"],
                  "```", ""]
    keep = ("batch_size", "learning_rate", "rgb_optimizer", "lr_decay", "augment", "seed", "heatmap_sigma",
            "lambda_heatmap", "lambda_mesh", "lambda_vertex", "lambda_normal", "lambda_edge", "lambda_laplacian",
            "lambda_pose", "phase1_steps", "phase2_steps", "phase3_steps")
    chosen = [ln for ln in card.get("flags") or [] if ln.split("=", 1)[0][2:].removeprefix("no") in keep]
    lines += [f"- Schedule (section 4.3): phase 1 hourglass {steps.get('phase1') or 0:,} steps, phase 2 pose "
              f"regressor {steps.get('phase2') or 0:,} steps, phase 3 end to end {steps.get('phase3') or 0:,} steps"
              + (f", batch {card['batch_size']}." if card.get("batch_size") else "."),
              f"- Flags: {' '.join(f'`{c}`' for c in chosen) if chosen else 'not recorded in the workdir'}."]
    lines += [_wall_time_line(wt, " over the three phases")]
    pck = r.get("pck_at", {})
    lines += ["", "## Held-out errors (whole test split; camera, root depth and hand scale given, as in the paper)",
              "", "| | pose (mm) | mesh (mm) | aligned mesh (mm) | 2D joints (px) | AUC 0-50 mm | AUC 20-50 mm | "
              "PCK 20 / 30 / 40 mm |", "|---|---|---|---|---|---|---|---|"]

    def cell(key, fmt="{:.1f}"):
        return fmt.format(r[key]) if key in r else "-"

    lines.append(f"| model | {cell('pose_error_mm')} | {cell('mesh_error_mm')} | {cell('aligned_mesh_error_mm')} | "
                 f"{cell('joint_2d_error_px')} | {cell('auc_0_50', '{:.3f}')} | {cell('auc_20_50', '{:.3f}')} | "
                 + " / ".join(f"{pck[t]:.0%}" if t in pck else "-" for t in ("20mm", "30mm", "40mm")) + " |")
    lines.append(f"| mean baseline | {cell('mean_baseline_pose_error_mm')} | {cell('mean_baseline_mesh_error_mm')} | "
                 f"{cell('mean_baseline_aligned_mesh_error_mm')} | - | {cell('mean_baseline_auc_0_50', '{:.3f}')} | "
                 f"{cell('mean_baseline_auc_20_50', '{:.3f}')} | - |")
    beats = "pose_error_mm" in r and r["pose_error_mm"] < r.get("mean_baseline_pose_error_mm", float("inf"))
    lines += ["", f"The network's pose error is **{'below' if beats else 'not below'}** the mean baseline's "
              f"({r['pose_error_mm']:.1f} vs {r.get('mean_baseline_pose_error_mm', float('nan')):.1f} mm).", "",
              "Pose: mean root-relative distance of the 21 joints (root = wrist); mesh: mean distance of corresponding "
              "vertices in the camera frame; aligned mesh: the same after a similarity alignment of each predicted "
              "mesh onto the true one; 2D: mean pixel distance of the projected joints in the network's crop; PCK / "
              "AUC: 3D PCK of the root-relative joints. Mean baseline: the training split's mean root-relative pose "
              "and mesh, scaled by each frame's hand scale and placed at its TRUE root joint (what a network ignoring "
              "the image reaches at best; hsr_tf/train/rgb_evaluation.py).", ""]
    if curve_name:
        lines += ["## Held-out error during training", "", f"![held-out error against step]({curve_name})", "",
                  "Phase-3 evaluations of the run (its --eval_batches first test batches, not the whole split).", ""]
    lines += ["## What limited it", "", _trend(card, "pose_error_mm")]
    if card.get("note"):
        lines += ["", card["note"]]
    lines += ["", "Scope: synthetic RGB renders only (one generator, procedural backgrounds): the model has never seen "
              "a real camera image. Held-out subjects, not held-out poses (the test subjects use the training set's "
              "pose library). The network needs the crop's camera intrinsics, the root joint's depth and the hand's "
              "bone scale as inputs (as in the paper): it does not estimate the absolute depth or size of the hand."
              + ("" if paper else " The network and input are far smaller than the paper's, trained for a few "
                 "thousand steps on a 2-core CPU: its errors say what this scale reaches, not what the paper's "
                 "model reaches."), ""]
    return "\n".join(lines)


def write(card: dict, card_path: str) -> str:
    """Write the card Markdown and its curve PNG (``<card stem>_curve.png`` beside it); returns the card path."""
    os.makedirs(os.path.dirname(os.path.abspath(card_path)), exist_ok=True)
    curve_path = os.path.splitext(card_path)[0] + "_curve.png"
    has_curve = plot_curve(card, curve_path)
    with open(card_path, "w") as f:
        f.write(render(card, os.path.basename(curve_path) if has_curve else None))
    return card_path


def card_file() -> str:
    """--card, by default docs/model_card_<--name>.md ('' = write no card)."""
    return f"docs/model_card_{FLAGS.name}.md" if FLAGS.card is None else FLAGS.card


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hsr_tf import pretrained

    if not card_file():
        raise app.UsageError("--card: expected the Markdown file to write, found ''")
    print(write(pretrained.read_json(FLAGS.name, "card.json"), card_file()))


if __name__ == "__main__":
    app.run(main)
