"""Mesh graph, Laplacians and Graclus coarsening (hsr_tf.graph)."""
import numpy as np
import pytest
import scipy.sparse

from hsr_tf.graph import (MeshGraph, build_mesh_graph, load_mesh_graph, mesh_adjacency, normalized_laplacian,
                          rescaled_laplacian)
from hsr_tf.graph import coarsening
from hsr_tf.hand_model import HandModel


def _grid_faces(n):
    """Triangulated n x n vertex grid."""
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            faces += [[a, b, e], [a, e, d]]
    return np.asarray(faces, np.int32)


def test_adjacency_and_laplacian_match_dense_definition():
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]], np.int32)  # tetrahedron
    w = mesh_adjacency(faces).toarray()
    np.testing.assert_array_equal(w, np.ones((4, 4)) - np.eye(4))
    lap = normalized_laplacian(w).toarray()
    d = np.diag(1 / np.sqrt(w.sum(1)))
    np.testing.assert_allclose(lap, np.eye(4) - d @ w @ d, atol=1e-12)
    # K4: normalised Laplacian eigenvalues 0 and 4/3 (x3).
    lt, lmax = rescaled_laplacian(lap)
    assert lmax == pytest.approx(4 / 3, abs=1e-9)
    np.testing.assert_allclose(lt.toarray(), 2 * lap / lmax - np.eye(4), atol=1e-12)


def test_lambda_max_by_eigsh_matches_dense_on_grid():
    w = mesh_adjacency(_grid_faces(6))
    lap = normalized_laplacian(w)
    _, lmax = rescaled_laplacian(lap)
    assert lmax == pytest.approx(np.linalg.eigvalsh(lap.toarray()).max(), abs=1e-7)


def test_isolated_node_gets_unit_diagonal():
    w = scipy.sparse.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], float))
    lap = normalized_laplacian(w).toarray()
    np.testing.assert_allclose(lap, [[1, -1, 0], [-1, 1, 0], [0, 0, 1]])


def test_graclus_pairs_neighbours_and_prefers_heavy_edges():
    # Path 0-1-2-3 with a heavy middle edge: visiting 1 first must take 2 (gain 5*(1/6+1/6) > 1*(1+1/6)).
    w = scipy.sparse.csr_matrix(np.array([[0, 1, 0, 0], [1, 0, 5, 0], [0, 5, 0, 1], [0, 0, 1, 0]], float))
    cl = coarsening.graclus_one_level(w, [1, 0, 2, 3])
    assert cl[1] == cl[2] and cl[0] != cl[3] and len(set(cl)) == 3


def _check_tree(graph: MeshGraph, w0):
    levels = graph.levels
    for l in range(levels + 1):
        perm = graph.perms[l]
        m = graph.num_nodes(l)
        assert m == graph.num_nodes(levels) * 2 ** (levels - l)
        real = perm[perm < graph.num_real[l]]
        np.testing.assert_array_equal(np.sort(real), np.arange(graph.num_real[l]))  # each real node once
        assert len(set(perm.tolist())) == m
        # fake nodes have no edges
        adj = graph.adjacency[l]
        fake = ~graph.real_mask(l)
        assert adj[fake].nnz == 0 and adj[:, fake].nnz == 0
    for l in range(levels):
        fine_real = graph.real_mask(l).reshape(-1, 2)
        coarse_real = graph.real_mask(l + 1)
        # a real coarse node has 1 or 2 real children; a fake coarse node has two fake children
        np.testing.assert_array_equal(fine_real.any(1), coarse_real)
        # two real children of one coarse node are joined by an edge of the finer graph
        both = np.nonzero(fine_real.all(1))[0]
        adj = graph.adjacency[l]
        assert all(adj[2 * i, 2 * i + 1] > 0 for i in both)
    # level 0 is the mesh graph permuted
    pos = graph.vertex_positions()
    np.testing.assert_array_equal(graph.perms[0][pos], np.arange(graph.num_vertices))
    a0 = graph.adjacency[0].toarray()[np.ix_(pos, pos)]
    np.testing.assert_array_equal(a0, w0.toarray())
    # every real vertex reaches a real coarsest node, and each coarse weight sums the fine edges it merges
    node = np.arange(graph.num_nodes(0))
    for l in range(levels):
        node = node // 2
    assert graph.real_mask(levels)[node[pos]].all()
    total = graph.adjacency[0].sum()
    for l in range(levels):
        pairs = graph.adjacency[l].toarray()
        m = pairs.shape[0]
        inner = sum(pairs[2 * i, 2 * i + 1] + pairs[2 * i + 1, 2 * i] for i in range(m // 2))
        assert graph.adjacency[l + 1].sum() == pytest.approx(pairs.sum() - inner)
    assert total == pytest.approx(2 * len(np.unique(np.sort(np.concatenate(
        [graph.faces[:, [0, 1]], graph.faces[:, [1, 2]], graph.faces[:, [2, 0]]]), 1), axis=0)))


def test_coarsening_invariants_on_grid():
    faces = _grid_faces(7)
    graph = build_mesh_graph(faces, levels=3, seed=3)
    _check_tree(graph, mesh_adjacency(faces))


def test_coarsening_is_deterministic_for_a_seed():
    faces = _grid_faces(7)
    a, b = build_mesh_graph(faces, levels=3, seed=5), build_mesh_graph(faces, levels=3, seed=5)
    for pa, pb in zip(a.perms, b.perms):
        np.testing.assert_array_equal(pa, pb)
    c = build_mesh_graph(faces, levels=3, seed=6)
    assert any(not np.array_equal(pa, pc) for pa, pc in zip(a.perms, c.perms))


def test_packaged_asset_equals_a_rebuild_and_satisfies_invariants(tmp_path):
    model = HandModel.load()
    shipped = load_mesh_graph()
    np.testing.assert_array_equal(shipped.faces, model.faces)
    rebuilt = build_mesh_graph(model.faces, levels=shipped.levels, seed=shipped.seed,
                               num_vertices=model.num_vertices)
    assert shipped.levels == 4 and shipped.num_vertices == 1305
    assert rebuilt.num_real == shipped.num_real
    for l in range(shipped.levels + 1):
        np.testing.assert_array_equal(rebuilt.perms[l], shipped.perms[l])
        assert abs(rebuilt.adjacency[l] - shipped.adjacency[l]).max() == 0 if rebuilt.adjacency[l].nnz else True
        assert rebuilt.lmax[l] == pytest.approx(shipped.lmax[l], rel=1e-9)
    _check_tree(shipped, mesh_adjacency(model.faces, model.num_vertices))
    # round trip through save/load
    path = str(tmp_path / "g.npz")
    rebuilt.save(path)
    again = MeshGraph.load(path)
    for l in range(again.levels + 1):
        np.testing.assert_array_equal(again.perms[l], rebuilt.perms[l])
        np.testing.assert_allclose(again.rescaled_laplacian(l).toarray(), rebuilt.rescaled_laplacian(l).toarray())
