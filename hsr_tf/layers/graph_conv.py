"""Graph layers of the RGB mesh network (Ge et al. section 4.2): Chebyshev convolution, tree up/down-sampling.

Legend: B batch, M graph nodes of the layer's level (incl. fake nodes), F_in / F_out features, K Chebyshev order.

The graph comes either from the packaged coarsened hand-mesh graph (``level`` l of
:func:`hsr_tf.graph.load_mesh_graph`, or of ``graph_path``) or, for tests and other graphs, from an explicit
rescaled Laplacian ``laplacian={"indices": [[r, c], ...], "values": [...], "num_nodes": M}`` kept in the config.
Node 2i and 2i+1 of a level are the children of node i of the next coarser level (see hsr_tf.graph.coarsening),
so ``GraphUpsample`` repeats every node twice per level and ``GraphMaxPool`` takes the max over consecutive pairs.
"""
from __future__ import annotations

import keras
import numpy as np
import scipy.sparse
import tensorflow as tf

from hsr_tf.graph import load_mesh_graph


def _laplacian_spec(laplacian) -> dict:
    """A scipy sparse matrix or a spec dict -> {"indices", "values", "num_nodes"} (sorted, float32 values)."""
    if isinstance(laplacian, dict):
        return {"indices": [list(map(int, ij)) for ij in laplacian["indices"]],
                "values": [float(v) for v in laplacian["values"]], "num_nodes": int(laplacian["num_nodes"])}
    coo = scipy.sparse.coo_matrix(laplacian)
    if coo.shape[0] != coo.shape[1]:
        raise ValueError(f"laplacian: expected a square matrix, found {coo.shape}")
    order = np.lexsort((coo.col, coo.row))
    return {"indices": np.stack([coo.row[order], coo.col[order]], 1).tolist(),
            "values": coo.data[order].astype(np.float32).tolist(), "num_nodes": int(coo.shape[0])}


def _graph_laplacian(level, graph_path):
    graph = load_mesh_graph(graph_path)
    if not 0 <= level <= graph.levels:
        raise ValueError(f"level: expected 0..{graph.levels}, found {level}")
    coo = scipy.sparse.coo_matrix(graph.rescaled_laplacian(level))
    order = np.lexsort((coo.col, coo.row))
    return np.stack([coo.row[order], coo.col[order]], 1).astype(np.int64), coo.data[order].astype(np.float32), \
        graph.num_nodes(level)


