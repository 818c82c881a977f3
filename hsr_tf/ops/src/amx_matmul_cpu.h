// AMX (Advanced Matrix Extensions) bfloat16 products of the shared MLPs' training pass, block by block
// (matmul_moments_ops.cc). No TensorFlow. On a CPU without AMX but with AVX512-BF16 the same functions run on
// dot-product instructions (bf16_dot_cpu.h, the same packed layouts; Bf16ProductsBackend picks once per process).
//
// Legend: n rows of a block, Cin input channels, C output channels; bfloat16 values stored as uint16.
//   z = h W     [n, C]: h [n, Cin] bfloat16 rows, W [Cin, C] bfloat16, products summed in float32 tiles and
//                       rounded once to bfloat16 (the backward pass's dh = dz W^T is the same product);
//   dW += h^T dz [Cin, C] float32 accumulators (the reduction over rows: transposed tiles of h).
// AMX multiplies tiles of 16 rows x 64 bytes: C[16 x 16 f32] += A[16 x 32 bf16] B, with B in "VNNI" layout
// (B_vnni[k/2][2j + k%2] = B[k][j]: two consecutive reduction rows interleaved). The rows of h are A tiles as
// they are; W is packed once per call.
#ifndef HSR_TF_OPS_AMX_MATMUL_CPU_H_
#define HSR_TF_OPS_AMX_MATMUL_CPU_H_

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bf16_dot_cpu.h"
#include "mlp_train_cpu.h"

