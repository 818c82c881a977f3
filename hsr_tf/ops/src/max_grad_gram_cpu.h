// The max layer's backward pass without its [R, C] product (HsrBatchNormReluMaxGradProduct's default path).
//
// Legend: h [R, Cin] bfloat16 (the layer's input rows), W [Cin, C] float32 (the kernel, used as bfloat16 by the
// forward product z = h W), w [R] row weights (1 without), groups g of rows [splits[g], splits[g+1]), one argmax
// row per group and channel. From the backward sums (k1, a, b as in GradConstants; inv, mean as in Affine):
//
//   dz_r = P_r - w_r (u + d * z_r),  d = k1 inv b,  u = k1 a - d mean    (z_r = W^T h_r, W rounded to bfloat16)
//
// where P_r = k1 * dy_r is nonzero only where row r is its group's argmax of a channel whose pooled output is
// positive: at most C entries per group, against C per row for the dense part. The dense part is linear in h_r,
// so with M = W diag(d) W^T [Cin, Cin], s = sum_r w_r h_r [Cin] and G = sum_r w_r h_r h_r^T [Cin, Cin]:
//
//   dh_r = W P_r - w_r (W u + M h_r)                      (h M on AMX tiles)
//   dW   = sum_r h_r P_r^T - s u^T - G W diag(d)          (G: a Cin x Cin reduction over rows, on AMX tiles)
//
// Per row that is Cin^2 multiply-adds for h M (2 Cin^2 up to Cin = 64, where M is carried as two bfloat16 parts,
// see MaxGradGram) and Cin^2 for G (half of it: G is symmetric), against 3 Cin C for recomputing z, dh = dz W^T
// and dW = h^T dz (C = 2 Cin in PointNet++'s max layers), and no [R, C] pass at all (no z, no dz). Numerically it
// is the same gradient with other roundings: M's where the recomputing path rounds every dz, and w_r h_r rounded
// to bfloat16 for G's tiles. Chunks of consecutive blocks sum their partials in float32 and the chunks are added
// in order (double), so results do not depend on the number of threads.
#ifndef HSR_TF_OPS_MAX_GRAD_GRAM_CPU_H_
#define HSR_TF_OPS_MAX_GRAD_GRAM_CPU_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx_matmul_cpu.h"
#include "mlp_train_support.h"

