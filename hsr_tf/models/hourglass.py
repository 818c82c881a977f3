"""Stacked hourglass (Newell et al. 2016) and the residual encoder of the RGB mesh network (Ge et al. 4.1).

Legend: B batch, S input size (px), H heat-map size (S / 4), C feature width, J joints (21).

- ``Residual``: the bottleneck residual module BN-ReLU-1x1(C/2) -> BN-ReLU-3x3(C/2) -> BN-ReLU-1x1(C), plus the
  input (through a 1x1 convolution when the width changes).
- ``StackedHourglass``: 7x7/2 convolution, residual, 2x2 max-pool, residuals (S -> H = S/4), then ``num_stacks``
  hourglasses with ``num_residual`` residual modules per level (down to 4 x 4), each stack producing features
  [B, H, H, C] and J heat-maps [B, H, H, J]; between stacks the features and the heat-maps are mapped back by
  1x1 convolutions and added to the stack's input (intermediate supervision).
- ``ResidualEncoder``: heat-maps and features each through a 1x1 convolution, summed, then 4 blocks of
  ``num_residual`` residual modules each followed by 2x2 max-pooling (H -> H/16), flattened to the latent vector
  [B, (H/16)^2 C] (paper: 4 x 4 x 256).
"""
from __future__ import annotations

import math

import keras


