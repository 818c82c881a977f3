// Arithmetic of the fused training-mode BatchNorm + ReLU (+ max over groups) kernels (no TensorFlow).
//
// Legend: R rows, C channels, G groups of consecutive rows (given by row splits). Activations are float32 or
// bfloat16 (stored as uint16: the upper half of a float32); statistics and all arithmetic are float32,
// per-block partial sums are added in double. Every function works on a block of rows (or groups) and
// writes only its own outputs or partial sums, so the ops can run blocks on any thread in any order and
// still produce bit-identical results (partials are reduced in block order).
//
// Forward, per channel c (mu, var: the batch's mean and biased variance; inv = 1/sqrt(var + eps)):
//   y = (z - mu) * inv * gamma + beta = z * scale + shift,   h = max(y, 0)
// Backward (dy = dh where y > 0, else 0; xhat = (z - mu) * inv):
//   dbeta = sum dy,  dgamma = sum dy * xhat,  dz = gamma * inv * (dy - dbeta / R - xhat * dgamma / R)
// With the max over each group of rows (pooled[g, c] = max over the group's rows of h, argmax the first row
// reaching the maximum y), dh is zero except at the argmax rows, so dbeta and dgamma are sums over G*C entries.
// Weighted rows (w[r] > 0, the number of identical copies a row stands for; the ball query pads groups with
// copies of their first neighbour) give the moments and gradients of the batch with every copy present:
//   mu = sum w z / W, var = sum w z^2 / W - mu^2 (W = sum w), and dz = k1 * (dy - w * (a + xhat * b)), dy
// being the gradient summed over the copies.
#ifndef HSR_TF_OPS_MLP_TRAIN_CPU_H_
#define HSR_TF_OPS_MLP_TRAIN_CPU_H_

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace hsr_ops {

#define HSR_INLINE inline __attribute__((always_inline))

HSR_INLINE float ToFloat(float v) { return v; }
HSR_INLINE float ToFloat(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
HSR_INLINE void Store(float f, float* out) { *out = f; }
// float32 -> bfloat16, round to nearest even (as TensorFlow's cast); NaN stays a quiet NaN.
HSR_INLINE void Store(float f, uint16_t* out) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u = (f != f) ? 0x7FC00000u : u + 0x7FFFu + ((u >> 16) & 1u);
  *out = static_cast<uint16_t>(u >> 16);
}

// n float32 values -> bfloat16, as Store. The native AVX512-BF16 conversion (one instruction per 16 values; it
// flushes denormals, |x| < 2^-126, to zero, where Store keeps them) is picked at run time when the CPU has it.
inline void StoreFloatsGeneric(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) Store(src[i], dst + i);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void StoreFloatsAvx512Bf16(
    const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), reinterpret_cast<const __m256i&>(v));
  }
  for (; i < n; ++i) Store(src[i], dst + i);
}
using StoreFloatsFn = void (*)(const float*, uint16_t*, int64_t);
// Set once by the ops (mlp_train_support.h) from the CPU flags; the generic version until then.
inline StoreFloatsFn& StoreBf16Rows() {
  static StoreFloatsFn fn = &StoreFloatsGeneric;
  return fn;
}