namespace hsr_ops {
namespace mlp_train {

struct MaxGradGramInputs {
  const uint16_t* h;         // [R, Cin] bfloat16
  const float* kernel;       // [Cin, C]
  const float* w;            // [R] or nullptr
  const int32_t* splits;     // [G + 1]
  const int32_t* argmax;     // [G, C], row within the group
  const uint16_t* dpooled;   // [G, C] bfloat16
  const float* zsel;         // [G, C], z at the argmax row
  int64_t r, cin, c, g;
  int64_t per_block;         // groups per block
  int64_t max_rows;          // rows of the largest block
  // The pair of layers (HsrBatchNormReluMaxGradProductPair): h is then the previous layer's z [R, Cin], whose
  // BatchNorm + ReLU (constants `prev`) forms each block's rows first, and the previous layer's backward sums
  // (GradSumsBlock over dh and z_prev) are added into prev_dbeta, prev_dgamma [Cin] while dh's rows are in cache.
  const Affine* prev = nullptr;
  double* prev_dbeta = nullptr;
  double* prev_dgamma = nullptr;
};

// One block's sparse part. Its entries (channel k, P_r[k]) are listed by row in CSR form (row_start [rows + 1],
// entry_k, entry_coef; in channel order within a row), for dh's W P_r in the epilogue of h M, and
// pt [C, Cin] (sum_r P_r h_r^T, transposed) is accumulated channel by channel, 32 input channels at a time
// in registers. coef, at: scratch of groups * C. (Adding W P_r into a [rows, Cin] float buffer instead, and
// every group touching all C rows of pt, ran 2-4x slower: neither stays in L1.)
HSR_AMX_TARGET inline void GramSparseBlock(const MaxGradGramInputs& in, const Affine& af, const GradConstants& gc,
                                           const uint16_t* hb, int64_t g0, int64_t groups, float* pt, float* coef,
                                           int32_t* at, int32_t* row_start, int32_t* entry_k, float* entry_coef) {
  const int64_t cin = in.cin, c = in.c, first = in.splits[g0];
  const int64_t rows = in.splits[g0 + groups] - first;
  std::fill(row_start, row_start + rows + 1, 0);
  for (int64_t gi = 0; gi < groups; ++gi) {
    const int64_t base = in.splits[g0 + gi] - first;
    for (int64_t k = 0; k < c; ++k) {
      const int64_t e = (g0 + gi) * c + k;
      // The ReLU closed at the group's largest y: no gradient.
      const bool open = in.zsel[e] * af.scale[k] + af.shift[k] > 0.0f;
      const float f = open ? gc.k1[k] * ToFloat(in.dpooled[e]) : 0.0f;
      const int32_t row = static_cast<int32_t>(base + in.argmax[e]);
      coef[k * groups + gi] = f;
      at[k * groups + gi] = row;
      row_start[row + 1] += f != 0.0f;
    }
  }
  for (int64_t r = 0; r < rows; ++r) row_start[r + 1] += row_start[r];
  // Fill by row (a group's rows are its own, so visiting groups, then channels, keeps channel order per row).
  for (int64_t gi = 0; gi < groups; ++gi) {
    for (int64_t k = 0; k < c; ++k) {
      const float f = coef[k * groups + gi];
      if (f == 0.0f) continue;
      const int32_t slot = row_start[at[k * groups + gi]]++;
      entry_k[slot] = static_cast<int32_t>(k);
      entry_coef[slot] = f;
    }
  }
  for (int64_t r = rows; r > 0; --r) row_start[r] = row_start[r - 1];  // undo the fill's advance
  row_start[0] = 0;
  for (int64_t i0 = 0; i0 < cin; i0 += 32) {
    for (int64_t k = 0; k < c; ++k) {
      __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();
      for (int64_t gi = 0; gi < groups; ++gi) {
        const __m512 f = _mm512_set1_ps(coef[k * groups + gi]);
        const uint16_t* hr = hb + static_cast<int64_t>(at[k * groups + gi]) * cin + i0;
        p0 = _mm512_add_ps(p0, _mm512_mul_ps(f, LoadBf16x16(hr)));
        p1 = _mm512_add_ps(p1, _mm512_mul_ps(f, LoadBf16x16(hr + 16)));
      }
      float* pk = pt + k * cin + i0;
      _mm512_storeu_ps(pk, _mm512_add_ps(_mm512_loadu_ps(pk), p0));
      _mm512_storeu_ps(pk + 16, _mm512_add_ps(_mm512_loadu_ps(pk + 16), p1));
    }
  }
}

// One row of dh in float32, in place of t = (h M)_r: t = W P_r - w_r (W u + t), W P_r summed over the row's n
// entries (channel k[e], coefficient f[e]) in their order. wt: W^T [C, Cin].
HSR_AMX_TARGET inline void GramDhRow(float* t, float wr, const float* wu, const float* wt, int64_t cin,
                                     const int32_t* k, const float* f, int32_t n) {
  const __m512 w = _mm512_set1_ps(wr);
  for (int64_t i0 = 0; i0 < cin; i0 += 16) {
    __m512 acc = _mm512_setzero_ps();
    for (int32_t e = 0; e < n; ++e) {
      acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(f[e]), _mm512_loadu_ps(wt + k[e] * cin + i0)));
    }
    const __m512 dense = _mm512_mul_ps(w, _mm512_add_ps(_mm512_loadu_ps(wu + i0), _mm512_loadu_ps(t + i0)));
    _mm512_storeu_ps(t + i0, _mm512_sub_ps(acc, dense));
  }
}

// w_r h_r rounded to bfloat16 into wh [n_pad, Cin] (zero rows past `rows`), and s [Cin] += their sum over rows.
HSR_AMX_TARGET inline void GramWeightedRows(const uint16_t* h, const float* w, int64_t rows, int64_t n_pad,
                                            int64_t cin, uint16_t* wh, float* s, float* scratch) {
  for (int64_t r = 0; r < rows; ++r) {
    const float wr = w ? w[r] : 1.0f;
    const uint16_t* __restrict hr = h + r * cin;
    for (int64_t i = 0; i < cin; ++i) scratch[i] = wr * ToFloat(hr[i]);
    StoreBf16Rows()(scratch, wh + r * cin, cin);
    // s from the rounded values that G's tiles read, so that s u^T and G W diag(d) (which largely cancel in
    // dW) sum the same numbers.
    for (int64_t i = 0; i < cin; ++i) s[i] += ToFloat(wh[r * cin + i]);
  }
  std::fill(wh + rows * cin, wh + n_pad * cin, uint16_t{0});
}

