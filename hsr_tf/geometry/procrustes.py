"""Differentiable similarity Procrustes (Umeyama / Horn) in TensorFlow.

Finds the similarity transform that best maps ``source`` points onto ``target``
points in the weighted least-squares sense::

    min_{s, R, t}  sum_k w_k || s R x_k + t - y_k ||^2,   R in SO(3), s >= 0.

The rotation is computed with Horn's quaternion method (1987): the optimal unit
quaternion is the eigenvector of the largest eigenvalue of a symmetric 4x4 matrix
built from the cross-covariance. Compared with the SVD form (Umeyama 1991), this

* always yields a proper rotation (det R = +1); the reflection case of Umeyama's
  ``diag(1, 1, sign(det))`` correction is handled implicitly, and
* has a gradient that depends only on the gap between the *largest* eigenvalue and
  the others. That gap is ``2 (sigma_2 + sign(det M) sigma_3)`` in terms of the
  singular values of the cross-covariance, so it closes only when the rotation is
  genuinely ambiguous (collinear points, or an exact reflection). The SVD gradient
  instead divides by ``sigma_i^2 - sigma_j^2`` for every pair: on perfectly well-posed
  inputs with two equal singular values (e.g. a planar square) TF's ``svd`` gradient
  replaces 1/0 by 0 and is then wrong (measured: error 1.17 for a gradient of size
  2.7, see docs/papers.md ("Depth network, losses and metrics")), and near such ties it is huge.

The eigenvector gradient is written explicitly (``_top_eigenvector``) with the
eigenvalue gaps clamped from below, so it stays finite (and bounded) even on
degenerate inputs.

Legend: B batch, K corresponding points, N any number of points.
"""
import tensorflow as tf
from tensorflow_graphics.geometry.transformation import rotation_matrix_3d

#: relative floor on eigenvalue gaps in the gradient of the top eigenvector.
_GAP_EPS = 1e-4
#: absolute floors that keep divisions finite for all-zero inputs.
_TINY = 1e-12


def _check_points(name, x, rank=3):
    if x.shape.rank != rank or x.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [B, K, 3], found {x.shape}")


@tf.custom_gradient
def _top_eigenvector(sym):
    """Unit eigenvector of the largest eigenvalue of symmetric matrices.

    Args:
      sym: [B, 4, 4] symmetric float32 matrices.
    Returns:
      [B, 4] eigenvectors (sign arbitrary).

    The gradient is ``dN = sym(sum_{k != top} (g . v_k) / (lam_top - lam_k) v_k v_top^T)``
    with each gap clamped to at least ``_GAP_EPS * max|lam|``.
    """
    evals, evecs = tf.linalg.eigh(sym)  # ascending eigenvalues, eigenvectors as columns
    top = evecs[..., -1]

    def grad(upstream):
        lam_top = evals[..., -1:]  # [B, 1]
        gaps = lam_top - evals  # [B, 4], last entry 0
        scale = tf.reduce_max(tf.abs(evals), axis=-1, keepdims=True)
        floor = _GAP_EPS * scale + _TINY
        safe = tf.maximum(gaps, floor)
        mask = tf.one_hot(tf.shape(evals)[-1] - 1, tf.shape(evals)[-1], on_value=0.0, off_value=1.0,
                          dtype=evals.dtype)
        # coefficient of each other eigenvector: (v_k . g) / gap_k
        coef = tf.einsum("bik,bi->bk", evecs, upstream) * mask / safe  # [B, 4]
        dv_dir = tf.einsum("bik,bk->bi", evecs, coef)  # [B, 4]
        g = tf.einsum("bi,bj->bij", dv_dir, top)
        return 0.5 * (g + tf.linalg.matrix_transpose(g))

    return top, grad