namespace hsr_ops {

#define HSR_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

// Whether this process can run AMX bfloat16 tiles: the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7), and the
// kernel granted the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, Linux >= 5.16). Asked once.
// HSR_TF_OPS_MLP_ISA=avx2|baseline (tests) or HSR_TF_OPS_AMX=0 turns it off.
inline bool AmxReady() {
  static const bool ready = [] {
    const char* isa = std::getenv("HSR_TF_OPS_MLP_ISA");
    const char* amx = std::getenv("HSR_TF_OPS_AMX");
    if ((isa && std::string(isa) != "avx512") || (amx && std::string(amx) == "0")) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool avx512 = (b & (1u << 16)) && (b & (1u << 30));  // AVX512F, AVX512BW
    if (!avx512 || !(d & (1u << 24)) || !(d & (1u << 22))) return false;  // AMX-TILE, AMX-BF16
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ready;
}

// What runs the bfloat16 block products: AMX tiles where AmxReady, else AVX512-BF16 dot products where the CPU
// has them (AVX512F/BW/VL and AVX512-BF16), else nothing (the ops that need them refuse to run and the training
// path keeps TensorFlow's products). HSR_TF_OPS_AMX=0 skips the tiles (the dot products then run, e.g. to
// compare both on one CPU); HSR_TF_OPS_BF16_DOT=0 skips the dot products; HSR_TF_OPS_MLP_ISA=avx2|baseline both.
enum class Bf16Products { kNone = 0, kAmx = 1, kDot = 2 };
inline Bf16Products Bf16ProductsBackend() {
  static const Bf16Products backend = [] {
    if (AmxReady()) return Bf16Products::kAmx;
    const char* isa = std::getenv("HSR_TF_OPS_MLP_ISA");
    const char* dot = std::getenv("HSR_TF_OPS_BF16_DOT");
    if ((isa && std::string(isa) != "avx512") || (dot && std::string(dot) == "0")) return Bf16Products::kNone;
    const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
    return cpu ? Bf16Products::kDot : Bf16Products::kNone;
  }();
  return backend;
}
inline bool UseAmxTiles() { return Bf16ProductsBackend() == Bf16Products::kAmx; }

// Every tile 16 rows x 64 bytes (palette 1).
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  AmxTileConfig() {
    for (int t = 0; t < 8; ++t) {
      colsb[t] = 64;
      rows[t] = 16;
    }
  }
};

// Tile configuration of this thread, before its first tile instruction (nothing to do for the dot products).
HSR_AMX_TARGET inline void AmxConfigure() {
  static const AmxTileConfig config;
  if (UseAmxTiles()) _tile_loadconfig(&config);
}
HSR_AMX_TARGET inline void AmxRelease() {
  if (UseAmxTiles()) _tile_release();
}

// W [K, C] bfloat16 packed once per call for AmxMatMulBlock's B tiles (K, C multiples of 32). The layout follows
// the shape, as measured on this CPU (WORKSPACE_NOTES.md, "Session 2026-12-06"): for K < 128 or W under 32 KB
// its VNNI rows (PackVnni) are read fastest as they are; for K >= 128 and W of 32 KB or more every B tile's
// 16 x 64 bytes lie together in the order the product reads them ([32-column pair][32-row k step][2 tiles]),
// 20-30 % faster in the block products (in cache); and where W is 256 KB or more (it streams from L2 for every
// strip) each 32-row strip of h is also copied into tile order before its tiles are read (stage_rows), 1.25-1.9x.
struct AmxWeights {
  std::vector<uint16_t> packed;
  int k = 0, c = 0;
  bool tiled = false, stage_rows = false;
};

// w: [k, c] bfloat16 rows.
HSR_AMX_TARGET inline void PackAmxWeights(const uint16_t* w, int k, int c, AmxWeights* out) {
  out->k = k;
  out->c = c;
  // HSR_TF_OPS_AMX_PACKING=rows keeps every kernel in VNNI rows (benchmarks.amx_layers times both; read at
  // every call so that one process can compare them).
  const char* packing = std::getenv("HSR_TF_OPS_AMX_PACKING");
  out->tiled = k >= 128 && static_cast<int64_t>(k) * c * 2 >= (32 << 10) &&
               !(packing != nullptr && std::string(packing) == "rows");
  out->stage_rows = out->tiled && static_cast<int64_t>(k) * c * 2 >= (256 << 10);
  out->packed.assign(static_cast<size_t>(k) * c, 0);
  if (!out->tiled) {
    PackVnni(w, c, k, c, out->packed.data());
    return;
  }
  uint16_t* o = out->packed.data();
  for (int j0 = 0; j0 < c; j0 += 32)
    for (int k0 = 0; k0 < k; k0 += 32)
      for (int s = 0; s < 2; ++s)
        for (int p = 0; p < 16; ++p)  // tile row p: reduction rows k0 + 2p, k0 + 2p + 1 interleaved
          for (int q = 0; q < 16; ++q) {
            *o++ = w[static_cast<int64_t>(k0 + 2 * p) * c + j0 + 16 * s + q];
            *o++ = w[static_cast<int64_t>(k0 + 2 * p + 1) * c + j0 + 16 * s + q];
          }
}

// A float32 layer kernel [cin, c] rounded to bfloat16 and packed (PackAmxWeights) as it is (the B tiles of
// z = h kernel) or, transposed, as kernel^T [c, cin] (those of dh = dz kernel^T).
HSR_AMX_TARGET inline void PackAmxKernel(const float* kernel, int cin, int c, bool transposed, AmxWeights* out) {
  std::vector<uint16_t> rows(static_cast<size_t>(cin) * c);
  for (int64_t i = 0; i < cin; ++i)
    for (int64_t k = 0; k < c; ++k) Store(kernel[i * c + k], &rows[transposed ? k * cin + i : i * c + k]);
  if (transposed) {
    PackAmxWeights(rows.data(), c, cin, out);
  } else {
    PackAmxWeights(rows.data(), cin, c, out);
  }
}

// One 32-row strip (a: its first row, lda elements per row) times W into strip [32, C] float32; A tiles
// either from the rows (lda) or, kStaged, from a strip in tile order ([k step][2 tiles of 16 rows x 32]).
template <bool kTiled, bool kStaged>
HSR_AMX_TARGET inline void AmxStripProduct(const uint16_t* a, int64_t lda, const AmxWeights& w, float* strip) {
  const int cin = w.k, c = w.c, ksteps = cin / 32;
  const uint16_t* wp = w.packed.data();
  const int64_t ld_b = 2 * static_cast<int64_t>(c) * 2;  // bytes per VNNI row of W
  for (int j0 = 0; j0 < c; j0 += 32) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int k = 0; k < ksteps; ++k) {
      if (kStaged) {
        _tile_loadd(4, a + k * 1024, 64);
        _tile_loadd(5, a + k * 1024 + 512, 64);
      } else {
        _tile_loadd(4, a + 32 * k, lda * 2);
        _tile_loadd(5, a + 16 * lda + 32 * k, lda * 2);
      }
      if (kTiled) {
        const uint16_t* b = wp + (static_cast<int64_t>(j0 / 32) * ksteps + k) * 1024;
        _tile_loadd(6, b, 64);
        _tile_loadd(7, b + 512, 64);
      } else {
        const uint16_t* b = wp + static_cast<int64_t>(16 * k) * 2 * c + 2 * j0;
        _tile_loadd(6, b, ld_b);
        _tile_loadd(7, b + 32, ld_b);
      }
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, strip + j0, c * 4);
    _tile_stored(1, strip + j0 + 16, c * 4);
    _tile_stored(2, strip + 16 * static_cast<int64_t>(c) + j0, c * 4);
    _tile_stored(3, strip + 16 * static_cast<int64_t>(c) + j0 + 16, c * 4);
  }
}