// h [n, Cin] [M_hi; M_lo] (mv: the [2 Cin, Cin] kernel; or h M for a [Cin, Cin] one), 32 rows at a time, as
// AmxMatMulStrips: for Cin = 64 in VNNI rows the strip's A tiles serve both halves (AmxStripProductK64<2>);
// otherwise each strip is copied as [h_r, h_r] rows (hh: 32 x 2 Cin) and multiplied as one product.
// pad: 32 x 2 Cin.
template <typename Finish>
HSR_AMX_TARGET inline void GramStrips(const uint16_t* h, int64_t n, int64_t cin, const AmxWeights& mv, float* strip,
                                      uint16_t* pad, uint16_t* hh, Finish finish) {
  if (mv.k == cin) {  // M rounded once: h M
    AmxMatMulStrips(h, n, mv, strip, pad, finish);
    return;
  }
  const bool k64 = cin == 64 && !mv.tiled && !mv.stage_rows;
  for (int64_t r0 = 0; r0 < n; r0 += 32) {
    const int64_t rows = n - r0 < 32 ? n - r0 : 32;
    if (!UseAmxTiles()) {  // the dot products read each row's pairs twice, as [h_r, h_r]
      DotStripProduct(StripRows(h + r0 * cin, rows, cin, pad), cin, mv.packed.data(), mv.k, mv.c, mv.tiled, 2,
                      strip);
    } else if (k64) {
      AmxStripProductK64<2>(StripRows(h + r0 * cin, rows, cin, pad), cin, mv, strip);
    } else {
      for (int64_t r = 0; r < 32; ++r) {
        uint16_t* dst = hh + r * 2 * cin;
        if (r < rows) {
          std::memcpy(dst, h + (r0 + r) * cin, sizeof(uint16_t) * cin);
          std::memcpy(dst + cin, h + (r0 + r) * cin, sizeof(uint16_t) * cin);
        } else {
          std::memset(dst, 0, sizeof(uint16_t) * 2 * cin);
        }
      }
      AmxMatMulStrips(hh, 32, mv, strip, pad, [](float*, int64_t, int64_t) {});
    }
    finish(strip, r0, rows);
  }
}

