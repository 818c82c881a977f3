"""TensorBoard helpers: run text, hparams, meshes (mesh plugin) and rendered overlay images.

Everything here writes to the default summary writer (``with writer.as_default(step=...)``).

Legend: N points, V vertices, F faces, J joints. Coordinates in camera-frame mm unless
stated (x right, y up, z away from the camera).
"""
from __future__ import annotations

import io
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

#: vertex colours (RGB uint8) of the overlay mesh summary.
PRED_COLOR = (230, 120, 40)
GT_COLOR = (60, 170, 80)
POINTS_COLOR = (40, 90, 230)


def as_markdown_code(text: str) -> str:
    """Indent text by four spaces so TensorBoard's markdown shows it verbatim."""
    return "\n".join("    " + line for line in str(text).splitlines())


def write_hparams(hparams: Mapping, metric_tags: Sequence[str] = ()) -> None:
    """Write the hparams plugin config and this run's values.

    Args:
      hparams: {name: bool | int | float | str}.
      metric_tags: scalar tags (written in the ``eval`` sub-run) to show in the hparams table.
    """
    from tensorboard.plugins.hparams import api as hp

    clean = {}
    for k, v in hparams.items():
        if isinstance(v, (bool, int, float, str)):
            clean[k] = v
        elif isinstance(v, (np.integer, np.floating, np.bool_)):
            clean[k] = v.item()
        else:
            clean[k] = str(v)
    hp.hparams_config(hparams=[hp.HParam(k) for k in sorted(clean)],
                      metrics=[hp.Metric(tag, group="eval", display_name=tag.split("/")[-1]) for tag in metric_tags])
    hp.hparams(clean)


def _check(name, array, last=3, rank=2):
    a = np.asarray(array)
    if a.ndim != rank or a.shape[-1] != last:
        raise ValueError(f"{name}: expected shape [K, {last}], found {a.shape}")
    return a


def mesh_overlay_arrays(points, pred_vertices, faces, gt_vertices=None):
    """One combined cloud: predicted mesh, ground-truth mesh (shifted faces) and input points.

    Args:
      points: [N, 3]; pred_vertices: [V, 3]; faces: int [F, 3]; gt_vertices: optional [V, 3].
    Returns:
      (vertices [V + N (+ V), 3] float32, faces [F (+ F), 3] int32, colours uint8 like vertices).
    """
    points = _check("points", points).astype(np.float32)
    pred = _check("pred_vertices", pred_vertices).astype(np.float32)
    faces = _check("faces", faces).astype(np.int32)
    if faces.size and (faces.min() < 0 or faces.max() >= len(pred)):
        raise ValueError(f"faces: expected indices in [0, {len(pred)}), found range [{faces.min()}, {faces.max()}]")
    verts = [pred, points]
    colors = [np.tile(PRED_COLOR, (len(pred), 1)), np.tile(POINTS_COLOR, (len(points), 1))]
    all_faces = [faces]
    if gt_vertices is not None:
        gt = _check("gt_vertices", gt_vertices).astype(np.float32)
        if gt.shape != pred.shape:
            raise ValueError(f"gt_vertices: expected shape {pred.shape} like pred_vertices, found {gt.shape}")
        all_faces.append(faces + len(pred) + len(points))
        verts.append(gt)
        colors.append(np.tile(GT_COLOR, (len(gt), 1)))
    return (np.concatenate(verts).astype(np.float32), np.concatenate(all_faces).astype(np.int32),
            np.concatenate(colors).astype(np.uint8))


def write_mesh_summaries(tag: str, points, pred_vertices, faces, gt_vertices=None, step=None) -> None:
    """Mesh-plugin summaries of one frame: ``<tag>/overlay`` (prediction orange, ground truth green,
    input points blue), ``<tag>/prediction`` and ``<tag>/input_points`` alone.

    Args as :func:`mesh_overlay_arrays`, in mm.
    """
    from tensorboard.plugins.mesh import summary_v2 as mesh_summary

    verts, fcs, cols = mesh_overlay_arrays(points, pred_vertices, faces, gt_vertices)
    cfg = {"camera": {"cls": "PerspectiveCamera", "fov": 60}, "material": {"cls": "MeshStandardMaterial"}}
    mesh_summary.mesh(f"{tag}/overlay", vertices=verts[None], faces=fcs[None], colors=cols[None],
                      config_dict=cfg, step=step,
                      description="orange: prediction, green: ground truth, blue: input points (mm)")
    pred = np.asarray(pred_vertices, np.float32)
    mesh_summary.mesh(f"{tag}/prediction", vertices=pred[None], faces=np.asarray(faces, np.int32)[None],
                      colors=np.tile(np.array(PRED_COLOR, np.uint8), (len(pred), 1))[None], config_dict=cfg, step=step)
    pts = np.asarray(points, np.float32)
    mesh_summary.mesh(f"{tag}/input_points", vertices=pts[None],
                      colors=np.tile(np.array(POINTS_COLOR, np.uint8), (len(pts), 1))[None], step=step)