// AmxStripProduct<false, false> for K = 64 (two k steps): the strip's four A tiles are loaded once and every 16
// output columns take two B tiles and four multiplies into two C tiles, instead of reloading A for every 32
// columns. The same sums in the same order (same bits); 1.1-1.3x faster at 690K rows, 64 -> 64 / 64 -> 128.
// kParts = 2: [a, a] [W_hi; W_lo] for a kernel of 128 rows carried as two bfloat16 parts (W_hi its first 64
// rows), a second pair of B tiles per 16 columns and no second load of the rows; the same sums in the same
// order as that [a, a] product.
template <int kParts>
HSR_AMX_TARGET inline void AmxStripProductK64(const uint16_t* a, int64_t lda, const AmxWeights& w, float* strip) {
  const int c = w.c;
  const uint16_t* wp = w.packed.data();
  const int64_t ld_b = 2 * static_cast<int64_t>(c) * 2;  // bytes per VNNI row of W
  _tile_loadd(2, a, lda * 2);
  _tile_loadd(3, a + 32, lda * 2);
  _tile_loadd(4, a + 16 * lda, lda * 2);
  _tile_loadd(5, a + 16 * lda + 32, lda * 2);
  for (int j0 = 0; j0 < c; j0 += 16) {
    _tile_zero(0);
    _tile_zero(1);
    for (int part = 0; part < kParts; ++part) {  // k steps 2 part, 2 part + 1
      const uint16_t* b = wp + static_cast<int64_t>(32 * part) * 2 * c + 2 * j0;
      _tile_loadd(6, b, ld_b);
      _tile_loadd(7, b + static_cast<int64_t>(16) * 2 * c, ld_b);
      _tile_dpbf16ps(0, 2, 6);
      _tile_dpbf16ps(0, 3, 7);
      _tile_dpbf16ps(1, 4, 6);
      _tile_dpbf16ps(1, 5, 7);
    }
    _tile_stored(0, strip + j0, c * 4);
    _tile_stored(1, strip + 16 * static_cast<int64_t>(c) + j0, c * 4);
  }
}

// The 32-row strip starting at a (lda elements per row), or, when it has fewer rows, a copy of them in pad
// followed by zero rows, so that no tile reads past the rows.
inline const uint16_t* StripRows(const uint16_t* a, int64_t rows, int64_t lda, uint16_t* pad) {
  if (rows == 32) return a;
  std::memcpy(pad, a, sizeof(uint16_t) * rows * lda);
  std::memset(pad + rows * lda, 0, sizeof(uint16_t) * (32 - rows) * lda);
  return pad;
}

