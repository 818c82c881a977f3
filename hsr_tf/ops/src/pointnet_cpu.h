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

}  // namespace hsr_ops

#endif  // HSR_TF_OPS_POINTNET_CPU_H_