// 16 bfloat16 values -> float32 lanes (exact: the upper halves of the floats).
__attribute__((target("avx512f,avx512bw"))) inline __m512 LoadBf16x16(const uint16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// Where a row of results is computed: float32 outputs in place, bfloat16 ones in a float scratch row that
// FinishRow converts.
HSR_INLINE float* RowTarget(float* out, float*) { return out; }
HSR_INLINE float* RowTarget(uint16_t*, float* scratch) { return scratch; }
HSR_INLINE void FinishRow(const float*, float*, int64_t) {}
HSR_INLINE void FinishRow(const float* scratch, uint16_t* out, int64_t n) { StoreBf16Rows()(scratch, out, n); }

// dy = dh where the BatchNorm output y = z * scale + shift is positive, else 0. dh is passed already loaded:
// a load inside the condition would not be vectorised.
HSR_INLINE float ReluGrad(float z, float dh, float scale, float shift) { return z * scale + shift > 0.0f ? dh : 0.0f; }

// Rows whose float32 sums are formed before they are added to the double accumulators.
constexpr int64_t kRowsPerFloatSum = 32;

// sum[c] += sum_r w[r] z[r, c], sumsq[c] += sum_r w[r] z[r, c]^2 over rows [0, rows); w == nullptr: all 1.
// acc: 2*C floats of scratch.
template <typename T>
HSR_INLINE void MomentsBlock(const T* __restrict z, const float* __restrict w, int64_t rows, int c,
                             double* __restrict sum, double* __restrict sumsq, float* __restrict acc) {
  float* __restrict s = acc;
  float* __restrict q = acc + c;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerFloatSum) {
    const int64_t r1 = r0 + kRowsPerFloatSum < rows ? r0 + kRowsPerFloatSum : rows;
    for (int k = 0; k < c; ++k) s[k] = q[k] = 0.0f;
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = z + r * c;
      const float wr = w ? w[r] : 1.0f;
      for (int k = 0; k < c; ++k) {
        const float v = ToFloat(row[k]);
        s[k] += wr * v;
        q[k] += wr * (v * v);
      }
    }
    for (int k = 0; k < c; ++k) {
      sum[k] += s[k];
      sumsq[k] += q[k];
    }
  }
}

// Whether bfloat16 results are rounded by the native AVX512-BF16 conversion here (StoreBf16Rows); the
// elementwise passes below then convert in registers (*Bf16Native: the same operations in the same order, the same
// conversion, so the same bits) instead of through a float scratch row.
inline bool NativeBf16Rows() { return StoreBf16Rows() == &StoreFloatsAvx512Bf16; }

#define HSR_BF16_NATIVE __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), noinline))

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) HSR_INLINE void StoreBf16x16(__m512 v, uint16_t* out) {
  const __m256bh b = _mm512_cvtneps_pbh(v);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), reinterpret_cast<const __m256i&>(b));
}

// ApplyBlock for bfloat16 rows, C % 16 == 0.
HSR_BF16_NATIVE inline void ApplyBf16Native(const uint16_t* z, int64_t rows, int c, const float* scale,
                                            const float* shift, uint16_t* h) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* zr = z + r * c;
    uint16_t* hr = h + r * c;
    for (int k = 0; k < c; k += 16) {
      const __m512 y = _mm512_add_ps(_mm512_mul_ps(LoadBf16x16(zr + k), _mm512_loadu_ps(scale + k)),
                                     _mm512_loadu_ps(shift + k));
      StoreBf16x16(_mm512_max_ps(y, zero), hr + k);  // max(y, +0) is +0 for y = -0 or NaN, as y > 0 ? y : 0
    }
  }
}

// GradApplyBlock for bfloat16 rows, C % 16 == 0.
HSR_BF16_NATIVE inline void GradApplyBf16Native(const uint16_t* dh, const uint16_t* z, const float* w, int64_t rows,
                                                int c, const float* scale, const float* shift, const float* mean,
                                                const float* inv, const float* k1, const float* a, const float* b,
                                                uint16_t* dz) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* zr = z + r * c;
    const uint16_t* gr = dh + r * c;
    uint16_t* out = dz + r * c;
    const __m512 wr = _mm512_set1_ps(w ? w[r] : 1.0f);
    for (int k = 0; k < c; k += 16) {
      const __m512 zv = LoadBf16x16(zr + k);
      const __m512 y = _mm512_add_ps(_mm512_mul_ps(zv, _mm512_loadu_ps(scale + k)), _mm512_loadu_ps(shift + k));
      const __m512 dy = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ), LoadBf16x16(gr + k));
      __m512 t = _mm512_mul_ps(_mm512_sub_ps(zv, _mm512_loadu_ps(mean + k)), _mm512_loadu_ps(inv + k));
      t = _mm512_add_ps(_mm512_loadu_ps(a + k), _mm512_mul_ps(t, _mm512_loadu_ps(b + k)));
      t = _mm512_sub_ps(dy, _mm512_mul_ps(wr, t));
      StoreBf16x16(_mm512_mul_ps(_mm512_loadu_ps(k1 + k), t), out + k);
    }
  }
}