// h [n, K] W for one block of rows (w: PackAmxWeights), 32 rows at a time: finish(strip, r0, rows) receives
// the float32 results of rows [r0, r0 + rows) in strip [32, C] (it may overwrite them). pad: 32 x K uint16 (a
// last strip of fewer than 32 rows is copied there, zero-padded, so no tile reads past h; with stage_rows every
// strip is copied there in tile order). Call AmxConfigure() first on this thread.
template <typename Finish>
HSR_AMX_TARGET inline void AmxMatMulStrips(const uint16_t* h, int64_t n, const AmxWeights& w, float* strip,
                                           uint16_t* pad, Finish finish) {
  const int cin = w.k;
  for (int64_t r0 = 0; r0 < n; r0 += 32) {
    const int64_t rows = n - r0 < 32 ? n - r0 : 32;
    const uint16_t* a = h + r0 * cin;
    if (!UseAmxTiles()) {
      DotStripProduct(StripRows(a, rows, cin, pad), cin, w.packed.data(), w.k, w.c, w.tiled, 1, strip);
    } else if (w.stage_rows) {
      for (int64_t r = 0; r < 32; ++r)
        for (int k = 0; k < cin / 32; ++k) {
          const __m512i v = r < rows ? _mm512_loadu_si512(a + r * cin + 32 * k) : _mm512_setzero_si512();
          _mm512_storeu_si512(pad + (static_cast<int64_t>(k) * 2 + r / 16) * 512 + (r % 16) * 32, v);
        }
      AmxStripProduct<true, true>(pad, 32, w, strip);
    } else {
      a = StripRows(a, rows, cin, pad);
      if (w.tiled) {
        AmxStripProduct<true, false>(a, cin, w, strip);
      } else if (cin == 64) {
        AmxStripProductK64<1>(a, cin, w, strip);
      } else {
        AmxStripProduct<false, false>(a, cin, w, strip);
      }
    }
    finish(strip, r0, rows);
  }
}

// z [n, C] (bfloat16) = h [n, K] W for one block of rows: AmxMatMulStrips with every strip rounded into z.
HSR_AMX_TARGET inline void AmxMatMulBlock(const uint16_t* h, int64_t n, const AmxWeights& w, uint16_t* z,
                                          float* strip, uint16_t* pad,
                                          void (*to_bf16)(const float*, uint16_t*, int64_t)) {
  const int64_t c = w.c;
  AmxMatMulStrips(h, n, w, strip, pad,
                  [&](const float* s, int64_t r0, int64_t rows) { to_bf16(s, z + r0 * c, rows * c); });
}

// PackVnni of `rows` rows followed by zero rows up to n_pad (even): the rows are read where they are.
HSR_AMX_TARGET inline void PackVnniPadded(const uint16_t* src, int64_t ld, int rows, int n_pad, int width,
                                          uint16_t* out) {
  const int pairs = rows / 2;
  PackVnni(src, ld, 2 * pairs, width, out);
  uint16_t* rest = out + static_cast<int64_t>(pairs) * 2 * width;
  std::memset(rest, 0, sizeof(uint16_t) * (n_pad - 2 * pairs) * width);
  if (rows % 2) {  // the last row with a zero partner
    const uint16_t* last = src + static_cast<int64_t>(rows - 1) * ld;
    for (int j = 0; j < width; ++j) rest[2 * j] = last[j];
  }
}

// Transpose of a 16 x 16 matrix of 32-bit values: out row i = column i of in (strides in 32-bit elements).
HSR_AMX_TARGET inline void Transpose16x16(const uint32_t* in, int64_t ld_in, uint32_t* out) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(in + i * ld_in);
  for (int i = 0; i < 8; ++i) {  // pairs of rows: 32-bit interleave
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // pairs of pairs: 64-bit interleave
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // Now r[4q + s] holds, in each 128-bit lane L, the 4 values of column 4L + s of rows 4q..4q+3.
  const __m512i idx_lo = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
  const __m512i idx_hi = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  for (int s = 0; s < 4; ++s) {
    // Rows 0-7 and 8-15 of column blocks: gather lane L of r[s], r[4+s], r[8+s], r[12+s].
    const __m512i a = _mm512_permutex2var_epi64(r[s], idx_lo, r[4 + s]);      // lanes 0,1 of r[s] | r[4+s]
    const __m512i b = _mm512_permutex2var_epi64(r[8 + s], idx_lo, r[12 + s]);
    const __m512i c = _mm512_permutex2var_epi64(r[s], idx_hi, r[4 + s]);      // lanes 2,3
    const __m512i d = _mm512_permutex2var_epi64(r[8 + s], idx_hi, r[12 + s]);
    // a = [r[s].L0, r[4+s].L0, r[s].L1, r[4+s].L1]; column s takes the L0 halves, column 4 + s the L1 halves.
    _mm512_storeu_si512(out + (0 + s) * 16, _mm512_shuffle_i64x2(a, b, 0x44));
    _mm512_storeu_si512(out + (4 + s) * 16, _mm512_shuffle_i64x2(a, b, 0xEE));
    _mm512_storeu_si512(out + (8 + s) * 16, _mm512_shuffle_i64x2(c, d, 0x44));
    _mm512_storeu_si512(out + (12 + s) * 16, _mm512_shuffle_i64x2(c, d, 0xEE));
  }
}

