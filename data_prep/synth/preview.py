"""Contact sheets of procedural subjects and poses (shaded renders, palm and side views).

    python -m data_prep.synth.preview --out_dir=/tmp/preview [--num_subjects=8 --num_poses=24 --seed=0]

Writes ``subjects.png`` (rest pose of each subject), ``poses.png`` (named gestures and sampled poses
on subject 0) and ``poses_subjects.png`` (a few gestures on several subjects). Rendering is an
orthographic painter's-algorithm rasterisation with matplotlib: faces sorted by depth, back faces
culled, Lambert shading by normal . light. Views follow the camera convention of the project
(x right, y up, z away from the viewer): "palm" looks along +z at the palm (-z side) of the hand,
"side" looks along -x at the thumb side.

Legend: V vertices, F faces.
"""
import os

from absl import app, flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
import numpy as np  # noqa: E402

from data_prep.synth import hands, poses  # noqa: E402

flags.DEFINE_string("out_dir", None, "directory for the PNG contact sheets")
flags.DEFINE_integer("num_subjects", 8, "subjects on the subject sheet")
flags.DEFINE_integer("num_poses", 24, "poses on the pose sheet (named gestures first)")
flags.DEFINE_integer("seed", 0, "seed of the subjects and of the pose library")

# view name -> (screen-right axis, screen-up axis, towards-the-viewer axis) in hand-frame coordinates
VIEWS = {
    "palm": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, -1.0])),
    "side": (np.array([0, 0, 1.0]), np.array([0, 1.0, 0]), np.array([1.0, 0, 0])),
    "back": (np.array([-1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])),
}


def render(ax, vertices, faces, view, color=(0.93, 0.76, 0.64), joints=None):
    """Draws a shaded mesh [V,3] (mm) into a matplotlib axis, seen from `view`."""
    right, up, toward = VIEWS[view]
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    facing = normals @ toward
    keep = facing > 0
    light = 0.7 * toward + 0.5 * up + 0.3 * right
    light /= np.linalg.norm(light)
    shade = np.clip(normals @ light, 0.0, 1.0) * 0.75 + 0.25
    depth = tri.mean(axis=1) @ toward
    order = np.argsort(depth[keep])  # farthest first
    proj = np.stack([tri @ right, tri @ up], axis=-1)[keep][order]
    colors = np.clip(np.asarray(color)[None, :] * shade[keep][order][:, None], 0, 1)
    ax.add_collection(PolyCollection(proj, facecolors=colors, edgecolors=colors * 0.85, linewidths=0.2))
    if joints is not None:
        ax.scatter(joints @ right, joints @ up, s=3, c="b", zorder=5)
    pts = vertices @ np.stack([right, up], axis=1)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2 + 5
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal")
    ax.axis("off")


def contact_sheet(path, meshes, titles, views=("palm", "side"), joints=None, cols=6, panel_size=2.6):
    """Writes a PNG grid: every mesh rendered from every view."""
    panels = [(i, v) for i in range(len(meshes)) for v in views]
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size * cols, panel_size * 1.08 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, v) in zip(axes.ravel(), panels):
        render(ax, meshes[i], hands.FACES, v, joints=None if joints is None else joints[i])
        ax.set_title(f"{titles[i]} ({v})", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    out_dir = flags.FLAGS.out_dir
    if not out_dir:
        raise app.UsageError("--out_dir is required")
    os.makedirs(out_dir, exist_ok=True)
    subjects = hands.make_subjects(flags.FLAGS.num_subjects, seed=flags.FLAGS.seed)
    contact_sheet(os.path.join(out_dir, "subjects.png"), [s.rest_vertices for s in subjects],
                  [f"subject {i}: {s.anatomy.hand_length:.0f}x{s.anatomy.palm_width:.0f} mm"
                   for i, s in enumerate(subjects)],
                  joints=[s.rest_joints for s in subjects])
    library = poses.pose_library(seed=flags.FLAGS.seed)
    count = min(flags.FLAGS.num_poses, len(library.names))
    named = [library.names.index(n) for n in poses.GESTURE_NAMES]
    sampled = [i for i in range(len(library.names)) if i not in set(named)]
    picks = (named + sampled[:: max(1, len(sampled) // max(1, count))])[:count]
    theta = subjects[0].theta_for(library.angles[picks])
    verts, joints = subjects[0].pose(theta)
    contact_sheet(os.path.join(out_dir, "poses.png"), list(verts), [library.names[i] for i in picks])
    gestures = [library.names.index(n) for n in ("fist", "pinch", "ok", "grasp") if n in library.names]
    meshes, titles = [], []
    for si, subject in enumerate(subjects[:4]):
        v, _ = subject.pose(subject.theta_for(library.angles[gestures]))
        meshes += list(v)
        titles += [f"s{si} {library.names[g]}" for g in gestures]
    contact_sheet(os.path.join(out_dir, "poses_subjects.png"), meshes, titles, views=("palm", "side"), cols=8)
    print(f"wrote contact sheets to {out_dir}")


if __name__ == "__main__":
    app.run(main)