// h = max(z * scale + shift, 0) over rows [0, rows).
template <typename T>
HSR_INLINE void ApplyBlock(const T* __restrict z, int64_t rows, int c, const float* __restrict scale,
                           const float* __restrict shift, T* __restrict h, float* __restrict scratch) {
  if constexpr (std::is_same<T, uint16_t>::value) {
    if (c % 16 == 0 && NativeBf16Rows()) return ApplyBf16Native(z, rows, c, scale, shift, h);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * c;
    float* __restrict out = RowTarget(h + r * c, scratch);
    for (int k = 0; k < c; ++k) {
      const float y = ToFloat(zr[k]) * scale[k] + shift[k];
      out[k] = y > 0.0f ? y : 0.0f;
    }
    FinishRow(out, h + r * c, c);
  }
}

// Backward sums over rows [0, rows): dbeta[c] += sum dy, dgamma[c] += sum dy * xhat. acc: 2*C floats.
// (dh of a weighted row is already the sum over its copies, so no weight appears here.)
template <typename T>
HSR_INLINE void GradSumsBlock(const T* __restrict dh, const T* __restrict z, int64_t rows, int c,
                              const float* __restrict scale, const float* __restrict shift,
                              const float* __restrict mean, const float* __restrict inv, double* __restrict dbeta,
                              double* __restrict dgamma, float* __restrict acc) {
  float* __restrict sb = acc;
  float* __restrict sg = acc + c;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerFloatSum) {
    const int64_t r1 = r0 + kRowsPerFloatSum < rows ? r0 + kRowsPerFloatSum : rows;
    for (int k = 0; k < c; ++k) sb[k] = sg[k] = 0.0f;
    for (int64_t r = r0; r < r1; ++r) {
      const T* zr = z + r * c;
      const T* gr = dh + r * c;
      for (int k = 0; k < c; ++k) {
        const float zv = ToFloat(zr[k]);
        const float dy = ReluGrad(zv, ToFloat(gr[k]), scale[k], shift[k]);
        sb[k] += dy;
        sg[k] += dy * ((zv - mean[k]) * inv[k]);
      }
    }
    for (int k = 0; k < c; ++k) {
      dbeta[k] += sb[k];
      dgamma[k] += sg[k];
    }
  }
}

