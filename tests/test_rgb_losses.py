"""RGB losses (hsr_tf.losses_rgb) against independent NumPy computations of Ge et al. Eqs. (2)-(6)."""
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import losses_rgb as L
from hsr_tf.hand_model import HandModel

RNG = np.random.default_rng(0)
FACES = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]], np.int32)  # tetrahedron: 6 edges, 4 vertices


def _meshes(b=3, v=4):
    gt = RNG.normal(size=(b, v, 3)).astype(np.float32) * 10
    pred = gt + RNG.normal(size=(b, v, 3)).astype(np.float32) * 3
    scale = RNG.uniform(5, 20, size=b).astype(np.float32)
    return pred, gt, scale


def _edges_np(faces):
    e = set()
    for f in faces:
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            e.add((min(a, b), max(a, b)))
    return sorted(e)


def test_heatmap_loss():
    gt = RNG.random((2, 8, 8, 21)).astype(np.float32)
    pred = RNG.random((2, 2, 8, 8, 21)).astype(np.float32)
    ref = np.mean([sum(((pred[b, t] - gt[b]) ** 2).mean(axis=(0, 1)).sum() for t in range(2)) for b in range(2)])
    assert float(L.heatmap_loss(pred, gt)) == pytest.approx(ref, rel=1e-5)
    assert float(L.heatmap_loss(pred[:, 1], gt)) == pytest.approx(
        np.mean([((pred[b, 1] - gt[b]) ** 2).mean(axis=(0, 1)).sum() for b in range(2)]), rel=1e-5)
    with pytest.raises(ValueError, match="pred"):
        L.heatmap_loss(pred[:, :, :4], gt)


def test_vertex_loss_with_2d_term_and_weights():
    pred, gt, scale = _meshes()
    puv, guv = RNG.normal(size=(3, 4, 2)), RNG.normal(size=(3, 4, 2))
    w = np.array([1.0, 0.0, 1.0], np.float32)
    per = [(((pred[b] - gt[b]) / scale[b]) ** 2).sum() / 4 + ((puv[b] - guv[b]) ** 2).sum() / 4 for b in range(3)]
    ref = (per[0] + per[2]) / 2
    got = L.vertex_loss(pred, gt, puv.astype(np.float32), guv.astype(np.float32), scale, w)
    assert float(got) == pytest.approx(ref, rel=1e-5)


def test_normal_loss():
    pred, gt, scale = _meshes()
    ref = []
    for b in range(3):
        p, g = pred[b] / scale[b], gt[b] / scale[b]
        tot = 0.0
        for f in FACES:
            n = np.cross(g[f[1]] - g[f[0]], g[f[2]] - g[f[0]])
            n /= np.linalg.norm(n)
            for i, j in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
                tot += np.dot(p[i] - p[j], n) ** 2
        ref.append(tot / 4)
    assert float(L.normal_loss(pred, gt, FACES, scale)) == pytest.approx(np.mean(ref), rel=1e-4)
    # a prediction translated and slid within the tangent planes... a pure translation costs nothing
    assert float(L.normal_loss(gt + 5.0, gt, FACES)) == pytest.approx(0.0, abs=1e-6)


def test_edge_loss_uses_the_reference_mesh():
    pred, ref_mesh, scale = _meshes()
    ref = []
    for b in range(3):
        tot = 0.0
        for i, j in _edges_np(FACES):
            e = np.sum(((ref_mesh[b, i] - ref_mesh[b, j]) / scale[b]) ** 2)
            eh = np.sum(((pred[b, i] - pred[b, j]) / scale[b]) ** 2)
            tot += (e - eh) ** 2
        ref.append(tot / 4)
    assert float(L.edge_loss(pred, ref_mesh, FACES, scale)) == pytest.approx(np.mean(ref), rel=1e-4)
    rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float32)
    assert float(L.edge_loss(ref_mesh @ rot.T + 3, ref_mesh, FACES)) == pytest.approx(0.0, abs=1e-2)


def test_laplacian_loss_on_hand_mesh():
    faces = HandModel.load().faces
    v = 1305
    gt = RNG.normal(size=(2, v, 3)).astype(np.float32)
    pred = gt + RNG.normal(size=(2, v, 3)).astype(np.float32)
    nbrs = [set() for _ in range(v)]
    for f in faces:
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            nbrs[a].add(b)
            nbrs[b].add(a)
    ref = []
    for b in range(2):
        d = gt[b] - pred[b]
        ref.append(sum(np.sum((d[i] - d[list(nbrs[i])].mean(0)) ** 2) for i in range(v)) / v)
    assert float(L.laplacian_loss(pred, gt, faces)) == pytest.approx(np.mean(ref), rel=1e-4)
    # a constant offset is perfectly smooth
    assert float(L.laplacian_loss(gt + np.float32(7.0), gt, faces)) == pytest.approx(0.0, abs=1e-6)


def test_pose_loss_and_fully_supervised_combination():
    pj, gj, scale = _meshes(2, 21)
    ref = np.mean([(((pj[b] - gj[b]) / scale[b]) ** 2).sum() / 21 for b in range(2)])
    assert float(L.pose_loss(pj, gj, scale)) == pytest.approx(ref, rel=1e-5)
    faces = HandModel.load().faces
    b, s = 2, 64
    verts = (RNG.normal(size=(b, 1305, 3)) * 20 + [0, 0, 400]).astype(np.float32)
    batch = {"bone_scale": tf.constant(scale), "heatmaps": tf.zeros([b, 16, 16, 21]),
             "vertices": tf.constant(verts), "has_vertices": tf.ones([b]), "joints": tf.constant(gj),
             "camera": tf.constant([[100.0, 100.0, 31.5, 31.5]] * b), "root_depth": tf.constant([400.0] * b)}
    from hsr_tf.geometry import uvd as uvd_lib
    pred_v = verts + np.float32(1.0)
    uvd_n = uvd_lib.camera_to_normalized_uvd(pred_v, batch["camera"], batch["root_depth"], batch["bone_scale"], s)
    outputs = {"heatmaps_all": tf.ones([b, 2, 16, 16, 21]), "vertices": tf.constant(pred_v), "uvd": uvd_n,
               "joints": tf.constant(pj)}
    cfg = L.RGBLossConfig()
    total, terms = L.fully_supervised_loss(batch, outputs, faces, cfg, s)
    mesh = terms["vertex"] + terms["normal"] + terms["edge"] + 50 * terms["laplacian"]
    assert float(terms["heatmap"]) == pytest.approx(2 * 21)
    assert float(terms["mesh"]) == pytest.approx(float(mesh), rel=1e-5)
    assert float(total) == pytest.approx(0.5 * 42 + float(mesh) + ref, rel=1e-5)
    assert float(terms["laplacian"]) == pytest.approx(0.0, abs=1e-6)  # constant offset
    no_normal = L.fully_supervised_loss(batch, outputs, faces, L.RGBLossConfig(lambda_n=0.0), s)[1]
    assert "normal" not in no_normal
