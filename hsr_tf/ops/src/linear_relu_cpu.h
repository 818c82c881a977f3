// Arithmetic of the linear + bias + ReLU op on a few input channels (HsrLinearRelu, linear_relu_ops.cc); no
// TensorFlow. Rows u [R, K] float32 (K small, e.g. the 3 coordinates of a point relative to its centroid),
// kernel [K, C], bias [C]:
//   pre = u kernel + bias,  h = max(pre, 0)                                                  [R, C]
// Backward (dy = dh where pre > 0, else 0): dbias = sum_r dy, dkernel = sum_r u^T dy, du = dy kernel^T.
#ifndef HSR_TF_OPS_LINEAR_RELU_CPU_H_
#define HSR_TF_OPS_LINEAR_RELU_CPU_H_

#include "mlp_train_cpu.h"

namespace hsr_ops {

// pre[c] = bias[c] + sum_j u[j] kernel[j, c], the products added in j order: the forward and both backward
// kernels compute the same float values, so they agree on the ReLU mask.
HSR_INLINE void LinearRow(const float* __restrict u, int k_in, const float* __restrict kernel,
                          const float* __restrict bias, int c, float* __restrict pre) {
  for (int k = 0; k < c; ++k) pre[k] = bias[k];
  for (int j = 0; j < k_in; ++j) {
    const float uj = u[j];
    const float* __restrict kr = kernel + static_cast<int64_t>(j) * c;
    for (int k = 0; k < c; ++k) pre[k] += uj * kr[k];
  }
}

// h = max(u kernel + bias, 0) over rows [0, rows).
template <typename T>
HSR_INLINE void LinearReluBlock(const float* __restrict u, int64_t rows, int k_in, const float* __restrict kernel,
                                const float* __restrict bias, int c, T* __restrict h, float* __restrict scratch) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict out = RowTarget(h + r * c, scratch);
    LinearRow(u + r * k_in, k_in, kernel, bias, c, out);
    for (int k = 0; k < c; ++k) out[k] = out[k] > 0.0f ? out[k] : 0.0f;
    FinishRow(out, h + r * c, c);
  }
}

// Sums over rows [0, rows) into sums [(K+1) * C] (dbias, then dkernel row by row). acc: (K+1) * C floats,
// dy: C floats of scratch.
template <typename T>
HSR_INLINE void LinearReluGradSumsBlock(const T* __restrict dh, const float* __restrict u, int64_t rows, int k_in,
                                        const float* __restrict kernel, const float* __restrict bias, int c,
                                        double* __restrict sums, float* __restrict acc, float* __restrict dy) {
  const int64_t width = static_cast<int64_t>(k_in + 1) * c;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerFloatSum) {
    const int64_t r1 = r0 + kRowsPerFloatSum < rows ? r0 + kRowsPerFloatSum : rows;
    for (int64_t i = 0; i < width; ++i) acc[i] = 0.0f;
    for (int64_t r = r0; r < r1; ++r) {
      const float* ur = u + r * k_in;
      const T* gr = dh + r * c;
      LinearRow(ur, k_in, kernel, bias, c, dy);
      for (int k = 0; k < c; ++k) {
        const float g = ToFloat(gr[k]);
        dy[k] = dy[k] > 0.0f ? g : 0.0f;
      }
      for (int k = 0; k < c; ++k) acc[k] += dy[k];
      for (int j = 0; j < k_in; ++j) {
        const float uj = ur[j];
        float* __restrict a = acc + static_cast<int64_t>(j + 1) * c;
        for (int k = 0; k < c; ++k) a[k] += uj * dy[k];
      }
    }
    for (int64_t i = 0; i < width; ++i) sums[i] += acc[i];
  }
}

// Lanes of the partial dot products of LinearReluInputGradBlock: one AVX-512 register of floats.
constexpr int kDotLanes = 16;

// du[r, j] = sum_c dy[r, c] kernel[j, c] over rows [0, rows), the sum over c formed in kDotLanes lanes (lane l
// adds channels l, l + 16, ...) that are then added in lane order: vectorisable, and the same on every ISA.
// dy: C floats of scratch.
template <typename T>
HSR_INLINE void LinearReluInputGradBlock(const T* __restrict dh, const float* __restrict u, int64_t rows, int k_in,
                                         const float* __restrict kernel, const float* __restrict bias, int c,
                                         float* __restrict du, float* __restrict dy) {
  const int body = c / kDotLanes * kDotLanes;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = dh + r * c;
    LinearRow(u + r * k_in, k_in, kernel, bias, c, dy);
    for (int k = 0; k < c; ++k) {
      const float g = ToFloat(gr[k]);
      dy[k] = dy[k] > 0.0f ? g : 0.0f;
    }
    for (int j = 0; j < k_in; ++j) {
      const float* __restrict kr = kernel + static_cast<int64_t>(j) * c;
      float lanes[kDotLanes] = {};
      for (int k0 = 0; k0 < body; k0 += kDotLanes) {
        for (int l = 0; l < kDotLanes; ++l) lanes[l] += dy[k0 + l] * kr[k0 + l];
      }
      float s = 0.0f;
      for (int l = 0; l < kDotLanes; ++l) s += lanes[l];
      for (int k = body; k < c; ++k) s += dy[k] * kr[k];
      du[r * k_in + j] = s;
    }
  }
}

}  // namespace hsr_ops

#endif  // HSR_TF_OPS_LINEAR_RELU_CPU_H_