// dz = k1 * (dy - w * (a + xhat * b)) over rows [0, rows), with k1 = gamma * inv, a = dbeta / W,
// b = dgamma / W (W the total weight); w == nullptr: all 1.
template <typename T>
HSR_INLINE void GradApplyBlock(const T* __restrict dh, const T* __restrict z, const float* __restrict w,
                               int64_t rows, int c, const float* __restrict scale, const float* __restrict shift,
                               const float* __restrict mean, const float* __restrict inv,
                               const float* __restrict k1, const float* __restrict a, const float* __restrict b,
                               T* __restrict dz, float* __restrict scratch) {
  if constexpr (std::is_same<T, uint16_t>::value) {
    if (c % 16 == 0 && NativeBf16Rows()) {
      return GradApplyBf16Native(dh, z, w, rows, c, scale, shift, mean, inv, k1, a, b, dz);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * c;
    const T* gr = dh + r * c;
    float* __restrict out = RowTarget(dz + r * c, scratch);
    const float wr = w ? w[r] : 1.0f;
    for (int k = 0; k < c; ++k) {
      const float zv = ToFloat(zr[k]);
      const float dy = ReluGrad(zv, ToFloat(gr[k]), scale[k], shift[k]);
      out[k] = k1[k] * (dy - wr * (a[k] + (zv - mean[k]) * inv[k] * b[k]));
    }
    FinishRow(out, dz + r * c, c);
  }
}

// Max over `groups` groups, group g holding rows [splits[g], splits[g+1]) of z (at least one):
// pooled[g, c] = max(max_r y, 0), argmax[g, c] the first row of the group (0-based within it) with the
// largest y. best: C floats of scratch.
template <typename T>
HSR_INLINE void MaxBlock(const T* __restrict z, const int32_t* __restrict splits, int64_t groups, int c,
                         const float* __restrict scale, const float* __restrict shift, T* __restrict pooled,
                         int32_t* __restrict argmax, float* __restrict best) {
  for (int64_t g = 0; g < groups; ++g) {
    const T* zg = z + static_cast<int64_t>(splits[g]) * c;
    const int32_t n = splits[g + 1] - splits[g];
    int32_t* arg = argmax + g * c;
    for (int k = 0; k < c; ++k) {
      best[k] = ToFloat(zg[k]) * scale[k] + shift[k];
      arg[k] = 0;
    }
    for (int32_t r = 1; r < n; ++r) {
      const T* zr = zg + static_cast<int64_t>(r) * c;
      for (int k = 0; k < c; ++k) {
        const float y = ToFloat(zr[k]) * scale[k] + shift[k];
        const bool better = y > best[k];
        best[k] = better ? y : best[k];
        arg[k] = better ? r : arg[k];
      }
    }
    T* out = pooled + g * c;
    for (int k = 0; k < c; ++k) Store(best[k] > 0.0f ? best[k] : 0.0f, out + k);
  }
}

// Backward sums of the max variant over `groups` groups: only each group's argmax rows carry dy.
template <typename T>
HSR_INLINE void MaxGradSumsBlock(const T* __restrict dpooled, const int32_t* __restrict argmax,
                                 const T* __restrict z, const int32_t* __restrict splits, int64_t groups, int c,
                                 const float* __restrict scale, const float* __restrict shift,
                                 const float* __restrict mean, const float* __restrict inv,
                                 double* __restrict dbeta, double* __restrict dgamma) {
  for (int64_t g = 0; g < groups; ++g) {
    const T* zg = z + static_cast<int64_t>(splits[g]) * c;
    for (int k = 0; k < c; ++k) {
      const float zv = ToFloat(zg[static_cast<int64_t>(argmax[g * c + k]) * c + k]);
      if (zv * scale[k] + shift[k] > 0.0f) {
        const float dy = ToFloat(dpooled[g * c + k]);
        dbeta[k] += dy;
        dgamma[k] += dy * ((zv - mean[k]) * inv[k]);
      }
    }
  }
}

// dz of the max variant over `groups` groups: the dense part -k1 * w * (a + xhat * b) on every row plus
// k1 * dy on the argmax rows, summed in float before the one rounding to T. buf: (largest group) x C floats.
template <typename T>
HSR_INLINE void MaxGradApplyBlock(const T* __restrict dpooled, const int32_t* __restrict argmax,
                                  const T* __restrict z, const float* __restrict w,
                                  const int32_t* __restrict splits, int64_t groups, int c,
                                  const float* __restrict scale, const float* __restrict shift,
                                  const float* __restrict mean, const float* __restrict inv,
                                  const float* __restrict k1, const float* __restrict a, const float* __restrict b,
                                  T* __restrict dz, float* __restrict buf) {
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t first = splits[g], n = splits[g + 1] - splits[g];
    const T* zg = z + first * c;
    for (int64_t r = 0; r < n; ++r) {
      const T* zr = zg + r * c;
      float* br = buf + r * c;
      const float wr = w ? w[first + r] : 1.0f;
      for (int k = 0; k < c; ++k) br[k] = -k1[k] * (wr * (a[k] + (ToFloat(zr[k]) - mean[k]) * inv[k] * b[k]));
    }
    for (int k = 0; k < c; ++k) {
      const int64_t at = static_cast<int64_t>(argmax[g * c + k]) * c + k;
      if (ToFloat(zg[at]) * scale[k] + shift[k] > 0.0f) buf[at] += k1[k] * ToFloat(dpooled[g * c + k]);
    }
    T* out = dz + first * c;
    if constexpr (sizeof(T) == sizeof(float)) {
      for (int64_t i = 0; i < n * c; ++i) out[i] = buf[i];
    } else {
      FinishRow(buf, out, n * c);
    }
  }
}