// PackVnni into tiles: out[(jt * ksteps + k) * 512 + 32 p + 2 q + s] = rows[32 k + 2 p + s][16 jt + q] for the
// n / 32 k steps of n rows (a multiple of 32) and width / 16 column tiles jt (width a multiple of 32): every B
// tile of a reduction over rows lies in 1 KB, in the order AmxWeightGradBlock reads them.
HSR_AMX_TARGET inline void PackVnniTiles(const uint16_t* rows, int64_t ld, int n, int width, uint16_t* out) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                      37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  const int ksteps = n / 32;
  for (int pair = 0; pair < n / 2; ++pair) {
    const uint16_t* r0 = rows + (2 * static_cast<int64_t>(pair)) * ld;
    const uint16_t* r1 = r0 + ld;
    uint16_t* o = out + static_cast<int64_t>(pair / 16) * 512 + (pair % 16) * 32;
    for (int j = 0; j < width; j += 32) {
      const __m512i a = _mm512_loadu_si512(r0 + j);
      const __m512i b = _mm512_loadu_si512(r1 + j);
      _mm512_storeu_si512(o + static_cast<int64_t>(j / 16) * ksteps * 512, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(o + static_cast<int64_t>(j / 16 + 1) * ksteps * 512, _mm512_permutex2var_epi16(a, hi, b));
    }
  }
}