@keras.saving.register_keras_serializable(package="hsr_tf")
class Residual(keras.layers.Layer):
    """Bottleneck residual module. Call: ``x [B, h, w, C_in]`` -> ``[B, h, w, filters]``."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        half = max(self.filters // 2, 1)
        self.bn1, self.bn2, self.bn3 = (keras.layers.BatchNormalization(name=f"bn{i}") for i in (1, 2, 3))
        self.conv1 = keras.layers.Conv2D(half, 1, name="conv1")
        self.conv2 = keras.layers.Conv2D(half, 3, padding="same", name="conv2")
        self.conv3 = keras.layers.Conv2D(self.filters, 1, name="conv3")
        self.skip = None

    def build(self, input_shape):
        if input_shape[-1] != self.filters:
            self.skip = keras.layers.Conv2D(self.filters, 1, name="skip")
            self.skip.build(input_shape)
        self.bn1.build(input_shape)
        self.conv1.build(input_shape)
        half_shape = tuple(input_shape[:-1]) + (self.conv1.filters,)
        self.bn2.build(half_shape)
        self.conv2.build(half_shape)
        self.bn3.build(half_shape)
        self.conv3.build(half_shape)

    def call(self, x, training=False):
        y = self.conv1(keras.ops.relu(self.bn1(x, training=training)))
        y = self.conv2(keras.ops.relu(self.bn2(y, training=training)))
        y = self.conv3(keras.ops.relu(self.bn3(y, training=training)))
        return y + (self.skip(x) if self.skip is not None else x)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def _residuals(filters, n, prefix):
    return [Residual(filters, name=f"{prefix}_{i}") for i in range(n)]


def _run(layers, x, training):
    for layer in layers:
        x = layer(x, training=training)
    return x


@keras.saving.register_keras_serializable(package="hsr_tf")
class Hourglass(keras.layers.Layer):
    """One hourglass of ``depth`` levels. Call: ``x [B, h, h, C]`` -> ``[B, h, h, C]`` (h divisible by 2^depth)."""

    def __init__(self, filters, depth, num_residual=2, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.depth, self.num_residual = int(filters), int(depth), int(num_residual)
        if self.depth < 1:
            raise ValueError(f"depth: expected >= 1, found {depth}")
        # Flat lists (Keras tracks layers in flat lists; level d uses entries [d * n, (d + 1) * n)).
        self.up = [r for d in range(self.depth) for r in _residuals(self.filters, self.num_residual, f"up{d}")]
        self.low1 = [r for d in range(self.depth) for r in _residuals(self.filters, self.num_residual, f"low1_{d}")]
        self.low3 = [r for d in range(self.depth) for r in _residuals(self.filters, self.num_residual, f"low3_{d}")]
        self.bottom = _residuals(self.filters, self.num_residual, "bottom")

    def _level(self, x, d, training):
        n = self.num_residual
        upper = _run(self.up[d * n:(d + 1) * n], x, training)
        low = keras.ops.max_pool(x, 2, 2)
        low = _run(self.low1[d * n:(d + 1) * n], low, training)
        low = self._level(low, d + 1, training) if d + 1 < self.depth else _run(self.bottom, low, training)
        low = _run(self.low3[d * n:(d + 1) * n], low, training)
        return upper + keras.ops.repeat(keras.ops.repeat(low, 2, axis=1), 2, axis=2)

    def call(self, x, training=False):
        if x.shape[1] is not None and x.shape[1] % 2 ** self.depth:
            raise ValueError(f"{self.name}: x: expected a size divisible by {2 ** self.depth}, found {x.shape}")
        return self._level(x, 0, training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "depth": self.depth,
                "num_residual": self.num_residual}


@keras.saving.register_keras_serializable(package="hsr_tf")
class StackedHourglass(keras.layers.Layer):
    """Two-stack (by default) hourglass network.

    Args:
      filters: C (paper / released code: 256).
      num_joints: J heat-maps.
      num_stacks: hourglasses (paper: 2).
      num_residual: residual modules per hourglass level (paper: 2).
      min_size: spatial size of the innermost hourglass level (4).

    Call: ``image [B, S, S, 3]`` (float, roughly zero-mean) -> dict ``features`` [B, H, H, C] (last stack),
    ``heatmaps`` [B, H, H, J] (last stack) and ``heatmaps_all`` [B, num_stacks, H, H, J].
    """

    def __init__(self, filters=256, num_joints=21, num_stacks=2, num_residual=2, min_size=4, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.num_joints = int(filters), int(num_joints)
        self.num_stacks, self.num_residual, self.min_size = int(num_stacks), int(num_residual), int(min_size)
        c = self.filters
        self.stem_conv = keras.layers.Conv2D(max(c // 4, 8), 7, strides=2, padding="same", name="stem_conv")
        self.stem_bn = keras.layers.BatchNormalization(name="stem_bn")
        self.stem_res1 = Residual(max(c // 2, 8), name="stem_res1")
        self.stem_res2 = Residual(max(c // 2, 8), name="stem_res2")
        self.stem_res3 = Residual(c, name="stem_res3")
        self.hourglasses, self.post, self.feat_conv, self.feat_bn, self.heat_conv = [], [], [], [], []
        self.merge_feat, self.merge_heat = [], []
        self._depth = None
        for s in range(self.num_stacks):
            self.post.extend(_residuals(c, self.num_residual, f"post{s}"))
            self.feat_conv.append(keras.layers.Conv2D(c, 1, name=f"feat_conv{s}"))
            self.feat_bn.append(keras.layers.BatchNormalization(name=f"feat_bn{s}"))
            self.heat_conv.append(keras.layers.Conv2D(self.num_joints, 1, name=f"heat_conv{s}"))
            if s + 1 < self.num_stacks:
                self.merge_feat.append(keras.layers.Conv2D(c, 1, name=f"merge_feat{s}"))
                self.merge_heat.append(keras.layers.Conv2D(c, 1, name=f"merge_heat{s}"))

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] != 3 or input_shape[1] is None or input_shape[1] % 4:
            raise ValueError(f"{self.name}: image: expected [B, S, S, 3] with S divisible by 4, found "
                             f"{tuple(input_shape)}")
        h = input_shape[1] // 4
        depth = int(round(math.log2(h / self.min_size)))
        if depth < 1 or self.min_size * 2 ** depth != h:
            raise ValueError(f"{self.name}: image: expected S / 4 = min_size * 2^k (k >= 1), found S = "
                             f"{input_shape[1]} with min_size {self.min_size}")
        self._depth = depth
        self.hourglasses = [Hourglass(self.filters, depth, self.num_residual, name=f"hourglass{s}")
                            for s in range(self.num_stacks)]

    def call(self, image, training=False):
        x = keras.ops.relu(self.stem_bn(self.stem_conv(image), training=training))
        x = self.stem_res1(x, training=training)
        x = keras.ops.max_pool(x, 2, 2)
        x = self.stem_res3(self.stem_res2(x, training=training), training=training)
        heatmaps, feats = [], None
        for s in range(self.num_stacks):
            y = self.hourglasses[s](x, training=training)
            n = self.num_residual
            y = _run(self.post[s * n:(s + 1) * n], y, training)
            feats = keras.ops.relu(self.feat_bn[s](self.feat_conv[s](y), training=training))
            heat = self.heat_conv[s](feats)
            heatmaps.append(heat)
            if s + 1 < self.num_stacks:
                x = x + self.merge_feat[s](feats) + self.merge_heat[s](heat)
        return {"features": feats, "heatmaps": heatmaps[-1], "heatmaps_all": keras.ops.stack(heatmaps, axis=1)}

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "num_joints": self.num_joints,
                "num_stacks": self.num_stacks, "num_residual": self.num_residual, "min_size": self.min_size}


@keras.saving.register_keras_serializable(package="hsr_tf")
class ResidualEncoder(keras.layers.Layer):
    """Heat-maps + features -> latent vector.

    Call: ``features [B, H, H, C_f]``, ``heatmaps [B, H, H, J]`` -> ``[B, (H/2^num_blocks)^2 * filters]``.
    """

    def __init__(self, filters=256, num_blocks=4, num_residual=2, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.num_blocks, self.num_residual = int(filters), int(num_blocks), int(num_residual)
        self.feat_conv = keras.layers.Conv2D(self.filters, 1, name="feat_conv")
        self.heat_conv = keras.layers.Conv2D(self.filters, 1, name="heat_conv")
        self.blocks = [r for b in range(self.num_blocks) for r in _residuals(self.filters, self.num_residual,
                                                                             f"block{b}")]

    def call(self, features, heatmaps, training=False):
        h = features.shape[1]
        if h is not None and h % 2 ** self.num_blocks:
            raise ValueError(f"{self.name}: features: expected a size divisible by {2 ** self.num_blocks}, "
                             f"found {features.shape}")
        x = self.feat_conv(features) + self.heat_conv(heatmaps)
        n = self.num_residual
        for b in range(self.num_blocks):
            x = keras.ops.max_pool(_run(self.blocks[b * n:(b + 1) * n], x, training), 2, 2)
        return keras.ops.reshape(x, (-1, x.shape[1] * x.shape[2] * x.shape[3]))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "num_blocks": self.num_blocks,
                "num_residual": self.num_residual}
