"""Graclus heavy-edge coarsening and the binary tree of Defferrard et al. (NeurIPS 2016), Ge et al. Fig. 5.

Legend: N_l real nodes of level l (N_0 = V mesh vertices), M_l = M_L * 2^(L - l) nodes of level l after
adding fake nodes (level L is the coarsest), L levels.

Algorithm (our implementation of the published description, not a port of their code):
- One Graclus level visits the nodes in an order (a seeded random permutation at level 0, then increasing
  degree, as Defferrard et al. do) and pairs each still-free node i with the free neighbour j maximising the
  normalised-cut gain w_ij (1/d_i + 1/d_j); a node with no free neighbour stays single. The coarse graph sums
  the weights between clusters (self-loops dropped).
- The binary tree: starting from the coarsest level (identity order), every coarse node is replaced by its two
  children, a single child getting a fake partner and a fake coarse node two fake children. Nodes are then
  numbered in that order at every level, so that node i of level l+1 has children 2i and 2i+1 of level l:
  upsampling is ``repeat(x, 2)`` and pooling is a max over consecutive pairs. Fake nodes have no edges.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse


def graclus_one_level(adjacency, order) -> np.ndarray:
    """Heavy-edge matching of one level.

    Args:
      adjacency: symmetric sparse [N, N] non-negative weights, no self-loops.
      order: int [N], the visiting order (a permutation of range(N)).
    Returns:
      int64 [N] cluster id of every node, clusters numbered 0.. in the order they were formed; each cluster
      holds one or two nodes joined by an edge.
    """
    w = scipy.sparse.csr_matrix(adjacency, dtype=np.float64)
    w.sort_indices()  # ties go to the lowest neighbour index: deterministic
    n = w.shape[0]
    order = np.asarray(order)
    if sorted(order.tolist()) != list(range(n)):
        raise ValueError(f"order: expected a permutation of range({n})")
    deg = np.asarray(w.sum(axis=1)).ravel()
    cluster = np.full(n, -1, np.int64)
    next_id = 0
    indptr, indices, data = w.indptr, w.indices, w.data
    for i in order:
        if cluster[i] >= 0:
            continue
        best, best_gain = -1, -np.inf
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            if j == i or cluster[j] >= 0 or data[k] <= 0:
                continue
            gain = data[k] * (1.0 / deg[i] + 1.0 / deg[j])
            if gain > best_gain:
                best, best_gain = j, gain
        cluster[i] = next_id
        if best >= 0:
            cluster[best] = next_id
        next_id += 1
    return cluster


def coarse_adjacency(adjacency, cluster) -> scipy.sparse.csr_matrix:
    """W_c = P^T W P without its diagonal (P [N, C] the 0/1 cluster membership). Returns csr [C, C]."""
    w = scipy.sparse.csr_matrix(adjacency, dtype=np.float64)
    n = w.shape[0]
    c = int(cluster.max()) + 1
    p = scipy.sparse.csr_matrix((np.ones(n), (np.arange(n), cluster)), shape=(n, c))
    wc = scipy.sparse.lil_matrix(p.T @ w @ p)
    wc.setdiag(0)
    wc = scipy.sparse.csr_matrix(wc)
    wc.eliminate_zeros()
    return wc


def coarsen(adjacency, levels: int, seed: int = 0):
    """Multilevel Graclus coarsening.

    Returns:
      (adjacencies, clusters): ``levels + 1`` csr matrices W_0..W_L of the real nodes, and ``levels`` int64
      arrays, clusters[l][i] = the level-(l+1) parent of level-l node i.
    """
    if levels < 1:
        raise ValueError(f"levels: expected >= 1, found {levels}")
    rng = np.random.default_rng(seed)
    graphs = [scipy.sparse.csr_matrix(adjacency, dtype=np.float64)]
    clusters = []
    for level in range(levels):
        w = graphs[-1]
        if level == 0:
            order = rng.permutation(w.shape[0])
        else:
            order = np.argsort(np.asarray(w.sum(axis=1)).ravel(), kind="stable")
        cl = graclus_one_level(w, order)
        clusters.append(cl)
        graphs.append(coarse_adjacency(w, cl))
    return graphs, clusters


def tree_permutations(clusters, num_nodes) -> list[np.ndarray]:
    """Node orders of every level with fake nodes (see the module docstring).

    Args:
      clusters: list of L int arrays from :func:`coarsen`.
      num_nodes: list of L + 1 real node counts N_0..N_L.
    Returns:
      L + 1 int64 arrays; perms[l] [M_l] lists level-l node ids in tree order, ids >= N_l being fake.
      perms[l][2i] and perms[l][2i+1] are the children of perms[l+1][i].
    """
    levels = len(clusters)
    perms = [None] * (levels + 1)
    perms[levels] = np.arange(num_nodes[levels], dtype=np.int64)
    for level in range(levels - 1, -1, -1):
        n_fine, n_coarse = num_nodes[level], num_nodes[level + 1]
        children = [[] for _ in range(n_coarse)]
        for node, parent in enumerate(clusters[level]):
            children[parent].append(node)
        fake = n_fine
        order = []
        for parent in perms[level + 1]:
            kids = children[parent] if parent < n_coarse else []
            if len(kids) > 2:
                raise AssertionError(f"level {level}: cluster {parent} has {len(kids)} children")
            kids = sorted(kids)
            while len(kids) < 2:
                kids.append(fake)
                fake += 1
            order.extend(kids)
        perms[level] = np.asarray(order, np.int64)
    return perms


def permute_adjacency(adjacency, perm) -> scipy.sparse.csr_matrix:
    """W' [M, M] with W'[a, b] = W[perm[a], perm[b]] for real nodes and no edges at fake ones (perm >= N)."""
    w = scipy.sparse.coo_matrix(adjacency)
    n = w.shape[0]
    m = len(perm)
    position = np.full(n, -1, np.int64)
    real = perm < n
    position[perm[real]] = np.nonzero(real)[0]
    if np.any(position < 0):
        raise ValueError("perm: expected every real node to appear once")
    return scipy.sparse.csr_matrix((w.data, (position[w.row], position[w.col])), shape=(m, m))
