"""Helpers shared by tests/test_real_*.py: independent checks of converted shards."""
import numpy as np

from hsr_tf.data import shards


def load_split(out_dir, split):
    """All shards of a split concatenated (frames sorted by frame_id)."""
    paths = shards.list_shards(out_dir, split)
    assert paths, f"no shards for {split} in {out_dir}"
    parts = [shards.load_shard(p) for p in paths]
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(data["frame_id"])
    return {k: v[order] for k, v in data.items()}


def camera_points(data):
    """Sampled points back in camera mm: p = scale * p_n @ R^T + c (written independently of DATA's code)."""
    pn = data["points"].astype(np.float64)
    rot = data["rotation"].astype(np.float64) if "rotation" in data else np.broadcast_to(np.eye(3), (len(pn), 3, 3))
    return np.einsum("fpk,fjk->fpj", pn, rot) * data["scale"][:, None, None] + data["center"][:, None, :]


def surface_distance(points, vertices, faces):
    """Unsigned distance (mm) of each point to the triangle mesh (open3d)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(vertices, np.float32)),
                        o3d.core.Tensor(np.asarray(faces, np.uint32)))
    return scene.compute_distance(o3d.core.Tensor(np.asarray(points, np.float32))).numpy()


def pixel_points(depth, fx, fy, cx, cy):
    """All valid pixels back-projected with y UP (x = (u-cx) z / fx, y = (cy-v) z / fy)."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    return np.stack([(u - cx) * z / fx, (cy - v) * z / fy, z], axis=1)