// dh_prev [R, Cin] bfloat16 and dkernel [Cin, C] float32 as in the legend.
// Partials are summed per chunk of consecutive blocks, at most max_chunks of them (as the op's other path).
inline void MaxGradGram(OpKernelContext* ctx, const MaxGradGramInputs& in, const Affine& af,
                        const GradConstants& gc, int64_t max_chunks, uint16_t* dh_out, float* dkernel) {
  const int64_t cin = in.cin, c = in.c;
  // The kernel as the forward product used it: rounded to bfloat16.
  std::vector<float> kw(cin * c);
  for (int64_t i = 0; i < cin * c; ++i) {
    uint16_t v;
    Store(in.kernel[i], &v);
    kw[i] = ToFloat(v);
  }
  // The per-call constants, in double: d, u, W u, M = W diag(d) W^T, and W^T in float for the sparse part.
  std::vector<double> d(c), u(c), wd(cin * c);
  for (int64_t k = 0; k < c; ++k) {
    d[k] = static_cast<double>(gc.k1[k]) * af.inv[k] * gc.b[k];
    u[k] = static_cast<double>(gc.k1[k]) * gc.a[k] - d[k] * af.mean[k];
  }
  std::vector<float> wu(cin), m(cin * cin), wt(c * cin);
  for (int64_t i = 0; i < cin; ++i) {
    double acc = 0.0;
    for (int64_t k = 0; k < c; ++k) {
      acc += kw[i * c + k] * u[k];
      wd[i * c + k] = kw[i * c + k] * d[k];
      wt[k * cin + i] = kw[i * c + k];
    }
    wu[i] = static_cast<float>(acc);
  }
  // M row by row, j innermost (the same sums over k in the same order, but vectorised: Cin^2 C multiply-adds, 4M
  // at the second level's 128 -> 256), rows over the worker threads (each row's sums are one thread's).
  ParallelBlocks(ctx, cin, 4 * c * cin, [&](int64_t begin, int64_t end) {
    std::vector<double> mrow(cin);
    for (int64_t i = begin; i < end; ++i) {
      std::fill(mrow.begin(), mrow.end(), 0.0);
      for (int64_t k = 0; k < c; ++k) {
        const double t = wd[i * c + k];
        const float* __restrict wk = wt.data() + k * cin;
        for (int64_t j = 0; j < cin; ++j) mrow[j] += t * wk[j];
      }
      for (int64_t j = 0; j < cin; ++j) m[i * cin + j] = static_cast<float>(mrow[j]);
    }
  });
  // M's B tiles: dh's dense part is h M, which largely cancels W u (it is W (u + d * z_r), centred). Up to
  // Cin = 64, M is split into bfloat16 M_hi + M_lo and multiplied as [h, h] [M_hi; M_lo] (float32 sums on the
  // tiles; at Cin = 64 the strip's A tiles serve both halves): on small row counts the one rounding of M showed
  // in dh (float64 checks; whole set-abstraction levels against the two-step path). From Cin = 128 the second
  // half doubles the product's tile loads, and at the network's row counts the error did not change (measured:
  // 4000 rows 128 -> 256, 2.4e-3 of dh's norm either way), so M is rounded once there.
  const bool split = cin <= 64;
  std::vector<uint16_t> m2((split ? 2 : 1) * cin * cin);
  for (int64_t i = 0; i < cin * cin; ++i) {
    Store(m[i], &m2[i]);
    if (split) Store(m[i] - ToFloat(m2[i]), &m2[cin * cin + i]);
  }
  AmxWeights mv;
  PackAmxWeights(m2.data(), static_cast<int>((split ? 2 : 1) * cin), static_cast<int>(cin), &mv);
  const int64_t num_blocks = (in.g + in.per_block - 1) / in.per_block;
  const int64_t num_chunks = std::max<int64_t>(1, std::min(max_chunks, num_blocks));
  const int64_t per_chunk = (num_blocks + num_chunks - 1) / num_chunks;
  const int64_t pad_rows = (in.max_rows + 31) / 32 * 32;
  // Per chunk: G [Cin, Cin], s [Cin], sum_r P_r h_r^T as [C, Cin].
  std::vector<float> part_g(num_chunks * cin * cin, 0.0f), part_s(num_chunks * cin, 0.0f),
      part_p(num_chunks * c * cin, 0.0f);
  // The previous layer's backward sums per chunk (pair only): dbeta, then dgamma.
  std::vector<double> part_prev(in.prev != nullptr ? num_chunks * 2 * cin : 0, 0.0);
  const int cini = static_cast<int>(cin);
  ParallelBlocks(ctx, num_chunks, 8 * per_chunk * in.max_rows * (2 * cin + c), [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> hpv(pad_rows * cin), hpt(pad_rows * cin), wh(pad_rows * cin), whv(pad_rows * cin),
        hh(32 * 2 * cin), pad(32 * 2 * cin);
    std::vector<float> strip(32 * cin), scratch(cin), coef(in.per_block * c), entry_coef(in.per_block * c),
        sums_scratch(2 * cin);
    std::vector<uint16_t> hrows(in.prev != nullptr ? in.max_rows * cin : 0);
    std::vector<int32_t> at(in.per_block * c), entry_k(in.per_block * c), row_start(in.max_rows + 1);
    AmxConfigure();
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      for (int64_t b = chunk * per_chunk; b < std::min(num_blocks, (chunk + 1) * per_chunk); ++b) {
        const int64_t g0 = b * in.per_block, groups = std::min(in.per_block, in.g - g0);
        const int64_t first = in.splits[g0], rows = in.splits[g0 + groups] - first;
        if (rows == 0) continue;
        const int64_t n_pad = (rows + 31) / 32 * 32;
        const uint16_t* hb = in.h + first * cin;
        const float* wb = in.w ? in.w + first : nullptr;
        if (in.prev != nullptr) {  // the block's rows from the previous layer's z (pair)
          Run<ApplyBlockOp>(hb, rows, cini, in.prev->scale.data(), in.prev->shift.data(), hrows.data(),
                            scratch.data());
          hb = hrows.data();
        }
        // The weighted rows first: they stream the block's h from memory, so that the sparse part reads its
        // scattered rows from cache (the other order took twice as long).
        GramWeightedRows(hb, wb, rows, n_pad, cin, wh.data(), part_s.data() + chunk * cin, scratch.data());
        GramSparseBlock(in, af, gc, hb, g0, groups, part_p.data() + chunk * c * cin, coef.data(), at.data(),
                        row_start.data(), entry_k.data(), entry_coef.data());
        PackVnniPadded(hb, cin, static_cast<int>(rows), static_cast<int>(n_pad), cini, hpv.data());
        // G is symmetric: its blocks above the diagonal only (mirrored below).
        AmxWeightGradBlock(hpv.data(), wh.data(), static_cast<int>(n_pad), cini, cini,
                           part_g.data() + chunk * cin * cin, hpt.data(), whv.data(), true);
        // dh_r = W P_r - w_r (W u + (h M)_r), rounded once per strip.
        GramStrips(hb, rows, cin, mv, strip.data(), pad.data(), hh.data(), [&](float* s, int64_t r0, int64_t nr) {
          for (int64_t rr = 0; rr < nr; ++rr) {
            const int64_t row = r0 + rr;
            GramDhRow(s + rr * cin, wb ? wb[row] : 1.0f, wu.data(), wt.data(), cin, entry_k.data() + row_start[row],
                      entry_coef.data() + row_start[row], row_start[row + 1] - row_start[row]);
          }
          uint16_t* dh_rows = dh_out + (first + r0) * cin;
          StoreBf16Rows()(s, dh_rows, nr * cin);
          if (in.prev != nullptr) {  // the previous layer's sums from the rounded dh, as GradSums reads it
            double* sums = part_prev.data() + chunk * 2 * cin;
            Run<GradSumsBlockOp>(dh_rows, in.h + (first + r0) * cin, nr, cini, in.prev->scale.data(),
                                 in.prev->shift.data(), in.prev->mean.data(), in.prev->inv.data(), sums, sums + cin,
                                 sums_scratch.data());
          }
        });
      }
    }
    AmxRelease();
  });
  // The chunks in order, in double; then dW = P^T - s u^T - G (W diag(d)).
  std::vector<double> gsum(cin * cin, 0.0), ssum(cin, 0.0), psum(c * cin, 0.0);
  for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
    for (int64_t i = 0; i < cin * cin; ++i) gsum[i] += part_g[chunk * cin * cin + i];
    for (int64_t i = 0; i < cin; ++i) ssum[i] += part_s[chunk * cin + i];
    for (int64_t i = 0; i < c * cin; ++i) psum[i] += part_p[chunk * c * cin + i];
  }
  if (in.prev != nullptr) {
    std::fill(in.prev_dbeta, in.prev_dbeta + cin, 0.0);
    std::fill(in.prev_dgamma, in.prev_dgamma + cin, 0.0);
    for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
      for (int64_t i = 0; i < cin; ++i) {
        in.prev_dbeta[i] += part_prev[chunk * 2 * cin + i];
        in.prev_dgamma[i] += part_prev[chunk * 2 * cin + cin + i];
      }
    }
  }
  // dW row by row over the worker threads (Cin^2 C multiply-adds again).
  ParallelBlocks(ctx, cin, 4 * c * cin, [&](int64_t begin, int64_t end) {
    std::vector<double> row(c);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t k = 0; k < c; ++k) row[k] = psum[k * cin + i] - ssum[i] * u[k];
      for (int64_t j = 0; j < cin; ++j) {
        const double gij = j / 32 < i / 32 ? gsum[j * cin + i] : gsum[i * cin + j];
        for (int64_t k = 0; k < c; ++k) row[k] -= gij * wd[j * c + k];
      }
      for (int64_t k = 0; k < c; ++k) dkernel[i * c + k] = static_cast<float>(row[k]);
    }
  });
}

}  // namespace mlp_train
}  // namespace hsr_ops

#endif  // HSR_TF_OPS_MAX_GRAD_GRAM_CPU_H_
