// bfloat16 block products on AVX512-BF16 dot-product instructions (VDPBF16PS), for CPUs without AMX tiles (AMD
// Zen 4 and later, Intel Cooper Lake): the same products as amx_matmul_cpu.h, reading the same packed layouts,
// so that every op built on those products runs on either. No TensorFlow.
//
// Legend: bfloat16 values stored as uint16; a "pair" is two consecutive reduction rows interleaved (VNNI:
// B_vnni[q][2j + s] = B[2q + s][j]), the unit VDPBF16PS multiplies: acc[j] += a[2q] B[2q][j] + a[2q+1] B[2q+1][j]
// for 16 output columns j at once, a's pair broadcast from one 32-bit load. Sums are float32, over the reduction
// in order (one accumulator per output), so a product does not depend on how its rows are split into strips.
//
// Register blocking: 8 rows x 32 columns (16 accumulators), per pair 2 B loads and 8 broadcasts for 16 dot
// products.
#ifndef HSR_TF_OPS_BF16_DOT_CPU_H_
#define HSR_TF_OPS_BF16_DOT_CPU_H_

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace hsr_ops {

#define HSR_BF16_DOT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Rows of the output computed together (accumulators: kDotRows x 2 zmm registers).
constexpr int kDotRows = 8;

// out[k][2j + p] = rows[2k + p][j] for k < n/2 (n even), j < width (a multiple of 32); ld: elements per row.
__attribute__((target("avx512f,avx512bw"))) inline void PackVnni(const uint16_t* rows, int64_t ld, int n, int width,
                                                                 uint16_t* out) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                      37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int k = 0; k < n / 2; ++k) {
    const uint16_t* r0 = rows + (2 * k) * ld;
    const uint16_t* r1 = r0 + ld;
    uint16_t* o = out + static_cast<int64_t>(k) * 2 * width;
    for (int j = 0; j < width; j += 32) {
      const __m512i a = _mm512_loadu_si512(r0 + j);
      const __m512i b = _mm512_loadu_si512(r1 + j);
      _mm512_storeu_si512(o + 2 * j, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(o + 2 * j + 32, _mm512_permutex2var_epi16(a, hi, b));
    }
  }
}

// The 32-bit pair of row r's reduction elements (2q, 2q + 1), broadcast to 16 lanes.
HSR_BF16_DOT_TARGET inline __m512bh DotPair(const uint16_t* row, int q) {
  uint32_t v;
  std::memcpy(&v, row + 2 * q, sizeof v);
  return (__m512bh)_mm512_set1_epi32(static_cast<int>(v));
}

HSR_BF16_DOT_TARGET inline __m512bh DotLoad(const uint16_t* p) {
  return (__m512bh)_mm512_loadu_si512(p);
}