// dw [Cin, C] (float32, accumulated in place) += hp^T dz over one block of n_pad rows (a multiple of 32; rows
// past the block's zero in both): hp in VNNI layout (hpv, PackVnniPadded) and dz [n_pad, C] bfloat16 rows. The
// reduction runs over rows, so hp^T's A tiles are 16 x 16 transposes of hp's VNNI pairs and dz is packed into
// VNNI tiles (PackVnniTiles) for the B tiles; every 32 x 32 block of dw takes all k steps in 2 x 2 tiles (each
// tile read from 1 KB that lie together: up to 1.6x faster than strided B tiles in 1 x 4 blocks). Scratch: hpt
// [n_pad * Cin], dzv [n_pad * C] uint16. Requires Cin % 32 == 0, C % 32 == 0; call AmxConfigure() first on this
// thread. upper_only: only the 32 x 32 blocks of dw on and above the diagonal (for a symmetric hp^T dz).
HSR_AMX_TARGET inline void AmxWeightGradBlock(const uint16_t* hpv, const uint16_t* dz, int n_pad, int cin, int c,
                                              float* dw, uint16_t* hpt, uint16_t* dzv, bool upper_only = false) {
  if (!UseAmxTiles()) {
    DotWeightGradBlock(hpv, dz, n_pad, cin, c, dw, dzv, upper_only);
    return;
  }
  PackVnniTiles(dz, c, n_pad, c, dzv);
  const int ksteps = n_pad / 32;
  for (int i = 0; i < cin / 16; ++i)
    for (int k = 0; k < ksteps; ++k)
      Transpose16x16(reinterpret_cast<const uint32_t*>(hpv) + static_cast<int64_t>(16 * k) * cin + 16 * i, cin,
                     reinterpret_cast<uint32_t*>(hpt + (static_cast<int64_t>(i) * ksteps + k) * 512));
  for (int i = 0; i < cin / 16; i += 2) {
    for (int j = upper_only ? i : 0; j < c / 16; j += 2) {
      float* acc = dw + static_cast<int64_t>(16 * i) * c + 16 * j;
      _tile_loadd(0, acc, c * 4);
      _tile_loadd(1, acc + 16, c * 4);
      _tile_loadd(2, acc + 16 * static_cast<int64_t>(c), c * 4);
      _tile_loadd(3, acc + 16 * static_cast<int64_t>(c) + 16, c * 4);
      const uint16_t* a0 = hpt + static_cast<int64_t>(i) * ksteps * 512;
      const uint16_t* b0 = dzv + static_cast<int64_t>(j) * ksteps * 512;
      for (int k = 0; k < ksteps; ++k) {
        _tile_loadd(4, a0 + k * 512, 64);
        _tile_loadd(5, a0 + (ksteps + k) * 512, 64);
        _tile_loadd(6, b0 + k * 512, 64);
        _tile_loadd(7, b0 + (ksteps + k) * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, acc, c * 4);
      _tile_stored(1, acc + 16, c * 4);
      _tile_stored(2, acc + 16 * static_cast<int64_t>(c), c * 4);
      _tile_stored(3, acc + 16 * static_cast<int64_t>(c) + 16, c * 4);
    }
  }
}

// ExtremesBlock (mlp_train_cpu.h) for bfloat16 z with C % 64 == 0 on AVX-512, 64 channels at a time: the
// running extremes stay in registers and four independent blocks hide the compare latency (the vectoriser
// leaves the generic loop's data-dependent updates 3-5x slower). The same results.
__attribute__((target("avx512f,avx512bw"))) inline void ExtremesBf16Avx512(
    const uint16_t* z, const int32_t* splits, int64_t groups, int c, float* zmax, float* zmin, int32_t* argmax,
    int32_t* argmin, float* zfirst) {
  for (int64_t g = 0; g < groups; ++g) {
    const uint16_t* zg = z + static_cast<int64_t>(splits[g]) * c;
    const int32_t n = splits[g + 1] - splits[g];
    for (int k0 = 0; k0 < c; k0 += 64) {
      __m512 hi[4], lo[4];
      __m512i ahi[4], alo[4];
      for (int q = 0; q < 4; ++q) {
        hi[q] = lo[q] = LoadBf16x16(zg + k0 + 16 * q);
        _mm512_storeu_ps(zfirst + g * c + k0 + 16 * q, hi[q]);
        ahi[q] = alo[q] = _mm512_setzero_si512();
      }
      for (int32_t r = 1; r < n; ++r) {
        const uint16_t* zr = zg + static_cast<int64_t>(r) * c + k0;
        const __m512i row = _mm512_set1_epi32(r);
        for (int q = 0; q < 4; ++q) {
          const __m512 v = LoadBf16x16(zr + 16 * q);
          const __mmask16 above = _mm512_cmp_ps_mask(v, hi[q], _CMP_GT_OQ);
          const __mmask16 below = _mm512_cmp_ps_mask(v, lo[q], _CMP_LT_OQ);
          hi[q] = _mm512_mask_mov_ps(hi[q], above, v);
          ahi[q] = _mm512_mask_mov_epi32(ahi[q], above, row);
          lo[q] = _mm512_mask_mov_ps(lo[q], below, v);
          alo[q] = _mm512_mask_mov_epi32(alo[q], below, row);
        }
      }
      for (int q = 0; q < 4; ++q) {
        const int64_t at = g * c + k0 + 16 * q;
        _mm512_storeu_ps(zmax + at, hi[q]);
        _mm512_storeu_ps(zmin + at, lo[q]);
        _mm512_storeu_si512(argmax + at, ahi[q]);
        _mm512_storeu_si512(argmin + at, alo[q]);
      }
    }
  }
}

}  // namespace hsr_ops

#endif  // HSR_TF_OPS_AMX_MATMUL_CPU_H_