def _draw_mesh(ax, verts2d, depth, faces, color, alpha, shade_normals=None):
    """Painter's algorithm: triangles sorted far -> near (depth grows away from the viewer)."""
    from matplotlib.collections import PolyCollection

    tri = verts2d[faces]  # [F, 3, 2]
    order = np.argsort(-depth[faces].mean(axis=1))
    base = np.asarray(color, np.float64) / 255.0
    if shade_normals is not None:
        shade = 0.35 + 0.65 * np.abs(shade_normals)
        fc = np.clip(base[None] * shade[:, None], 0, 1)
    else:
        fc = np.tile(base, (len(faces), 1))
    fc = np.concatenate([fc, np.full((len(faces), 1), alpha)], axis=1)
    ax.add_collection(PolyCollection(tri[order], facecolors=fc[order], edgecolors="none"))


def _face_normals(verts, faces):
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    n = np.cross(b - a, c - a)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def render_overlay(points, pred_vertices, faces, gt_vertices=None, pred_joints=None, gt_joints=None,
                   title: Optional[str] = None, size_px: int = 960) -> np.ndarray:
    """Orthographic front (x-y, as seen by the camera) and side (z-y) views of the predicted mesh over
    the input points, with joints; ground truth mesh in a third panel when given.

    Args:
      points [N, 3], pred_vertices [V, 3], faces int [F, 3], gt_vertices [V, 3] or None,
      pred_joints / gt_joints [J, 3] or None; all camera mm.
    Returns:
      uint8 RGB image [H, W, 3].
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    points = _check("points", points).astype(np.float64)
    pred = _check("pred_vertices", pred_vertices).astype(np.float64)
    faces = _check("faces", faces).astype(np.int64)
    n_panels = 3 if gt_vertices is not None else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(3.2 * n_panels, 3.4), dpi=size_px / (3.2 * n_panels))
    normals = _face_normals(pred, faces)
    # (title, horizontal axis, vertical axis, depth axis): front = as the camera sees it (depth z),
    # side = seen from x = -inf (depth x). Painter's order draws the largest depth first.
    views = [("front (x-y)", 0, 1, 2), ("side (z-y), from -x", 2, 1, 0)]
    for ax, (name, i, j, dcol) in zip(axes[:2], views):
        depth_v = pred[:, dcol]
        ncol = dcol
        _draw_mesh(ax, pred[:, [i, j]], depth_v, faces, PRED_COLOR, 0.55, normals[:, ncol])
        ax.scatter(points[:, i], points[:, j], s=1.5, c="tab:blue", alpha=0.6, linewidths=0)
        if gt_joints is not None:
            g = np.asarray(gt_joints)
            ax.scatter(g[:, i], g[:, j], s=10, c="tab:green", marker="o", label="GT joints")
        if pred_joints is not None:
            p = np.asarray(pred_joints)
            ax.scatter(p[:, i], p[:, j], s=10, c="tab:red", marker="x", label="pred joints")
        ax.set_title(name, fontsize=8)
        ax.set_aspect("equal")
        allxy = np.concatenate([points[:, [i, j]], pred[:, [i, j]]])
        lo, hi = allxy.min(0), allxy.max(0)
        c, r = 0.5 * (lo + hi), 0.55 * float(np.max(hi - lo)) + 1.0
        ax.set_xlim(c[0] - r, c[0] + r)
        ax.set_ylim(c[1] - r, c[1] + r)
        ax.tick_params(labelsize=6)
    if gt_vertices is not None:
        gt = _check("gt_vertices", gt_vertices).astype(np.float64)
        ax = axes[2]
        _draw_mesh(ax, gt[:, [0, 1]], gt[:, 2], faces, GT_COLOR, 0.55, _face_normals(gt, faces)[:, 2])
        ax.scatter(points[:, 0], points[:, 1], s=1.5, c="tab:blue", alpha=0.6, linewidths=0)
        ax.set_title("ground truth (x-y)", fontsize=8)
        ax.set_aspect("equal")
        ax.set_xlim(axes[0].get_xlim())
        ax.set_ylim(axes[0].get_ylim())
        ax.tick_params(labelsize=6)
    if pred_joints is not None or gt_joints is not None:
        axes[0].legend(fontsize=6, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=8)
    return _figure_to_rgb(fig)


#: parent of each joint in our 21-joint order (wrist; thumb, index, middle, ring, pinky root -> tip), for skeletons.
HAND_PARENTS = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)


def _draw_joints(ax, joints_uv, color, marker):
    """Joints [J, 2] px as markers, joined by bones when they are our 21 hand joints."""
    j = _check("joints_uv", joints_uv, last=2).astype(np.float64)
    if len(j) == len(HAND_PARENTS):
        for c, p in enumerate(HAND_PARENTS):
            if p >= 0:
                ax.plot(j[[p, c], 0], j[[p, c], 1], color=color, linewidth=1.0, alpha=0.8)
    ax.scatter(j[:, 0], j[:, 1], s=12, c=color, marker=marker)


def _projected_figure(background, cmap, uv, vertex_depth, faces, joints_uv, gt_joints_uv, title, xlim, ylim,
                      inches: float):
    """One image panel (``background`` shown with ``cmap``) with the projected mesh and joints drawn on it."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    h, w = background.shape[:2]
    fig, ax = plt.subplots(figsize=(inches, inches * h / w), dpi=100)
    ax.imshow(background, cmap=cmap, interpolation="nearest")
    if uv is not None:
        _draw_mesh(ax, _check("uv", uv, last=2).astype(np.float64), np.asarray(vertex_depth, np.float64),
                   np.asarray(faces, np.int64), PRED_COLOR, 0.5)
    if gt_joints_uv is not None:
        _draw_joints(ax, gt_joints_uv, "tab:green", "o")
    if joints_uv is not None:
        _draw_joints(ax, joints_uv, "tab:red", "x")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    if title:
        ax.set_title(title, fontsize=8)
    return _figure_to_rgb(fig)


