// Plain C++ reference implementations of the hsr_tf PointNet++ ops, one cloud at a time.
//
// No TensorFlow and no CUDA headers here: this file is used by the TensorFlow CPU OpKernels
// (pointnet_ops.cc) and, as the CPU reference, by the standalone CUDA harness (cuda_harness.cu).
//
// Legend: N points in a cloud, M centroids / queries, S = nsample or k neighbours, C channels.
// Points are float32 [N,3] row-major (x, y, z), indices int32. Squared distances are computed as
// (dx*dx + dy*dy) + dz*dz in exactly this order everywhere (C++, CUDA, and the pure-TF fallback), so
// that all backends produce bit-identical distances; builds use -ffp-contract=off / --fmad=false.
#ifndef HSR_TF_OPS_POINTNET_CPU_H_
#define HSR_TF_OPS_POINTNET_CPU_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HSR_OPS_HAVE_AVX_PATH 1
#endif

namespace hsr_ops {

inline float SquaredDistance(const float* a, const float* b) {
  const float dx = a[0] - b[0];
  const float dy = a[1] - b[1];
  const float dz = a[2] - b[2];
  return (dx * dx + dy * dy) + dz * dz;
}

// Returns the index of the first non-finite value in data[0:count], or -1 if all are finite.
inline int64_t FirstNonFinite(const float* data, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(data[i])) return i;
  }
  return -1;
}

// Farthest point sampling of one cloud. pts [n,3] -> out [m]; scratch [n].
// Starts at index 0; each step picks the point with the largest squared distance to the selected set,
// the lowest index among equal distances.
inline void FarthestPointSampleOne(const float* pts, int n, int m, int* out, float* scratch) {
  const float inf = std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) scratch[i] = inf;
  int last = 0;
  out[0] = 0;
  for (int j = 1; j < m; ++j) {
    const float* p = pts + 3 * last;
    float best = -1.0f;
    int best_i = 0;
    for (int i = 0; i < n; ++i) {
      const float d = SquaredDistance(pts + 3 * i, p);
      float t = scratch[i];
      if (d < t) {
        t = d;
        scratch[i] = d;
      }
      if (t > best) {
        best = t;
        best_i = i;
      }
    }
    out[j] = best_i;
    last = best_i;
  }
}

// Ball query for one centroid. pts [n,3], c [3] -> out [ns].
// The first ns points in index order with squared distance < r2; the rest is padded with the first one
// found. With no point in the ball, all ns entries are the index of the nearest point (lowest index on ties).
inline void BallQueryOne(const float* pts, int n, const float* c, float r2, int ns, int* out) {
  int cnt = 0;
  for (int i = 0; i < n && cnt < ns; ++i) {
    if (SquaredDistance(pts + 3 * i, c) < r2) {
      if (cnt == 0) {
        for (int l = 0; l < ns; ++l) out[l] = i;
      }
      out[cnt++] = i;
    }
  }
  if (cnt == 0) {
    float best = std::numeric_limits<float>::infinity();
    int best_i = 0;
    for (int i = 0; i < n; ++i) {
      const float d = SquaredDistance(pts + 3 * i, c);
      if (d < best) {
        best = d;
        best_i = i;
      }
    }
    for (int l = 0; l < ns; ++l) out[l] = best_i;
  }
}

// k nearest neighbours of one query. pts [n,3], q [3] -> sq_dist [k] ascending, idx [k].
// Ties are broken by the lower index. `scratch` must hold n entries.
inline void KnnOne(const float* pts, int n, const float* q, int k, float* sq_dist, int* idx,
                   std::vector<std::pair<float, int>>* scratch) {
  scratch->resize(n);
  for (int i = 0; i < n; ++i) (*scratch)[i] = {SquaredDistance(pts + 3 * i, q), i};
  std::partial_sort(scratch->begin(), scratch->begin() + k, scratch->end());  // pair < : (d, i)
  for (int j = 0; j < k; ++j) {
    sq_dist[j] = (*scratch)[j].first;
    idx[j] = (*scratch)[j].second;
  }
}