def _horn_matrix(cov):
    """Horn's symmetric 4x4 matrix for the cross-covariance ``cov[a, b] = sum x_a y_b``.

    Args:
      cov: [B, 3, 3].
    Returns:
      [B, 4, 4]; its top eigenvector is the quaternion (w, x, y, z) of the rotation
      taking source (x) directions onto target (y) directions.
    """
    sxx, sxy, sxz = cov[:, 0, 0], cov[:, 0, 1], cov[:, 0, 2]
    syx, syy, syz = cov[:, 1, 0], cov[:, 1, 1], cov[:, 1, 2]
    szx, szy, szz = cov[:, 2, 0], cov[:, 2, 1], cov[:, 2, 2]
    rows = [
        [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
        [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
        [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
        [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
    ]
    return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)


def optimal_rotation(source, target, weights=None):
    """Rotation-only part of the weighted Procrustes problem.

    Args:
      source: [B, K, 3] float32 points x_k.
      target: [B, K, 3] float32 points y_k.
      weights: [B, K] non-negative weights or None (all ones).
    Returns:
      dict with ``R`` [B, 3, 3] (proper rotation, target ~ R source about the
      centroids), ``source_centered`` [B, K, 3], ``target_centered`` [B, K, 3],
      ``source_mean`` [B, 3], ``target_mean`` [B, 3], ``weights`` [B, K] normalised
      to sum 1 per batch element.
    """
    source = tf.convert_to_tensor(source, tf.float32)
    target = tf.convert_to_tensor(target, tf.float32)
    _check_points("source", source)
    _check_points("target", target)
    if source.shape[1] is not None and target.shape[1] is not None and source.shape[1] != target.shape[1]:
        raise ValueError(f"target: expected {source.shape[1]} points like source, found {target.shape[1]}")
    if weights is None:
        weights = tf.ones_like(source[..., 0])
    else:
        weights = tf.convert_to_tensor(weights, tf.float32)
        if weights.shape.rank != 2:
            raise ValueError(f"weights: expected shape [B, K], found {weights.shape}")
    w = weights / (tf.reduce_sum(weights, axis=-1, keepdims=True) + _TINY)
    mu_x = tf.einsum("bk,bki->bi", w, source)
    mu_y = tf.einsum("bk,bki->bi", w, target)
    xc = source - mu_x[:, None, :]
    yc = target - mu_y[:, None, :]
    cov = tf.einsum("bk,bki,bkj->bij", w, xc, yc)  # sum_k w x_a y_b
    quat_wxyz = _top_eigenvector(_horn_matrix(cov))
    quat_xyzw = tf.concat([quat_wxyz[:, 1:], quat_wxyz[:, :1]], axis=-1)
    rot = rotation_matrix_3d.from_quaternion(quat_xyzw)
    return {"R": rot, "source_centered": xc, "target_centered": yc, "source_mean": mu_x,
            "target_mean": mu_y, "weights": w}


def similarity_procrustes(source, target, weights=None):
    """Weighted similarity Procrustes: target ~ s R source + t.

    Args:
      source: [B, K, 3] float32 points (e.g. hand-model joints, hand frame, mm).
      target: [B, K, 3] float32 points (e.g. predicted joints, input frame).
      weights: [B, K] non-negative weights, or None for equal weights.
    Returns:
      (s [B], R [B, 3, 3], t [B, 3]) with det R = +1 and s >= 0. With all source
      points coincident the scale is 0 (no information), never NaN.
    """
    rot_out = optimal_rotation(source, target, weights)
    rot, w = rot_out["R"], rot_out["weights"]
    xc, yc = rot_out["source_centered"], rot_out["target_centered"]
    rx = tf.einsum("bij,bkj->bki", rot, xc)
    num = tf.einsum("bk,bki,bki->b", w, yc, rx)
    den = tf.einsum("bk,bki,bki->b", w, xc, xc)
    scale = num / (den + _TINY)
    trans = rot_out["target_mean"] - scale[:, None] * tf.einsum("bij,bj->bi", rot, rot_out["source_mean"])
    return scale, rot, trans


def apply_similarity(points, s, R, t):
    """Applies ``s R p + t`` to every point.

    Args:
      points: [B, N, 3].
      s: [B] scales. R: [B, 3, 3] rotations. t: [B, 3] translations.
    Returns:
      [B, N, 3].
    """
    points = tf.convert_to_tensor(points, tf.float32)
    if points.shape.rank != 3 or points.shape[-1] != 3:
        raise ValueError(f"points: expected shape [B, N, 3], found {points.shape}")
    if R.shape.rank != 3 or tuple(R.shape[-2:]) != (3, 3):
        raise ValueError(f"R: expected shape [B, 3, 3], found {R.shape}")
    if s.shape.rank != 1:
        raise ValueError(f"s: expected shape [B], found {s.shape}")
    if t.shape.rank != 2 or t.shape[-1] != 3:
        raise ValueError(f"t: expected shape [B, 3], found {t.shape}")
    return s[:, None, None] * tf.einsum("bij,bnj->bni", R, points) + t[:, None, :]


def invert_similarity(s, R, t):
    """Inverse of ``p -> s R p + t``: ``q -> (1/s) R^T (q - t)`` as (s', R', t').

    Args:
      s: [B] (must be non-zero). R: [B, 3, 3]. t: [B, 3].
    Returns:
      (1/s [B], R^T [B, 3, 3], -(1/s) R^T t [B, 3]).
    """
    inv_s = 1.0 / s
    rt = tf.linalg.matrix_transpose(R)
    return inv_s, rt, -inv_s[:, None] * tf.einsum("bij,bj->bi", rt, t)