def draw_mesh_on_depth(depth, uv, vertex_depth, faces, joints_uv=None, title: Optional[str] = None,
                       roi_uv=None) -> np.ndarray:
    """The projected mesh over a depth image (for the predict CLI).

    Args:
      depth: [H, W] depth in mm (0 = missing).
      uv: [V, 2] pixel coordinates of the vertices (u column, v row).
      vertex_depth: [V] depth of the vertices (mm), for painter's ordering.
      faces: int [F, 3]. joints_uv: optional [J, 2] pixels.
      roi_uv: optional [M, 2] pixels that must stay in view as well as the mesh (e.g. the selected hand
        pixels, so a wrong-sized prediction is visible next to the real hand).
    Returns:
      uint8 RGB image [H', W', 3].
    """
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected shape [H, W], found {depth.shape}")
    uv = _check("uv", uv, last=2).astype(np.float64)
    h, w = depth.shape
    shown = np.where(depth > 0, depth, np.nan)
    # Zoom on the mesh (and the region of interest) with a margin.
    extent = uv if roi_uv is None else np.concatenate([uv, _check("roi_uv", roi_uv, last=2).astype(np.float64)])
    u0, v0 = extent.min(0)
    u1, v1 = extent.max(0)
    m = 0.3 * max(u1 - u0, v1 - v0) + 10
    return _projected_figure(shown, "gray_r", uv, vertex_depth, faces, joints_uv, None, title,
                             (max(u0 - m, 0), min(u1 + m, w)), (min(v1 + m, h), max(v0 - m, 0)), 6.4)


def draw_mesh_on_image(image, uv, vertex_depth, faces, joints_uv=None, gt_joints_uv=None,
                       title: Optional[str] = None) -> np.ndarray:
    """The projected mesh (orange), predicted joints (red x) and true joints (green o) over an RGB crop.

    Args:
      image: [S, S, 3] RGB, float in [0, 1] or uint8. uv: [V, 2] px of the vertices in that image, or None
        (a model without a mesh). vertex_depth: [V] mm (painter's order). faces: int [F, 3].
      joints_uv, gt_joints_uv: optional [J, 2] px.
    Returns:
      uint8 RGB image [H', W', 3] showing the whole crop.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image: expected [S, S, 3] RGB, found {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(img, 0.0, 1.0)
    h, w = img.shape[:2]
    return _projected_figure(img, None, uv, vertex_depth, faces, joints_uv, gt_joints_uv, title,
                             (-0.5, w - 0.5), (h - 0.5, -0.5), 4.0)


def _figure_to_rgb(fig) -> np.ndarray:
    """Lays out, rasterises and closes a matplotlib figure; returns uint8 RGB [H, W, 3]."""
    import matplotlib.pyplot as plt
    from PIL import Image

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))

def write_image(tag: str, image: np.ndarray, step=None) -> None:
    """tf.summary.image of one uint8 RGB image [H, W, 3]."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 [H, W, 3], found {img.dtype} {img.shape}")
    tf.summary.image(tag, img[None], step=step)