// Per group of rows [splits[g], splits[g+1]) of z (at least one): the largest and smallest value of every
// channel and the first row (0-based within the group) holding it, and the first row's value, for `groups` groups. Computed before the
// BatchNorm constants are known: y = z * scale + shift is monotone in z, so the group's largest y is at the
// largest z where scale > 0 and at the smallest where scale < 0 (SelectMaxBlock).
template <typename T>
HSR_INLINE void ExtremesBlock(const T* __restrict z, const int32_t* __restrict splits, int64_t groups, int c,
                              float* __restrict zmax, float* __restrict zmin, int32_t* __restrict argmax,
                              int32_t* __restrict argmin, float* __restrict zfirst) {
  for (int64_t g = 0; g < groups; ++g) {
    const T* zg = z + static_cast<int64_t>(splits[g]) * c;
    const int32_t n = splits[g + 1] - splits[g];
    float* __restrict hi = zmax + g * c;
    float* __restrict lo = zmin + g * c;
    int32_t* __restrict ahi = argmax + g * c;
    int32_t* __restrict alo = argmin + g * c;
    for (int k = 0; k < c; ++k) {
      hi[k] = lo[k] = zfirst[g * c + k] = ToFloat(zg[k]);
      ahi[k] = alo[k] = 0;
    }
    for (int32_t r = 1; r < n; ++r) {
      const T* zr = zg + static_cast<int64_t>(r) * c;
      for (int k = 0; k < c; ++k) {
        const float v = ToFloat(zr[k]);
        const bool above = v > hi[k], below = v < lo[k];
        hi[k] = above ? v : hi[k];
        ahi[k] = above ? r : ahi[k];
        lo[k] = below ? v : lo[k];
        alo[k] = below ? r : alo[k];
      }
    }
  }
}

// pooled[g, c] = max(y, 0) at the group's largest y = z * scale + shift, and argmax[g, c] its row, from the
// group's extremes of z (ExtremesBlock): the largest z where scale > 0, the smallest where scale < 0, row 0
// where scale == 0 (every y equal).
// zsel[g, c]: z at that row.
template <typename T>
HSR_INLINE void SelectMaxBlock(const float* __restrict zmax, const float* __restrict zmin,
                               const int32_t* __restrict argmax_z, const int32_t* __restrict argmin_z,
                               const float* __restrict zfirst, int64_t groups, int c, const float* __restrict scale,
                               const float* __restrict shift, T* __restrict pooled, int32_t* __restrict argmax,
                               float* __restrict zsel) {
  for (int64_t g = 0; g < groups; ++g) {
    for (int k = 0; k < c; ++k) {
      const int64_t i = g * c + k;
      const float s = scale[k];
      const int32_t row = s > 0.0f ? argmax_z[i] : (s < 0.0f ? argmin_z[i] : 0);
      const float v = s > 0.0f ? zmax[i] : (s < 0.0f ? zmin[i] : zfirst[i]);
      const float y = v * s + shift[k];
      Store(y > 0.0f ? y : 0.0f, pooled + i);
      argmax[i] = row;
      zsel[i] = v;
    }
  }
}

// MaxGradSumsBlock from the z of every group's argmax rows (zsel [G, C], SelectMaxBlock) instead of a gather from
// z: the same sums, without reading the [R, C] product.
HSR_INLINE void MaxGradSumsSelectedBlock(const uint16_t* __restrict dpooled, const float* __restrict zsel,
                                         int64_t groups, int c, const float* __restrict scale,
                                         const float* __restrict shift, const float* __restrict mean,
                                         const float* __restrict inv, double* __restrict dbeta,
                                         double* __restrict dgamma) {
  for (int64_t g = 0; g < groups; ++g) {
    for (int k = 0; k < c; ++k) {
      const float zv = zsel[g * c + k];
      if (zv * scale[k] + shift[k] > 0.0f) {
        const float dy = ToFloat(dpooled[g * c + k]);
        dbeta[k] += dy;
        dgamma[k] += dy * ((zv - mean[k]) * inv[k]);
      }
    }
  }
}

}  // namespace hsr_ops

#endif  // HSR_TF_OPS_MLP_TRAIN_CPU_H_