// group_points for one cloud: feat [n,c], idx [s] -> out [s,c].
inline void GroupPointsOne(const float* feat, int c, const int* idx, int64_t s, float* out) {
  for (int64_t j = 0; j < s; ++j) {
    const float* src = feat + static_cast<int64_t>(idx[j]) * c;
    std::copy(src, src + c, out + j * c);
  }
}

// Gradient of group_points for one cloud: grad_out [s,c], idx [s] -> grad_feat [n,c] (scatter-add,
// grad_feat must be zeroed by the caller).
inline void GroupPointsGradOne(const float* grad_out, int c, const int* idx, int64_t s, float* grad_feat) {
  for (int64_t j = 0; j < s; ++j) {
    float* dst = grad_feat + static_cast<int64_t>(idx[j]) * c;
    const float* src = grad_out + j * c;
    for (int l = 0; l < c; ++l) dst[l] += src[l];
  }
}

// ---------------------------------------------------------------------------------------------------
// Fast variants used by the TensorFlow CPU kernels. Same results as the reference functions above
// (element-wise float ops in the same order; max/min are exact), on a structure-of-arrays copy of the
// cloud padded to a multiple of 8, with AVX (8 lanes, chosen at run time when the CPU has it) or SSE2.
// No fused multiply-add is used, so every lane computes exactly the scalar expression.

struct CloudSoA {
  int n = 0, npad = 0;
  std::vector<float> x, y, z;
  // Copies pts [n,3]; padding coordinates are +inf (never inside a ball, never nearest).
  void Load(const float* pts, int count) {
    n = count;
    npad = (count + 7) / 8 * 8;
    const float inf = std::numeric_limits<float>::infinity();
    x.assign(npad, inf);
    y.assign(npad, inf);
    z.assign(npad, inf);
    for (int i = 0; i < n; ++i) {
      x[i] = pts[3 * i];
      y[i] = pts[3 * i + 1];
      z[i] = pts[3 * i + 2];
    }
  }
};

#ifdef HSR_OPS_HAVE_AVX_PATH
// Squared distances from p to points i..i+7 of the SoA cloud, (dx*dx + dy*dy) + dz*dz as everywhere in this
// file: the one distance expression of the AVX scans below.
__attribute__((target("avx"), always_inline)) inline __m256 SqDist8(const float* xs, const float* ys,
                                                                    const float* zs, int i, __m256 px, __m256 py,
                                                                    __m256 pz) {
  const __m256 dx = _mm256_sub_ps(_mm256_loadu_ps(xs + i), px);
  const __m256 dy = _mm256_sub_ps(_mm256_loadu_ps(ys + i), py);
  const __m256 dz = _mm256_sub_ps(_mm256_loadu_ps(zs + i), pz);
  return _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(dx, dx), _mm256_mul_ps(dy, dy)), _mm256_mul_ps(dz, dz));
}

// The largest (want_max) or smallest of the 8 lanes of v.
__attribute__((target("avx"), always_inline)) inline float Lanes8(__m256 v, bool want_max) {
  float lanes[8];
  _mm256_storeu_ps(lanes, v);
  float best = lanes[0];
  for (int l = 1; l < 8; ++l) best = want_max ? std::max(best, lanes[l]) : std::min(best, lanes[l]);
  return best;
}

// One FPS step with AVX: updates scratch with the distance to (lx,ly,lz), returns the argmax (lowest index).
__attribute__((target("avx"))) inline int FpsStepAvx(const float* xs, const float* ys, const float* zs, int npad,
                                                     float lx, float ly, float lz, float* scratch) {
  const __m256 px = _mm256_set1_ps(lx), py = _mm256_set1_ps(ly), pz = _mm256_set1_ps(lz);
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int i = 0; i < npad; i += 8) {
    const __m256 d = SqDist8(xs, ys, zs, i, px, py, pz);
    const __m256 t = _mm256_min_ps(_mm256_loadu_ps(scratch + i), d);
    _mm256_storeu_ps(scratch + i, t);
    vmax = _mm256_max_ps(vmax, t);
  }
  const float best = Lanes8(vmax, true);
  const __m256 vb = _mm256_set1_ps(best);
  for (int i = 0; i < npad; i += 8) {
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(scratch + i), vb, _CMP_EQ_OQ));
    if (mask) return i + __builtin_ctz(mask);
  }
  return 0;
}

