"""Mesh graph, normalised graph Laplacian and its Chebyshev rescaling (Ge et al. section 4.2).

Legend: V vertices, F triangles, N graph nodes (V, or a coarse level's node count incl. fake nodes).

All matrices are ``scipy.sparse.csr_matrix`` float64 (converted to float32 only where TensorFlow uses them),
symmetric, without self-loops in W.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg


def mesh_edges(faces) -> np.ndarray:
    """Unique undirected edges of a triangle mesh.

    Args:
      faces: int [F, 3] vertex indices.
    Returns:
      int64 [E, 2] edges (i < j), sorted lexicographically.
    """
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
        raise ValueError(f"faces: expected an integer array [F, 3], found {faces.dtype} {faces.shape}")
    pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    pairs.sort(axis=1)
    if np.any(pairs[:, 0] == pairs[:, 1]):
        raise ValueError("faces: found a degenerate triangle (a repeated vertex index)")
    return np.unique(pairs, axis=0)


def mesh_adjacency(faces, num_vertices: int | None = None) -> scipy.sparse.csr_matrix:
    """W of the mesh graph: w_ij = 1 if (i, j) is a mesh edge, else 0. Returns csr [V, V] float64."""
    edges = mesh_edges(faces)
    n = int(edges.max()) + 1 if num_vertices is None else int(num_vertices)
    if edges.size and edges.max() >= n:
        raise ValueError(f"faces: index {edges.max()} out of range for num_vertices={n}")
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    return scipy.sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))


def normalized_laplacian(adjacency) -> scipy.sparse.csr_matrix:
    """L = I - D^-1/2 W D^-1/2 with D = diag(sum_j w_ij).

    An isolated node (degree 0, e.g. a fake node of the coarsening) gets L_ii = 1 and no off-diagonal
    entries: its D^-1/2 is taken as 0 rather than dividing by zero.
    """
    w = scipy.sparse.csr_matrix(adjacency, dtype=np.float64)
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"adjacency: expected a square matrix, found {w.shape}")
    if abs(w - w.T).max() > 1e-12 if w.nnz else False:
        raise ValueError("adjacency: expected a symmetric matrix")
    deg = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(deg)
    nz = deg > 0
    inv_sqrt[nz] = 1.0 / np.sqrt(deg[nz])
    d = scipy.sparse.diags(inv_sqrt)
    eye = scipy.sparse.identity(w.shape[0], dtype=np.float64, format="csr")
    return scipy.sparse.csr_matrix(eye - d @ w @ d)


def max_eigenvalue(laplacian) -> float:
    """Largest eigenvalue of a symmetric sparse matrix, by ARPACK (scipy.sparse.linalg.eigsh).

    Falls back to a dense eigen-solve for tiny matrices (ARPACK needs k < N - 1).
    """
    lap = scipy.sparse.csr_matrix(laplacian, dtype=np.float64)
    n = lap.shape[0]
    if n < 8:
        return float(np.linalg.eigvalsh(lap.toarray()).max())
    # A fixed start vector makes ARPACK deterministic (it otherwise draws a random one).
    v0 = np.ones(n) / np.sqrt(n) + 1e-3 * np.cos(np.arange(n))
    val = scipy.sparse.linalg.eigsh(lap, k=1, which="LA", return_eigenvectors=False, v0=v0, tol=1e-10)
    return float(val[0])


def rescaled_laplacian(laplacian, lmax: float | None = None) -> tuple[scipy.sparse.csr_matrix, float]:
    """L~ = 2 L / lambda_max - I (eigenvalues in [-1, 1]), lambda_max computed when not given.

    Returns:
      (L~ csr [N, N] float64, lambda_max).
    """
    lap = scipy.sparse.csr_matrix(laplacian, dtype=np.float64)
    lmax = max_eigenvalue(lap) if lmax is None else float(lmax)
    if not lmax > 0:
        raise ValueError(f"laplacian: expected a positive largest eigenvalue, found {lmax}")
    eye = scipy.sparse.identity(lap.shape[0], dtype=np.float64, format="csr")
    return scipy.sparse.csr_matrix(2.0 / lmax * lap - eye), lmax
