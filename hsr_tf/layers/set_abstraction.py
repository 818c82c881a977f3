"""PointNet++ set-abstraction layers (Qi et al. 2017; Hand PointNet / Point-to-Point variants).

Legend: B batch, N input points, M centroids (``npoint``), S neighbours per centroid (``nsample``),
C input feature channels, C' output channels (``mlp[-1]``). Coordinates are float32 in whatever unit the
caller uses (the depth model feeds normalised units; ``radius`` is in the same unit).

``SetAbstraction``: sample M centroids (FPS from index 0, or the first M points when the cloud is already
FPS-ordered, as Hand PointNet does), group S neighbours per centroid (ball query, or kNN limited to the
radius where out-of-ball neighbours are replaced by the centroid itself, as Hand PointNet does), express
neighbour coordinates relative to the centroid (optionally divided by the radius), concatenate the
neighbours' features, apply a shared MLP (1x1 Conv2D without bias, BatchNorm, ReLU per layer) and
max-pool over the S neighbours.

``GlobalSetAbstraction``: the same shared MLP over all N points (absolute coordinates, optionally
concatenated with features) and a max-pool over N, giving ``[B, C']`` (no singleton centroid axis).

Both call ops from :mod:`hsr_tf.ops`; with the compiled backend they cannot be XLA-compiled, so
``supports_jit`` is False then (it is True with the pure-TF fallback).

Precision: both levels are float32 layers (the ops take float32 coordinates and features); only the shared
MLP follows the global mixed-precision policy (:mod:`hsr_tf.precision`): its input is cast to the policy's
compute dtype and its pooled output back to float32.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from hsr_tf import ops
from hsr_tf import precision
from hsr_tf.ops import mlp_train
from hsr_tf.layers import training_path


def _check_mlp(mlp, cls: str):
    if not isinstance(mlp, (list, tuple)) or not mlp or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in mlp):
        raise ValueError(f"{cls}: mlp must be a non-empty list of positive ints, found {mlp!r}")
    return [int(c) for c in mlp]


def _check_inputs(xyz, features, cls: str):
    xyz = tf.convert_to_tensor(xyz, tf.float32)
    if xyz.shape.rank != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{cls}: xyz must have shape [B,N,3], found {xyz.shape}")
    if features is not None:
        features = tf.convert_to_tensor(features, tf.float32)
        if features.shape.rank != 3:
            raise ValueError(f"{cls}: features must have shape [B,N,C], found {features.shape}")
        if xyz.shape[1] is not None and features.shape[1] is not None and xyz.shape[1] != features.shape[1]:
            raise ValueError(f"{cls}: features must have the same N as xyz ({xyz.shape[1]}), "
                             f"found {features.shape[1]}")
    return xyz, features


#: Rows (neighbours x centroids) per chunk of the pooled inference path: the activations of one chunk
#: (2048 x 256 float32 = 2 MiB at the widest layer) stay in the CPU caches between layers.
INFERENCE_CHUNK_ROWS = 2048


class _SharedMLP(keras.layers.Layer):
    """1x1 Conv2D (no bias) + BatchNorm + ReLU per width in ``mlp``; input/output [B,M,S,C].

    Training runs the layers as written (batch statistics); inference folds each BatchNorm into its
    convolution (:meth:`_folded_inference`), which computes the same function. :meth:`pooled` adds the
    max over the S axis; at inference it runs the folded layers chunk by chunk (``chunk_rows``).
    """

    def __init__(self, mlp, chunk_rows=INFERENCE_CHUNK_ROWS, **kwargs):
        super().__init__(**kwargs)
        self.mlp = list(mlp)
        self.chunk_rows = int(chunk_rows)
        self.convs = [keras.layers.Conv2D(c, 1, use_bias=False, name=f"conv{i}") for i, c in enumerate(self.mlp)]
        self.bns = [keras.layers.BatchNormalization(name=f"bn{i}") for i in range(len(self.mlp))]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, bn in zip(self.convs, self.bns):
            conv.build(shape)
            shape = shape[:-1] + (conv.filters,)
            bn.build(shape)

    def call(self, x, training=None):
        if not training:
            return self._folded_inference(x)
        for conv, bn in zip(self.convs, self.bns):
            x = tf.nn.relu(bn(conv(x), training=training))
        return x

    def _folded_weights(self, dtype):
        """[(kernel [C_in, C_out], bias [C_out])] per layer with the BatchNorm folded in.

        With moving statistics (mu, var), gamma, beta: W' = W * g and b' = beta - mu * g, g = gamma /
        sqrt(var + eps): relu(x W' + b') is conv -> BN(inference) -> ReLU.
        """
        folded = []
        for conv, bn in zip(self.convs, self.bns):
            gain = tf.math.rsqrt(bn.moving_variance + bn.epsilon)
            if bn.scale:
                gain = gain * bn.gamma
            bias = -bn.moving_mean * gain
            if bn.center:
                bias = bias + bn.beta
            folded.append((tf.cast(conv.kernel[0, 0] * gain, dtype), tf.cast(bias, dtype)))
        return folded

    @staticmethod
    def _apply_folded(h, folded):
        for kernel, bias in folded:
            h = tf.nn.relu(tf.nn.bias_add(tf.matmul(h, kernel), bias))
        return h

    def _folded_inference(self, x):
        """Inference with each BatchNorm folded into its 1x1 convolution: one fused MatMul+BiasAdd+ReLU
        pass per layer over the [B*M*S, C] activations instead of four element-wise passes."""
        lead = tf.shape(x)[:-1]
        h = self._apply_folded(tf.reshape(x, [-1, x.shape[-1]]), self._folded_weights(x.dtype))
        out = tf.reshape(h, tf.concat([lead, [self.mlp[-1]]], axis=0))
        out.set_shape(x.shape[:-1].concatenate([self.mlp[-1]]))
        return out

    def pooled(self, x, training=None):
        """max over S of the MLP output: ``x [B,M,S,C]`` -> ``[B,M,mlp[-1]]``.

        At inference the B*M neighbourhoods are processed in chunks of ``chunk_rows // S`` (at least one)
        so that every layer's activations of a chunk stay in cache instead of streaming [B*M*S, C]
        tensors (up to 512 MiB for the paper-size first level at B = 32) through memory between layers;
        measured 2-3x faster on a 2-core CPU (WORKSPACE_NOTES.md). ``chunk_rows = 0`` disables it.
        The input is cast to the layer's compute dtype (bfloat16/float16 under a mixed policy), the result
        is float32.
        """
        x = tf.cast(x, self.compute_dtype)
        s = x.shape[2]
        if training and s is not None and self.fast_training_on():
            return self.pooled_train_fast(x)
        if training or not self.chunk_rows or s is None:
            return tf.cast(tf.reduce_max(self(x, training=training), axis=2), tf.float32)
        folded = self._folded_weights(x.dtype)
        c_in, c_out = x.shape[-1], self.mlp[-1]
        lead = tf.shape(x)[:2]
        groups = tf.reshape(x, [-1, s, c_in])  # [G = B*M, S, C]
        num_groups = tf.shape(groups)[0]
        # Never more groups per chunk than there are (a B = 1 global level is one group: no padding).
        per_chunk = tf.minimum(max(1, self.chunk_rows // int(s)), num_groups)
        num_chunks = (num_groups + per_chunk - 1) // per_chunk
        groups = tf.pad(groups, [[0, num_chunks * per_chunk - num_groups], [0, 0], [0, 0]])
        chunks = tf.reshape(groups, [num_chunks, per_chunk * s, c_in])

        def one_chunk(rows):
            h = self._apply_folded(rows, folded)
            return tf.reduce_max(tf.reshape(h, [per_chunk, s, c_out]), axis=1)

        # Two chunks in flight keep both cores of a small CPU busy between the matmuls (graphs only: eager
        # map_fn runs one at a time and warns about the setting).
        pooled = tf.map_fn(one_chunk, chunks, fn_output_signature=tf.TensorSpec([None, c_out], x.dtype),
                           parallel_iterations=None if tf.executing_eagerly() else 2)
        pooled = tf.reshape(pooled, [-1, c_out])[:num_groups]
        out = tf.reshape(pooled, tf.concat([lead, [c_out]], axis=0))
        out.set_shape(x.shape[:2].concatenate([c_out]))
        return tf.cast(out, tf.float32)

    def fast_training_on(self) -> bool:
        """Whether training uses :meth:`pooled_train_fast` (the switch is on and every BatchNorm trains)."""
        # BatchNorms synchronised across tf.distribute replicas need Keras' all-reduced moments: not fused.
        return training_path.current().fused_batch_norm and all(bn.trainable and not bn.synchronized
                                                                for bn in self.bns)

    def pooled_train_fast(self, x=None, first=None, row_splits=None, weights=None):
        """Training-mode ``pooled`` through the fused path of :mod:`hsr_tf.layers.training_path`.

        Args:
          x: [B, M, S, C_in] input rows, or [R, C_in] rows of ragged groups; or None when ``first`` is given.
          first: [B, M, S, mlp[0]] or [R, mlp[0]]: the first layer's convolution output (computed by the
            caller, e.g. projected before grouping), or None.
          row_splits, weights: with [R, ...] rows: int32 [G+1] group boundaries and float32 [R] multiplicities
            (:func:`training_path.unique_ball_rows`; fused kernels only).
        Returns:
          float32 max over each group of the MLP output with batch statistics (as ``pooled``):
          [B, M, mlp[-1]], or [G, mlp[-1]] for ragged groups.
        """
        src = x if first is None else first
        ragged = row_splits is not None
        rows = None if x is None else tf.reshape(x, [-1, x.shape[-1]])
        if first is not None:
            first = tf.reshape(first, [-1, first.shape[-1]])
        h = training_path.shared_mlp_train(
            [conv.kernel[0, 0] for conv in self.convs], self.bns, self.compute_dtype, rows=rows, first=first,
            group_size=None if ragged else int(src.shape[2]), row_splits=row_splits, weights=weights)
        if ragged:
            return tf.cast(h, tf.float32)
        # The last layer's output is already pooled: [B*M, mlp[-1]].
        out = tf.reshape(h, tf.concat([tf.shape(src)[:2], [self.mlp[-1]]], axis=0))
        out.set_shape(src.shape[:2].concatenate([self.mlp[-1]]))
        return tf.cast(out, tf.float32)

    def get_config(self):
        return {**super().get_config(), "mlp": self.mlp, "chunk_rows": self.chunk_rows}


@keras.saving.register_keras_serializable(package="hsr_tf")
class SetAbstraction(keras.layers.Layer):
    """One PointNet++ set-abstraction level.

    Args:
      npoint: M, number of centroids (int >= 1, <= N).
      radius: grouping radius (float > 0), in the units of ``xyz``.
      nsample: S, neighbours per centroid (int >= 1; for ``grouping='knn'`` S <= N).
      mlp: output widths of the shared MLP, e.g. ``[64, 64, 128]``.
      sampling: ``'fps'`` (farthest point sampling from index 0) or ``'first'`` (the first M points).
      grouping: ``'ball'`` (ball query) or ``'knn'`` (S nearest, those at distance >= radius replaced by
        the centroid).
      normalize_by_radius: divide the centred neighbour coordinates by ``radius``.
      use_xyz: concatenate the centred coordinates to the features (always used when features is None).

    Call: ``xyz [B,N,3]``, ``features [B,N,C]`` or None, ``training`` ->
      ``(new_xyz [B,M,3], new_features [B,M,mlp[-1]])``.
    """

    def __init__(self, npoint, radius, nsample, mlp, sampling="fps", grouping="ball",
                 normalize_by_radius=False, use_xyz=True, **kwargs):
        super().__init__(**precision.float32_layer_kwargs(kwargs))
        if isinstance(npoint, bool) or not isinstance(npoint, int) or npoint < 1:
            raise ValueError(f"SetAbstraction: npoint must be an int >= 1, found {npoint!r}")
        if isinstance(nsample, bool) or not isinstance(nsample, int) or nsample < 1:
            raise ValueError(f"SetAbstraction: nsample must be an int >= 1, found {nsample!r}")
        if not isinstance(radius, (int, float)) or not radius > 0:
            raise ValueError(f"SetAbstraction: radius must be a number > 0, found {radius!r}")
        if sampling not in ("fps", "first"):
            raise ValueError(f"SetAbstraction: sampling must be 'fps' or 'first', found {sampling!r}")
        if grouping not in ("ball", "knn"):
            raise ValueError(f"SetAbstraction: grouping must be 'ball' or 'knn', found {grouping!r}")
        self.npoint, self.radius, self.nsample = npoint, float(radius), nsample
        self.mlp = _check_mlp(mlp, "SetAbstraction")
        self.sampling, self.grouping = sampling, grouping
        self.normalize_by_radius, self.use_xyz = bool(normalize_by_radius), bool(use_xyz)
        self.shared_mlp = _SharedMLP(self.mlp, name="mlp")
        self.supports_jit = ops.backend() != "compiled"

    def build(self, xyz_shape, features_shape=None):
        c = 3 if (features_shape is None or self.use_xyz) else 0
        if features_shape is not None:
            c += int(features_shape[-1])
        self.shared_mlp.build((None, self.npoint, self.nsample, c))
        self.built = True

    def sample_and_group(self, xyz, features=None):
        """Sampling and grouping without the MLP.

        Returns ``(new_xyz [B,M,3], grouped [B,M,S,C_in], idx int32 [B,M,S])`` where ``grouped`` holds the
        neighbours' coordinates relative to their centroid (divided by the radius if
        ``normalize_by_radius``) followed by their features (or only the features when ``use_xyz`` is
        False and features are given), and ``idx`` the neighbours' indices into N.
        """
        xyz, features = _check_inputs(xyz, features, "SetAbstraction")
        new_xyz, idx = self._sample(xyz)
        grouped = ops.group_points(xyz, idx) - new_xyz[:, :, None, :]  # [B,M,S,3]
        if self.normalize_by_radius:
            grouped = grouped / self.radius
        if features is not None:
            gf = ops.group_points(features, idx)
            grouped = tf.concat([grouped, gf], axis=-1) if self.use_xyz else gf
        return new_xyz, grouped, idx

    def _sample(self, xyz):
        """Centroids and neighbour indices: ``xyz [B,N,3]`` -> ``(new_xyz [B,M,3], idx int32 [B,M,S])``."""
        n = xyz.shape[1]
        if n is not None and self.npoint > n:
            raise ValueError(f"SetAbstraction: npoint ({self.npoint}) must be <= N, found N = {n}")
        if self.sampling == "fps":
            centre_idx = ops.farthest_point_sample(xyz, self.npoint)  # [B,M]
        else:
            centre_idx = tf.broadcast_to(tf.range(self.npoint, dtype=tf.int32)[None],
                                         [tf.shape(xyz)[0], self.npoint])
        new_xyz = tf.gather(xyz, centre_idx, batch_dims=1)  # [B,M,3]
        if self.grouping == "ball":
            idx = ops.ball_query(xyz, new_xyz, self.radius, self.nsample)
        else:
            sq_dist, idx = ops.knn(xyz, new_xyz, self.nsample)
            r = tf.constant(self.radius, tf.float32)
            idx = tf.where(sq_dist < r * r, idx, centre_idx[:, :, None])  # same "inside" test as ball_query
        return new_xyz, idx

    def _first_layer_projections(self, xyz, new_xyz, features):
        """The first MLP layer's linear part per point and per centroid (``project_then_group``, float32).

        ``[x_j - c, f_j] W = (x_j W_x + f_j W_f) - c W_x`` with ``W_x`` the kernel's coordinate rows (divided by
        the radius when ``normalize_by_radius``). Returns ``(per_point [B,N,C1], centre [B,M,C1] or None)``
        (None when coordinates are not an input: ``use_xyz`` False).
        """
        kernel = tf.cast(self.shared_mlp.convs[0].kernel[0, 0], tf.float32)  # [3 + C or C, C1]
        if not self.use_xyz:
            return tf.einsum("bnc,cd->bnd", features, kernel), None
        w_xyz = kernel[:3] / self.radius if self.normalize_by_radius else kernel[:3]
        per_point = tf.einsum("bnc,cd->bnd", features, kernel[3:]) + tf.einsum("bnc,cd->bnd", xyz, w_xyz)
        return per_point, tf.einsum("bmc,cd->bmd", new_xyz, w_xyz)

    def _projected_first_layer(self, xyz, features):
        """The first MLP layer applied per point, then grouped (:meth:`_first_layer_projections`).

        Returns ``(new_xyz [B,M,3], z1 [B,M,S,mlp[0]])``.
        """
        xyz, features = _check_inputs(xyz, features, "SetAbstraction")
        new_xyz, idx = self._sample(xyz)
        per_point, centre = self._first_layer_projections(xyz, new_xyz, features)
        z1 = ops.group_points(per_point, idx)
        return new_xyz, z1 if centre is None else z1 - centre[:, :, None, :]

    def _train_unique_rows(self, xyz, features):
        """Training pass over the ball groups' distinct rows (``drop_duplicates``): ``(new_xyz, [B,M,C'])``.

        Rows are gathered only for the distinct neighbours (:func:`training_path.unique_ball_rows`) and
        weighted by the copies they stand for. Relative coordinates, and the first layer projected before the
        gather (when the level has features and ``project_then_group`` is on, as in
        :meth:`_projected_first_layer`), come from one compiled gather-and-subtract in the compute dtype.
        """
        xyz, features = _check_inputs(xyz, features, "SetAbstraction")
        new_xyz, idx = self._sample(xyz)
        point, weights, row_splits = training_path.unique_ball_rows(idx, tf.shape(xyz)[1])
        dt = self.shared_mlp.compute_dtype
        mlp = self.shared_mlp
        if features is not None and training_path.current().project_then_group:
            per_point, centre = self._first_layer_projections(xyz, new_xyz, features)
            c1 = per_point.shape[-1]
            centre = tf.zeros([tf.shape(row_splits)[0] - 1, c1]) if centre is None else tf.reshape(centre, [-1, c1])
            z1 = mlp_train.gather_rows_minus_centre(tf.reshape(per_point, [-1, c1]), point, centre, row_splits, dt)
            pooled = mlp.pooled_train_fast(first=z1, row_splits=row_splits, weights=weights)
        else:
            rows = None
            if features is None or self.use_xyz:
                scale = 1.0 / self.radius if self.normalize_by_radius else 1.0
                # float32 rows where a concat with float32 features follows or the folded first layer reads them.
                folded = features is None and training_path.folded_first_layer_on(3)
                rows = mlp_train.gather_rows_minus_centre(tf.reshape(xyz, [-1, 3]) * scale, point,
                                                          tf.reshape(new_xyz, [-1, 3]) * scale, row_splits,
                                                          tf.float32 if features is not None or folded else dt)
            if features is not None:
                feats = tf.gather(tf.reshape(features, [-1, features.shape[-1]]), point)
                rows = feats if rows is None else tf.concat([rows, feats], axis=-1)
            pooled = mlp.pooled_train_fast(rows, row_splits=row_splits, weights=weights)
        return new_xyz, tf.reshape(pooled, [-1, self.npoint, self.mlp[-1]])

    def call(self, xyz, features=None, training=None):
        mlp = self.shared_mlp
        if training and mlp.fast_training_on():
            if self.grouping == "ball" and training_path.drop_duplicates_on(mlp.compute_dtype):
                return self._train_unique_rows(xyz, features)
            if features is not None and training_path.current().project_then_group:
                new_xyz, z1 = self._projected_first_layer(xyz, features)
                return new_xyz, mlp.pooled_train_fast(first=z1)
        new_xyz, grouped, _ = self.sample_and_group(xyz, features)
        new_features = mlp.pooled(grouped, training=training)
        return new_xyz, new_features

    def compute_output_shape(self, xyz_shape, features_shape=None):
        return (xyz_shape[0], self.npoint, 3), (xyz_shape[0], self.npoint, self.mlp[-1])

    def get_config(self):
        return {**super().get_config(), "npoint": self.npoint, "radius": self.radius, "nsample": self.nsample,
                "mlp": list(self.mlp), "sampling": self.sampling, "grouping": self.grouping,
                "normalize_by_radius": self.normalize_by_radius, "use_xyz": self.use_xyz}


@keras.saving.register_keras_serializable(package="hsr_tf")
class GlobalSetAbstraction(keras.layers.Layer):
    """Global PointNet level: shared MLP over every point, then max-pool over N.

    Args:
      mlp: output widths, e.g. ``[256, 512, 1024]``.
      use_xyz: concatenate the (absolute) coordinates to the features (always used when features is None).

    Call: ``xyz [B,N,3]``, ``features [B,N,C]`` or None, ``training`` -> ``[B, mlp[-1]]``.
    """

    def __init__(self, mlp, use_xyz=True, **kwargs):
        super().__init__(**precision.float32_layer_kwargs(kwargs))
        self.mlp = _check_mlp(mlp, "GlobalSetAbstraction")
        self.use_xyz = bool(use_xyz)
        self.shared_mlp = _SharedMLP(self.mlp, name="mlp")
        self.supports_jit = ops.backend() != "compiled"

    def build(self, xyz_shape, features_shape=None):
        c = 3 if (features_shape is None or self.use_xyz) else 0
        if features_shape is not None:
            c += int(features_shape[-1])
        self.shared_mlp.build((None, 1, None, c))
        self.built = True

    def call(self, xyz, features=None, training=None):
        xyz, features = _check_inputs(xyz, features, "GlobalSetAbstraction")
        x = xyz
        if features is not None:
            x = tf.concat([xyz, features], axis=-1) if self.use_xyz else features
        return self.shared_mlp.pooled(x[:, None], training=training)[:, 0]  # [B,1,N,C] -> [B,C']

    def compute_output_shape(self, xyz_shape, features_shape=None):
        return (xyz_shape[0], self.mlp[-1])

    def get_config(self):
        return {**super().get_config(), "mlp": list(self.mlp), "use_xyz": self.use_xyz}