// In-ball scan of one centroid with AVX; returns the count found (<= ns), filling out as BallQueryOne.
__attribute__((target("avx"))) inline int BallScanAvx(const float* xs, const float* ys, const float* zs, int npad,
                                                      const float* q, float r2, int ns, int* out) {
  const __m256 px = _mm256_set1_ps(q[0]), py = _mm256_set1_ps(q[1]), pz = _mm256_set1_ps(q[2]);
  const __m256 vr2 = _mm256_set1_ps(r2);
  int cnt = 0;
  for (int i = 0; i < npad && cnt < ns; i += 8) {
    const __m256 d = SqDist8(xs, ys, zs, i, px, py, pz);
    int mask = _mm256_movemask_ps(_mm256_cmp_ps(d, vr2, _CMP_LT_OQ));
    while (mask && cnt < ns) {
      const int k = i + __builtin_ctz(mask);
      mask &= mask - 1;
      if (cnt == 0) {
        for (int l = 0; l < ns; ++l) out[l] = k;
      }
      out[cnt++] = k;
    }
  }
  return cnt;
}

// Nearest point of the SoA cloud to q with AVX: squared distance and lowest index among the nearest (as
// KnnOne with k = 1: the same distance expression, ties to the lower index; padding is +inf, never nearest).
__attribute__((target("avx"))) inline int NearestAvx(const float* xs, const float* ys, const float* zs, int npad,
                                                     const float* q, float* sq_dist) {
  const __m256 px = _mm256_set1_ps(q[0]), py = _mm256_set1_ps(q[1]), pz = _mm256_set1_ps(q[2]);
  __m256 vmin = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  for (int i = 0; i < npad; i += 8) {
    vmin = _mm256_min_ps(vmin, SqDist8(xs, ys, zs, i, px, py, pz));
  }
  const float best = Lanes8(vmin, false);
  const __m256 vb = _mm256_set1_ps(best);
  for (int i = 0; i < npad; i += 8) {
    const __m256 d = SqDist8(xs, ys, zs, i, px, py, pz);
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(d, vb, _CMP_EQ_OQ));
    if (mask) {
      *sq_dist = best;
      return i + __builtin_ctz(mask);
    }
  }
  *sq_dist = best;
  return 0;
}

inline bool CpuHasAvx() {
  static const bool has = __builtin_cpu_supports("avx");
  return has;
}
#endif  // HSR_OPS_HAVE_AVX_PATH

// FPS on a SoA cloud; scratch must hold c.npad floats. Same output as FarthestPointSampleOne.
inline void FarthestPointSampleSoA(const CloudSoA& c, int m, int* out, float* scratch) {
  const float inf = std::numeric_limits<float>::infinity();
  for (int i = 0; i < c.n; ++i) scratch[i] = inf;
  for (int i = c.n; i < c.npad; ++i) scratch[i] = -inf;  // padding: never the farthest
  const float* xs = c.x.data();
  const float* ys = c.y.data();
  const float* zs = c.z.data();
  int last = 0;
  out[0] = 0;
#ifdef HSR_OPS_HAVE_AVX_PATH
  if (CpuHasAvx()) {
    for (int j = 1; j < m; ++j) {
      last = FpsStepAvx(xs, ys, zs, c.npad, xs[last], ys[last], zs[last], scratch);
      out[j] = last;
    }
    return;
  }
#endif
  for (int j = 1; j < m; ++j) {
    const float lx = xs[last], ly = ys[last], lz = zs[last];
    float best;
#if defined(__SSE2__)
    const __m128 px = _mm_set1_ps(lx), py = _mm_set1_ps(ly), pz = _mm_set1_ps(lz);
    __m128 vmax = _mm_set1_ps(-inf);
    for (int i = 0; i < c.npad; i += 4) {
      const __m128 dx = _mm_sub_ps(_mm_loadu_ps(xs + i), px);
      const __m128 dy = _mm_sub_ps(_mm_loadu_ps(ys + i), py);
      const __m128 dz = _mm_sub_ps(_mm_loadu_ps(zs + i), pz);
      const __m128 d = _mm_add_ps(_mm_add_ps(_mm_mul_ps(dx, dx), _mm_mul_ps(dy, dy)), _mm_mul_ps(dz, dz));
      // padding lanes: inf - finite = inf, d = inf, min(-inf, inf) = -inf stays
      const __m128 t = _mm_min_ps(_mm_loadu_ps(scratch + i), d);
      _mm_storeu_ps(scratch + i, t);
      vmax = _mm_max_ps(vmax, t);
    }
    float lanes[4];
    _mm_storeu_ps(lanes, vmax);
    best = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
#else
    best = -inf;
    for (int i = 0; i < c.n; ++i) {
      const float dx = xs[i] - lx, dy = ys[i] - ly, dz = zs[i] - lz;
      const float d = (dx * dx + dy * dy) + dz * dz;
      const float t = scratch[i] < d ? scratch[i] : d;
      scratch[i] = t;
      best = t > best ? t : best;
    }
#endif
    int best_i = 0;
    for (int i = 0; i < c.n; ++i) {
      if (scratch[i] == best) {
        best_i = i;
        break;
      }
    }
    out[j] = best_i;
    last = best_i;
  }
}

