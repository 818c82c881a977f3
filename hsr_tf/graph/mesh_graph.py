"""The coarsened hand-mesh graph used by the RGB mesh network, and its packaged asset.

Legend: V mesh vertices (1305), L coarsening levels (4), M_l nodes of level l incl. fake nodes
(M_l = M_L * 2^(L - l)), N_l real nodes of level l, F features.

``MeshGraph`` holds, per level l = 0 (the mesh) .. L (the coarsest): the node order ``perms[l]`` (ids >= N_l
are fake nodes), the permuted weighted adjacency W'_l [M_l, M_l] and lambda_max of its normalised Laplacian.
Node 2i and 2i+1 of level l are the children of node i of level l+1. The asset
``hsr_tf/assets/mesh_graph.npz`` is written by ``python -m data_prep.build_mesh_graph`` and must equal
``build_mesh_graph(HandModel.load().faces)`` (tested).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os

import numpy as np
import scipy.sparse

from hsr_tf.graph import coarsening, laplacian


def default_asset_path() -> str:
    """Filesystem path of the packaged ``hsr_tf/assets/mesh_graph.npz``."""
    return str(importlib.resources.files("hsr_tf") / "assets" / "mesh_graph.npz")


@dataclasses.dataclass(eq=False)
class MeshGraph:
    """Coarsening tree of a mesh graph (see the module docstring)."""

    faces: np.ndarray                       # int32 [F, 3]
    perms: list                             # L + 1 int64 [M_l]
    num_real: list                          # L + 1 ints N_l
    adjacency: list                         # L + 1 csr [M_l, M_l]
    lmax: list                              # L + 1 floats
    seed: int = 0

    @property
    def levels(self) -> int:
        return len(self.perms) - 1

    @property
    def num_vertices(self) -> int:
        return int(self.num_real[0])

    def num_nodes(self, level: int) -> int:
        """M_l, nodes of ``level`` including fake ones."""
        return int(len(self.perms[level]))

    def real_mask(self, level: int) -> np.ndarray:
        """bool [M_l]: True at real nodes of ``level``."""
        return self.perms[level] < self.num_real[level]

    def rescaled_laplacian(self, level: int) -> scipy.sparse.csr_matrix:
        """L~_l = 2 L_l / lambda_max - I of the permuted level graph, csr [M_l, M_l] float64."""
        lap = laplacian.normalized_laplacian(self.adjacency[level])
        return laplacian.rescaled_laplacian(lap, self.lmax[level])[0]

    def vertex_positions(self) -> np.ndarray:
        """int64 [V]: position of mesh vertex v in the level-0 node order (to gather the real vertices)."""
        perm = self.perms[0]
        pos = np.empty(self.num_vertices, np.int64)
        real = perm < self.num_vertices
        pos[perm[real]] = np.nonzero(real)[0]
        return pos

    def summary(self) -> str:
        parts = [f"level {l}: {self.num_real[l]} real + {self.num_nodes(l) - self.num_real[l]} fake"
                 for l in range(self.levels + 1)]
        return "; ".join(parts)

    # ------------------------------------------------------------------ I/O
    def save(self, path: str) -> None:
        """Write to an uncompressed .npz (temp name + rename)."""
        payload = {"faces": np.asarray(self.faces, np.int32), "levels": np.int64(self.levels),
                   "seed": np.int64(self.seed), "num_real": np.asarray(self.num_real, np.int64),
                   "lmax": np.asarray(self.lmax, np.float64)}
        for l in range(self.levels + 1):
            coo = scipy.sparse.coo_matrix(self.adjacency[l])
            order = np.lexsort((coo.col, coo.row))
            payload[f"perm_{l}"] = self.perms[l]
            payload[f"adj_rows_{l}"] = coo.row[order].astype(np.int64)
            payload[f"adj_cols_{l}"] = coo.col[order].astype(np.int64)
            payload[f"adj_vals_{l}"] = coo.data[order].astype(np.float64)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **payload)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | None = None) -> "MeshGraph":
        """Read a graph written by :meth:`save` (the packaged asset when ``path`` is None)."""
        resolved = default_asset_path() if path is None else os.fspath(path)
        if not os.path.isfile(resolved):
            raise FileNotFoundError(f"mesh graph: expected an .npz at {resolved!r}, found nothing (build it with "
                                    "`python -m data_prep.build_mesh_graph`)")
        with np.load(resolved, allow_pickle=False) as d:
            try:
                levels = int(d["levels"])
                perms, adj = [], []
                for l in range(levels + 1):
                    perm = d[f"perm_{l}"].astype(np.int64)
                    m = len(perm)
                    perms.append(perm)
                    adj.append(scipy.sparse.csr_matrix(
                        (d[f"adj_vals_{l}"], (d[f"adj_rows_{l}"], d[f"adj_cols_{l}"])), shape=(m, m)))
                return cls(faces=d["faces"], perms=perms, num_real=[int(x) for x in d["num_real"]],
                           adjacency=adj, lmax=[float(x) for x in d["lmax"]], seed=int(d["seed"]))
            except KeyError as err:
                raise ValueError(f"mesh graph {resolved!r}: field {err} missing") from err


def build_mesh_graph(faces, levels: int = 4, seed: int = 0, num_vertices: int | None = None) -> MeshGraph:
    """Mesh graph of ``faces`` (w_ij = 1 on edges), Graclus-coarsened ``levels`` times, with the binary tree."""
    w0 = laplacian.mesh_adjacency(faces, num_vertices)
    graphs, clusters = coarsening.coarsen(w0, levels, seed)
    num_real = [g.shape[0] for g in graphs]
    perms = coarsening.tree_permutations(clusters, num_real)
    adj = [coarsening.permute_adjacency(g, p) for g, p in zip(graphs, perms)]
    lmax = [laplacian.max_eigenvalue(laplacian.normalized_laplacian(a)) for a in adj]
    return MeshGraph(faces=np.asarray(faces, np.int32), perms=perms, num_real=num_real, adjacency=adj, lmax=lmax,
                     seed=seed)


@functools.lru_cache(maxsize=4)
def load_mesh_graph(path: str | None = None) -> MeshGraph:
    """Cached :meth:`MeshGraph.load` (the packaged asset for None). Do not mutate the result."""
    return MeshGraph.load(path)