// acc[i][s] += sum over the 16 pairs q < 16 of row i's pair (q0 + q) times B's pair q, columns 16 s .. 16 s + 15:
// rows a + i lda (i < kDotRows), B's pair q at b + q b_pair_stride (half s at + s b_half_offset).
HSR_BF16_DOT_TARGET inline void DotStep16(const uint16_t* a, int64_t lda, int q0, const uint16_t* b,
                                          int64_t b_pair_stride, int64_t b_half_offset, __m512 acc[kDotRows][2]) {
#pragma GCC unroll 4
  for (int q = 0; q < 16; ++q) {
    const __m512bh b0 = DotLoad(b + q * b_pair_stride);
    const __m512bh b1 = DotLoad(b + q * b_pair_stride + b_half_offset);
#pragma GCC unroll 8
    for (int i = 0; i < kDotRows; ++i) {
      const __m512bh ai = DotPair(a + i * lda, q0 + q);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
  }
}

// strip [32, C] float32 = sum over parts p of a [32, K] W_p, with W = [W_0; ...; W_{parts-1}] [parts K, C] packed
// by PackAmxWeights (wp; VNNI rows, or, tiled, every 16-pair x 16-column tile in 512 values, the two tiles of 32
// columns together: [column pair j0 / 32][k step][2 tiles][16 pairs][32]). a: 32 rows, lda elements apart, K
// a multiple of 32, C of 32.
HSR_BF16_DOT_TARGET inline void DotStripProduct(const uint16_t* a, int64_t lda, const uint16_t* wp, int wk, int c,
                                                bool tiled, int parts, float* strip) {
  const int ksteps = wk / 32, a_steps = ksteps / parts;
  for (int j0 = 0; j0 < c; j0 += 32) {
    for (int r0 = 0; r0 < 32; r0 += kDotRows) {
      __m512 acc[kDotRows][2];
      for (int i = 0; i < kDotRows; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
      for (int k = 0; k < ksteps; ++k) {
        const uint16_t* ak = a + r0 * lda;
        const int q0 = 16 * (k % a_steps);
        if (tiled) {
          DotStep16(ak, lda, q0, wp + (static_cast<int64_t>(j0 / 32) * ksteps + k) * 1024, 32, 512, acc);
        } else {
          DotStep16(ak, lda, q0, wp + static_cast<int64_t>(16 * k) * 2 * c + 2 * j0, 2 * static_cast<int64_t>(c),
                    32, acc);
        }
      }
      for (int i = 0; i < kDotRows; ++i) {
        float* out = strip + static_cast<int64_t>(r0 + i) * c + j0;
        _mm512_storeu_ps(out, acc[i][0]);
        _mm512_storeu_ps(out + 16, acc[i][1]);
      }
    }
  }
}

// Pairs of rows summed per pass of DotWeightGradBlock: its B panel (64 pairs x 32 columns, 8 KB) stays in L1.
constexpr int kDotGradPairs = 64;

// dw [Cin, C] (float32, accumulated in place) += hp^T dz over n_pad rows (even; rows past the block's zero in
// both): hpv is hp in VNNI rows (hpv[q][2i + s] = hp[2q + s][i], PackVnniPadded), dzv dz in VNNI rows (packed
// here from dz [n_pad, C], PackVnni). The reduction over rows is a reduction over pairs: row i of hp^T has pair q at
// hpv + q 2 Cin + 2 i. upper_only: only the 32 x 32 blocks of dw on and above the diagonal. Cin % 8 == 0,
// C % 32 == 0.
HSR_BF16_DOT_TARGET inline void DotWeightGradBlock(const uint16_t* hpv, const uint16_t* dz, int n_pad, int cin,
                                                   int c, float* dw, uint16_t* dzv, bool upper_only) {
  PackVnni(dz, c, n_pad, c, dzv);
  const int pairs = n_pad / 2;
  for (int q0 = 0; q0 < pairs; q0 += kDotGradPairs) {
    const int nq = pairs - q0 < kDotGradPairs ? pairs - q0 : kDotGradPairs;
    for (int j0 = 0; j0 < c; j0 += 32) {
      for (int i0 = 0; i0 < cin; i0 += kDotRows) {
        if (upper_only && j0 / 32 < i0 / 32) continue;
        __m512 acc[kDotRows][2];
        for (int i = 0; i < kDotRows; ++i) {
          acc[i][0] = _mm512_loadu_ps(dw + static_cast<int64_t>(i0 + i) * c + j0);
          acc[i][1] = _mm512_loadu_ps(dw + static_cast<int64_t>(i0 + i) * c + j0 + 16);
        }
        for (int q = q0; q < q0 + nq; ++q) {
          const uint16_t* bq = dzv + static_cast<int64_t>(q) * 2 * c + 2 * j0;
          const __m512bh b0 = DotLoad(bq);
          const __m512bh b1 = DotLoad(bq + 32);
          const uint16_t* aq = hpv + static_cast<int64_t>(q) * 2 * cin + 2 * i0;
#pragma GCC unroll 8
          for (int i = 0; i < kDotRows; ++i) {
            const __m512bh ai = DotPair(aq, i);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
          }
        }
        for (int i = 0; i < kDotRows; ++i) {
          _mm512_storeu_ps(dw + static_cast<int64_t>(i0 + i) * c + j0, acc[i][0]);
          _mm512_storeu_ps(dw + static_cast<int64_t>(i0 + i) * c + j0 + 16, acc[i][1]);
        }
      }
    }
  }
}

}  // namespace hsr_ops

#endif  // HSR_TF_OPS_BF16_DOT_CPU_H_
