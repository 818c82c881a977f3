"""Differentiable depth rendering of triangle meshes (the renderer R of Ge et al. 2019, Eq. 7).

Legend: B batch, V vertices, F faces, H, W image height / width (pixels).

``render_depth(vertices [B,V,3] camera mm, faces [F,3], camera [B,4] (fx, fy, cx, cy), height, width)``
-> depth [B,H,W] float32 mm, 0 where no face is hit. Camera frame x right, y up, z away; u = cx + fx x/z,
v = cy - fy y/z; pixel (row r, col c) samples the ray through its centre (u, v) = (c, r).
``render_depth_and_mask`` adds the coverage mask; ``render_depth_parts`` returns every piece (used by
:mod:`hsr_tf.losses_weak`). Forward: exact z-buffer; gradients through the visible surface and, by a
straight-through soft coverage, at silhouettes (:mod:`hsr_tf.render.depth`). The rasteriser backend is
compiled C++ when available, pure TensorFlow otherwise (:mod:`hsr_tf.render.raster`).
"""
from hsr_tf.render.depth import render_depth, render_depth_and_mask, render_depth_parts
from hsr_tf.render.raster import backend, fallback_reason, rasterize_ids, scale_camera, use_backend

__all__ = ["render_depth", "render_depth_and_mask", "render_depth_parts", "rasterize_ids", "scale_camera",
           "backend", "use_backend", "fallback_reason"]
