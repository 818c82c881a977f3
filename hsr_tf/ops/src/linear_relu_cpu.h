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

// The AVX-512 loops of the forward pass and the gradient sums for K <= kWideMaxK and C % 64 == 0 (the ops pick
// them where the CPU has AVX-512 with BF16): 64 channels at a time with the row's pre-activations and (gradient)
// the K + 1 sums in registers. The products are added in the order of LinearRow, without fused multiply-adds,
// so the values are those of the generic loops.
constexpr int kWideMaxK = 4;

#define HSR_WIDE_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

// pre[q] for the 4 x 16 channels from k0 of one row u [K].
HSR_WIDE_TARGET HSR_INLINE void WidePre(const float* u, int k_in, const float* kernel, const float* bias, int c,
                                        int k0, __m512 pre[4]) {
  for (int q = 0; q < 4; ++q) pre[q] = _mm512_loadu_ps(bias + k0 + 16 * q);
  for (int j = 0; j < k_in; ++j) {
    const __m512 uj = _mm512_set1_ps(u[j]);
    const float* kr = kernel + static_cast<int64_t>(j) * c + k0;
    for (int q = 0; q < 4; ++q) pre[q] = _mm512_add_ps(pre[q], _mm512_mul_ps(uj, _mm512_loadu_ps(kr + 16 * q)));
  }
}

// The 64 results of a row from k0, after the ReLU.
HSR_WIDE_TARGET HSR_INLINE void WideStore(const __m512 pre[4], uint16_t* out) {
  for (int q = 0; q < 4; q += 2) {
    const __m512bh v = _mm512_cvtne2ps_pbh(pre[q + 1], pre[q]);  // low half: pre[q]
    _mm512_storeu_si512(out + 16 * q, reinterpret_cast<const __m512i&>(v));
  }
}
HSR_WIDE_TARGET HSR_INLINE void WideStore(const __m512 pre[4], float* out) {
  for (int q = 0; q < 4; ++q) _mm512_storeu_ps(out + 16 * q, pre[q]);
}

template <typename S>
HSR_WIDE_TARGET void WideLinearRelu(const float* u, int64_t rows, int k_in, const float* kernel, const float* bias,
                                    int c, S* h) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    for (int k0 = 0; k0 < c; k0 += 64) {
      __m512 pre[4];
      WidePre(u + r * k_in, k_in, kernel, bias, c, k0, pre);
      for (int q = 0; q < 4; ++q) pre[q] = _mm512_max_ps(pre[q], zero);
      WideStore(pre, h + r * c + k0);
    }
  }
}

HSR_WIDE_TARGET HSR_INLINE __m512 WideLoad(const uint16_t* p) { return LoadBf16x16(p); }
HSR_WIDE_TARGET HSR_INLINE __m512 WideLoad(const float* p) { return _mm512_loadu_ps(p); }

// LinearReluGradSumsBlock: sums [(K+1) * C] += (dbias, dkernel rows) over rows [0, rows), float sums of
// kRowsPerFloatSum rows added to the doubles as there.
template <typename S>
HSR_WIDE_TARGET void WideLinearReluGradSums(const S* dh, const float* u, int64_t rows, int k_in, const float* kernel,
                                            const float* bias, int c, double* sums) {
  const __m512 zero = _mm512_setzero_ps();
  for (int k0 = 0; k0 < c; k0 += 64) {
    for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerFloatSum) {
      const int64_t r1 = r0 + kRowsPerFloatSum < rows ? r0 + kRowsPerFloatSum : rows;
      __m512 acc[kWideMaxK + 1][4];
      for (int j = 0; j <= k_in; ++j)
        for (int q = 0; q < 4; ++q) acc[j][q] = zero;
      for (int64_t r = r0; r < r1; ++r) {
        const float* ur = u + r * k_in;
        __m512 dy[4];
        WidePre(ur, k_in, kernel, bias, c, k0, dy);
        for (int q = 0; q < 4; ++q) {
          const __mmask16 on = _mm512_cmp_ps_mask(dy[q], zero, _CMP_GT_OQ);
          dy[q] = _mm512_maskz_mov_ps(on, WideLoad(dh + r * c + k0 + 16 * q));
          acc[0][q] = _mm512_add_ps(acc[0][q], dy[q]);
        }
        for (int j = 0; j < k_in; ++j) {
          const __m512 uj = _mm512_set1_ps(ur[j]);
          for (int q = 0; q < 4; ++q) acc[j + 1][q] = _mm512_add_ps(acc[j + 1][q], _mm512_mul_ps(uj, dy[q]));
        }
      }
      for (int j = 0; j <= k_in; ++j) {
        for (int q = 0; q < 4; ++q) {
          alignas(64) float lanes[16];
          _mm512_store_ps(lanes, acc[j][q]);
          double* out = sums + static_cast<int64_t>(j) * c + k0 + 16 * q;
          for (int l = 0; l < 16; ++l) out[l] += lanes[l];
        }
      }
    }
  }
}

}  // namespace hsr_ops

#endif  // HSR_TF_OPS_LINEAR_RELU_CPU_H_