// Ball query of one centroid on a SoA cloud; same output as BallQueryOne.
inline void BallQuerySoA(const CloudSoA& c, const float* q, float r2, int ns, int* out) {
  const float* xs = c.x.data();
  const float* ys = c.y.data();
  const float* zs = c.z.data();
  int cnt = 0;
#ifdef HSR_OPS_HAVE_AVX_PATH
  if (CpuHasAvx()) {
    cnt = BallScanAvx(xs, ys, zs, c.npad, q, r2, ns, out);
  } else
#endif
  {
#if defined(__SSE2__)
  const __m128 px = _mm_set1_ps(q[0]), py = _mm_set1_ps(q[1]), pz = _mm_set1_ps(q[2]);
  const __m128 vr2 = _mm_set1_ps(r2);
  for (int i = 0; i < c.npad && cnt < ns; i += 4) {
    const __m128 dx = _mm_sub_ps(_mm_loadu_ps(xs + i), px);
    const __m128 dy = _mm_sub_ps(_mm_loadu_ps(ys + i), py);
    const __m128 dz = _mm_sub_ps(_mm_loadu_ps(zs + i), pz);
    const __m128 d = _mm_add_ps(_mm_add_ps(_mm_mul_ps(dx, dx), _mm_mul_ps(dy, dy)), _mm_mul_ps(dz, dz));
    int mask = _mm_movemask_ps(_mm_cmplt_ps(d, vr2));
    while (mask && cnt < ns) {
      const int k = i + __builtin_ctz(mask);
      mask &= mask - 1;
      if (cnt == 0) {
        for (int l = 0; l < ns; ++l) out[l] = k;
      }
      out[cnt++] = k;
    }
  }
#else
  for (int i = 0; i < c.n && cnt < ns; ++i) {
    const float dx = xs[i] - q[0], dy = ys[i] - q[1], dz = zs[i] - q[2];
    if ((dx * dx + dy * dy) + dz * dz < r2) {
      if (cnt == 0) {
        for (int l = 0; l < ns; ++l) out[l] = i;
      }
      out[cnt++] = i;
    }
  }
#endif
  }
  if (cnt == 0) {
    float best = std::numeric_limits<float>::infinity();
    int best_i = 0;
    for (int i = 0; i < c.n; ++i) {
      const float dx = xs[i] - q[0], dy = ys[i] - q[1], dz = zs[i] - q[2];
      const float d = (dx * dx + dy * dy) + dz * dz;
      if (d < best) {
        best = d;
        best_i = i;
      }
    }
    for (int l = 0; l < ns; ++l) out[l] = best_i;
  }
}

}  // namespace hsr_ops

#endif  // HSR_TF_OPS_POINTNET_CPU_H_