@keras.saving.register_keras_serializable(package="hsr_tf")
class ChebConv(keras.layers.Layer):
    """Chebyshev spectral graph convolution, Eq. (1): f_out = sum_k T_k(L~) f_in theta_k + bias.

    T_0 f = f, T_1 f = L~ f, T_k f = 2 L~ T_{k-1} f - T_{k-2} f (the recurrence, on sparse L~).

    Args:
      filters: F_out.
      K: number of Chebyshev terms T_0..T_{K-1} (paper: 3, a degree-2 polynomial of L~: 2-hop support).
      level: coarsening level of the packaged mesh graph (0 = the mesh with fake nodes).
      graph_path: mesh-graph .npz (None = packaged).
      laplacian: explicit rescaled Laplacian (scipy sparse or spec dict); overrides level/graph_path.
      use_bias: add a bias per output feature.

    Call: ``x [B, M, F_in]`` -> ``[B, M, F_out]``.

    Implementation (speed, same maths): the batch is laid out node-major, [M, B * F], so every L~ product is
    one CSR sparse x dense matmul (``SparseMatrixMatMul``) over the whole batch; its gradient reuses L~^T (= L~).
    With F_out < F_in the kernel is applied first and sum_k T_k(L~) y_k is summed by Clenshaw's recurrence on
    width F_out. Under a half-precision policy the L~ products run in float32 (SparseMatrixMatMul has no
    bfloat16/float16 kernel) and the dense matmul in the compute dtype. No XLA (``supports_jit = False``).
    """

    def __init__(self, filters, K=3, level=0, graph_path=None, laplacian=None, use_bias=True,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters, self.K, self.level = int(filters), int(K), int(level)
        if self.K < 1:
            raise ValueError(f"K: expected >= 1, found {K}")
        self.graph_path = graph_path
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._lap_spec = None if laplacian is None else _laplacian_spec(laplacian)
        if self._lap_spec is not None:
            idx = np.asarray(self._lap_spec["indices"], np.int64).reshape(-1, 2)
            vals = np.asarray(self._lap_spec["values"], np.float32)
            self.num_nodes = self._lap_spec["num_nodes"]
        else:
            idx, vals, self.num_nodes = _graph_laplacian(self.level, graph_path)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_nodes):
            raise ValueError(f"laplacian: expected indices in [0, {self.num_nodes}), found [{idx.min()}, {idx.max()}]")
        if len(idx) != len(vals):
            raise ValueError(f"laplacian: expected one value per index pair, found {len(vals)} values for "
                             f"{len(idx)} pairs")
        order = np.lexsort((idx[:, 1], idx[:, 0]))  # CSR conversion wants row-major order (a spec may not be)
        idx, vals = idx[order], vals[order]
        # A (row, col) given twice is summed, as tf.sparse.sparse_dense_matmul did (the CSR conversion sums too).
        self._lap_indices, self._lap_values = idx, vals
        # L~^T for the gradient of L~ z (equal to L~ for an undirected graph; an explicit operator may not be).
        lap_t = scipy.sparse.coo_matrix((vals, (idx[:, 0], idx[:, 1])), shape=(self.num_nodes,) * 2).T.tocoo()
        order = np.lexsort((lap_t.col, lap_t.row))
        self._lap_t_indices = np.stack([lap_t.row[order], lap_t.col[order]], 1).astype(np.int64).reshape(-1, 2)
        self._lap_t_values = lap_t.data[order].astype(np.float32)
        # SparseMatrixMatMul has no XLA kernel.
        self.supports_jit = False

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] != self.num_nodes or input_shape[2] is None:
            raise ValueError(f"{self.name}: x: expected [B, {self.num_nodes}, F_in], found {tuple(input_shape)}")
        f_in = int(input_shape[2])
        # Glorot over (K * F_in) fan-in, as one dense layer on the stacked T_k f would have.
        self.kernel = self.add_weight(name="kernel", shape=(self.K * f_in, self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None
        self.f_in = f_in

    @property
    def laplacian_nnz(self) -> int:
        """Stored entries of L~ (its sparse products cost ~2 nnz multiply-adds per column)."""
        return len(self._lap_values)

    def _sparse_dtype(self):
        # SparseMatrixMatMul has float32/float64 CPU and GPU kernels only: half-precision policies run the
        # recurrence in float32 (also keeps L~'s values exact instead of rounding them to 8 mantissa bits).
        return tf.float64 if self.compute_dtype == "float64" else tf.float32

    def _product(self):
        """z [M, C] -> L~ z [M, C] (CSR sparse x dense), with the gradient L~^T dy by the same kernel."""
        m, dt = self.num_nodes, self._sparse_dtype()

        def csr(indices, values):
            return tf.raw_ops.SparseTensorToCSRSparseMatrix(indices=indices, values=tf.constant(values, dt),
                                                            dense_shape=tf.constant([m, m], tf.int64))

        lap = csr(self._lap_indices, self._lap_values)

        def grad(dy):
            # L~^T dy by the plain (non-adjoint) kernel: TF's registered gradient takes the adjoint path. The CSR
            # is built here, not captured: a SavedModel cannot serialise a gradient function capturing a variant.
            return tf.raw_ops.SparseMatrixMatMul(a=csr(self._lap_t_indices, self._lap_t_values), b=dy)

        @tf.custom_gradient
        def product(z):
            return tf.raw_ops.SparseMatrixMatMul(a=lap, b=z), grad

        return product

    def call(self, x):
        x = tf.convert_to_tensor(x)
        if x.shape.rank != 3 or x.shape[1] != self.num_nodes or x.shape[2] != self.f_in:
            raise ValueError(f"{self.name}: x: expected [B, {self.num_nodes}, {self.f_in}], found {tuple(x.shape)}")
        m, f_in, f_out, k_terms = self.num_nodes, self.f_in, self.filters, self.K
        dt, sdt = x.dtype, self._sparse_dtype()
        kernel = tf.cast(self.kernel, dt)
        product = self._product()
        # Node-major [M, B * F] so every L~ product is one CSR x dense matmul over the whole batch; the
        # [B, M, F] <-> [M, B, F] transposes move F-long rows (the old [M, F, B] layout moved single scalars).
        xn = tf.reshape(tf.transpose(x, [1, 0, 2]), [-1, f_in])                  # [M B, F_in]
        thetas = [kernel[i * f_in:(i + 1) * f_in] for i in range(k_terms)]       # K x [F_in, F_out], k-major rows
        # Mostly one matmul per theta_k, summed, rather than one on the concatenated T_k x: the concat's copy
        # cost as much as the matmul (WORKSPACE_NOTES.md, session 2026-12-05, "Graph convolution speed").
        if f_out < f_in:
            # Transform first, then Clenshaw: sum_k T_k(L~) y_k with y_k = x theta_k costs K - 1 products of
            # width F_out: b_k = y_k + 2 L~ b_{k+1} - b_{k+2} (k = K-1..1), result = y_0 + L~ b_1 - b_2.
            ys = [tf.reshape(tf.cast(tf.matmul(xn, theta), sdt), [m, -1]) for theta in thetas]  # [M, B F_out]
            b1, b2 = ys[-1], tf.zeros_like(ys[0])
            for i in range(k_terms - 2, 0, -1):
                b1, b2 = ys[i] + 2.0 * product(b1) - b2, b1
            out = tf.cast(ys[0] if k_terms == 1 else ys[0] + product(b1) - b2, dt)
        else:
            # Recurrence first on width F_in: T_0 x = x, T_1 x = L~ x, T_k x = 2 L~ T_{k-1} x - T_{k-2} x.
            terms = [tf.reshape(tf.cast(xn, sdt), [m, -1])]                       # [M, B F_in]
            if k_terms > 1:
                terms.append(product(terms[0]))
            for _ in range(2, k_terms):
                terms.append(2.0 * product(terms[-1]) - terms[-2])
            terms = [tf.reshape(tf.cast(term, dt), [-1, f_in]) for term in terms]  # K x [M B, F_in]
            if f_in < f_out:
                # Narrow input (3 -> 32): concatenating K F_in columns is cheaper than summing K F_out-wide
                # products (L0 3 -> 32 at B = 32, fwd+bwd: 8.3 vs 11.4 ms; equal widths: the sum wins).
                out = tf.matmul(tf.concat(terms, -1), kernel)                      # [M B, F_out]
            else:
                out = tf.add_n([tf.matmul(term, theta) for term, theta in zip(terms, thetas)])
        out = tf.reshape(out, [m, -1, f_out])
        y = tf.transpose(out, [1, 0, 2])
        if self.bias is not None:
            y = y + tf.cast(self.bias, y.dtype)
        return y

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_nodes, self.filters)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, K=self.K, level=self.level, graph_path=self.graph_path,
                   laplacian=self._lap_spec, use_bias=self.use_bias,
                   kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return cfg


@keras.saving.register_keras_serializable(package="hsr_tf")
class GraphUpsample(keras.layers.Layer):
    """Nearest-neighbour upsampling over the tree: every node copied to its 2^levels children.

    Call: ``x [B, M, F]`` -> ``[B, M * 2^levels, F]``.
    """

    def __init__(self, levels=1, **kwargs):
        super().__init__(**kwargs)
        self.levels = int(levels)
        if self.levels < 1:
            raise ValueError(f"levels: expected >= 1, found {levels}")

    def call(self, x):
        if len(x.shape) != 3:
            raise ValueError(f"{self.name}: x: expected [B, M, F], found {tuple(x.shape)}")
        return tf.repeat(x, 2 ** self.levels, axis=1)

    def compute_output_shape(self, input_shape):
        m = None if input_shape[1] is None else input_shape[1] * 2 ** self.levels
        return (input_shape[0], m, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "levels": self.levels}


@keras.saving.register_keras_serializable(package="hsr_tf")
class GraphMaxPool(keras.layers.Layer):
    """Max over the 2^levels descendants of each coarse node.

    With ``real_mask`` (bool [M] of the input level, e.g. ``MeshGraph.real_mask(l)``) fake nodes are left out
    of the max -- they carry no mesh signal -- and a coarse node with only fake descendants gets 0.

    Call: ``x [B, M, F]`` -> ``[B, M / 2^levels, F]``.
    """

    def __init__(self, levels=1, real_mask=None, **kwargs):
        super().__init__(**kwargs)
        self.levels = int(levels)
        if self.levels < 1:
            raise ValueError(f"levels: expected >= 1, found {levels}")
        self.real_mask = None if real_mask is None else [bool(v) for v in np.asarray(real_mask).ravel()]
        if self.real_mask is not None and len(self.real_mask) % 2 ** self.levels:
            raise ValueError(f"real_mask: expected a multiple of {2 ** self.levels} nodes, found "
                             f"{len(self.real_mask)}")

    def call(self, x):
        if len(x.shape) != 3 or x.shape[1] is None or x.shape[1] % 2 ** self.levels:
            raise ValueError(f"{self.name}: x: expected [B, M, F] with M a multiple of {2 ** self.levels}, "
                             f"found {tuple(x.shape)}")
        m, f, g = x.shape[1], x.shape[2], 2 ** self.levels
        groups = tf.reshape(x, [-1, m // g, g, f])
        if self.real_mask is None:
            return tf.reduce_max(groups, axis=2)
        if len(self.real_mask) != m:
            raise ValueError(f"{self.name}: x: expected {len(self.real_mask)} nodes (real_mask), found {m}")
        # Fake nodes get -inf added (an add's gradient is free; a where over the whole input cost ~1.5 x more
        # forward + backward, benchmarks/graph_conv.py); all-fake groups (max -inf) are then set to 0.
        mask = np.asarray(self.real_mask).reshape(1, m // g, g, 1)
        penalty = tf.constant(np.where(mask, 0.0, -np.inf), x.dtype)
        pooled = tf.reduce_max(groups + penalty, axis=2)
        any_real = tf.constant(mask.any(axis=2))
        return tf.where(any_real, pooled, tf.zeros_like(pooled))

    def compute_output_shape(self, input_shape):
        m = None if input_shape[1] is None else input_shape[1] // 2 ** self.levels
        return (input_shape[0], m, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "levels": self.levels, "real_mask": self.real_mask}


@keras.saving.register_keras_serializable(package="hsr_tf")
class ToGraphNodes(keras.layers.Layer):
    """Mesh vertices in vertex order -> level-0 graph nodes in tree order (fake nodes = 0).

    Call: ``x [B, V, F]`` -> ``[B, M_0, F]``.
    """

    def __init__(self, graph_path=None, **kwargs):
        super().__init__(**kwargs)
        self.graph_path = graph_path
        graph = load_mesh_graph(graph_path)
        self.num_vertices, self.num_nodes = graph.num_vertices, graph.num_nodes(0)
        perm = graph.perms[0]
        # index into [x, 0]: a real node reads its vertex, a fake node the appended zero row.
        self._gather = np.where(perm < self.num_vertices, perm, self.num_vertices).astype(np.int32)

    def call(self, x):
        if len(x.shape) != 3 or x.shape[1] != self.num_vertices:
            raise ValueError(f"{self.name}: x: expected [B, {self.num_vertices}, F], found {tuple(x.shape)}")
        padded = tf.concat([x, tf.zeros_like(x[:, :1])], axis=1)
        return tf.gather(padded, self._gather, axis=1)

    def get_config(self):
        return {**super().get_config(), "graph_path": self.graph_path}


@keras.saving.register_keras_serializable(package="hsr_tf")
class FromGraphNodes(keras.layers.Layer):
    """Level-0 graph nodes in tree order -> mesh vertices in vertex order (fake nodes dropped).

    Call: ``x [B, M_0, F]`` -> ``[B, V, F]``.
    """

    def __init__(self, graph_path=None, **kwargs):
        super().__init__(**kwargs)
        self.graph_path = graph_path
        graph = load_mesh_graph(graph_path)
        self.num_nodes = graph.num_nodes(0)
        self._gather = graph.vertex_positions().astype(np.int32)

    def call(self, x):
        if len(x.shape) != 3 or x.shape[1] != self.num_nodes:
            raise ValueError(f"{self.name}: x: expected [B, {self.num_nodes}, F], found {tuple(x.shape)}")
        return tf.gather(x, self._gather, axis=1)

    def get_config(self):
        return {**super().get_config(), "graph_path": self.graph_path}
