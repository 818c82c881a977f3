// CUDA kernels of the hsr_tf PointNet++ ops (see pointnet_cuda.cuh). No TensorFlow headers.
// Distances use __fsub_rn/__fmul_rn/__fadd_rn so that no multiply-add is fused, matching the CPU kernels
// and the pure-TF fallback bit for bit.
#include <cuda_runtime.h>

#include <cstdint>

#include "pointnet_cuda.cuh"

namespace hsr_ops {
namespace cuda {
namespace {

constexpr int kFpsThreads = 512;

__device__ __forceinline__ float SqDist(const float* a, float bx, float by, float bz) {
  const float dx = __fsub_rn(a[0], bx), dy = __fsub_rn(a[1], by), dz = __fsub_rn(a[2], bz);
  return __fadd_rn(__fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy)), __fmul_rn(dz, dz));
}

// One block per cloud. Each thread keeps the best (largest, then lowest index) of its strided points;
// a shared-memory tree reduction picks the block's best.
__global__ void FpsKernel(int n, int m, const float* __restrict__ pts_all, float* __restrict__ scratch_all,
                          int* __restrict__ out_all) {
  __shared__ float best_v[kFpsThreads];
  __shared__ int best_i[kFpsThreads];
  const int b = blockIdx.x, tid = threadIdx.x;
  const float* pts = pts_all + static_cast<int64_t>(b) * n * 3;
  float* scratch = scratch_all + static_cast<int64_t>(b) * n;
  int* out = out_all + static_cast<int64_t>(b) * m;
  for (int i = tid; i < n; i += blockDim.x) scratch[i] = __int_as_float(0x7f800000);  // +inf
  if (tid == 0) out[0] = 0;
  int last = 0;
  __syncthreads();
  for (int j = 1; j < m; ++j) {
    const float lx = pts[3 * last], ly = pts[3 * last + 1], lz = pts[3 * last + 2];
    float bv = -1.0f;
    int bi = 0;
    for (int i = tid; i < n; i += blockDim.x) {
      const float d = SqDist(pts + 3 * i, lx, ly, lz);
      const float t = fminf(scratch[i], d);
      scratch[i] = t;
      if (t > bv) {
        bv = t;
        bi = i;
      }
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
      if (tid < stride) {
        const float v2 = best_v[tid + stride];
        const int i2 = best_i[tid + stride];
        if (v2 > best_v[tid] || (v2 == best_v[tid] && i2 < best_i[tid])) {
          best_v[tid] = v2;
          best_i[tid] = i2;
        }
      }
      __syncthreads();
    }
    last = best_i[0];
    if (tid == 0) out[j] = last;
    __syncthreads();  // everyone has read best_i[0] before it is overwritten
  }
}

__global__ void BallQueryKernel(int b, int n, int m, const float* __restrict__ pts_all,
                                const float* __restrict__ cen_all, float r2, int ns, int* __restrict__ out_all) {
  const int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u >= static_cast<int64_t>(b) * m) return;
  const float* pts = pts_all + (u / m) * n * 3;
  const float* c = cen_all + u * 3;
  int* out = out_all + u * ns;
  int cnt = 0;
  for (int i = 0; i < n && cnt < ns; ++i) {
    if (SqDist(pts + 3 * i, c[0], c[1], c[2]) < r2) {
      if (cnt == 0) {
        for (int l = 0; l < ns; ++l) out[l] = i;
      }
      out[cnt++] = i;
    }
  }
  if (cnt == 0) {
    float best = __int_as_float(0x7f800000);
    int best_i = 0;
    for (int i = 0; i < n; ++i) {
      const float d = SqDist(pts + 3 * i, c[0], c[1], c[2]);
      if (d < best) {
        best = d;
        best_i = i;
      }
    }
    for (int l = 0; l < ns; ++l) out[l] = best_i;
  }
}

// One thread per query: insertion into the (ascending) output lists; strict comparisons while scanning
// points in index order keep the lower index first among equal distances.
__global__ void KnnKernel(int b, int n, int m, const float* __restrict__ pts_all, const float* __restrict__ q_all,
                          int k, float* __restrict__ dist_all, int* __restrict__ idx_all) {
  const int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u >= static_cast<int64_t>(b) * m) return;
  const float* pts = pts_all + (u / m) * n * 3;
  const float* q = q_all + u * 3;
  float* dist = dist_all + u * k;
  int* idx = idx_all + u * k;
  int filled = 0;
  for (int i = 0; i < n; ++i) {
    const float d = SqDist(pts + 3 * i, q[0], q[1], q[2]);
    if (filled == k && !(d < dist[k - 1])) continue;
    int pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && d < dist[pos - 1]) {
      dist[pos] = dist[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    dist[pos] = d;
    idx[pos] = i;
  }
}

__global__ void GroupKernel(int64_t total, int n, int c, int ms, const float* __restrict__ feat,
                            const int* __restrict__ idx, float* __restrict__ out) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / c;  // (b, m, s)
    const int ch = static_cast<int>(e % c);
    const int64_t bi = row / ms;
    const int id = idx[row];
    out[e] = (id >= 0 && id < n) ? feat[(bi * n + id) * c + ch] : 0.0f;
  }
}

__global__ void GroupGradKernel(int64_t total, int n, int c, int ms, const float* __restrict__ grad,
                                const int* __restrict__ idx, float* __restrict__ grad_feat) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / c;
    const int ch = static_cast<int>(e % c);
    const int64_t bi = row / ms;
    const int id = idx[row];
    if (id >= 0 && id < n) atomicAdd(grad_feat + (bi * n + id) * c + ch, grad[e]);
  }
}

int Blocks(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

int FarthestPointSample(int b, int n, int m, const float* pts, float* scratch, int* out, void* stream) {
  if (b == 0) return 0;
  FpsKernel<<<b, kFpsThreads, 0, static_cast<cudaStream_t>(stream)>>>(n, m, pts, scratch, out);
  return static_cast<int>(cudaGetLastError());
}

int BallQuery(int b, int n, int m, const float* pts, const float* centroids, float r2, int ns, int* out,
              void* stream) {
  const int64_t work = static_cast<int64_t>(b) * m;
  if (work == 0) return 0;
  BallQueryKernel<<<static_cast<int>((work + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      b, n, m, pts, centroids, r2, ns, out);
  return static_cast<int>(cudaGetLastError());
}

int Knn(int b, int n, int m, const float* pts, const float* queries, int k, float* sq_dist, int* idx, void* stream) {
  const int64_t work = static_cast<int64_t>(b) * m;
  if (work == 0) return 0;
  KnnKernel<<<static_cast<int>((work + 127) / 128), 128, 0, static_cast<cudaStream_t>(stream)>>>(
      b, n, m, pts, queries, k, sq_dist, idx);
  return static_cast<int>(cudaGetLastError());
}

int GroupPoints(int b, int n, int c, int m, int s, const float* feat, const int* idx, float* out, void* stream) {
  const int64_t total = static_cast<int64_t>(b) * m * s * c;
  if (total == 0) return 0;
  GroupKernel<<<Blocks(total, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(total, n, c, m * s, feat, idx,
                                                                                 out);
  return static_cast<int>(cudaGetLastError());
}

int GroupPointsGrad(int b, int n, int c, int m, int s, const float* grad, const int* idx, float* grad_feat,
                    void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaMemsetAsync(grad_feat, 0, sizeof(float) * static_cast<size_t>(b) * n * c, st);
  if (err != cudaSuccess) return static_cast<int>(err);
  const int64_t total = static_cast<int64_t>(b) * m * s * c;
  if (total == 0) return 0;
  GroupGradKernel<<<Blocks(total, 256), 256, 0, st>>>(total, n, c, m * s, grad, idx, grad_feat);
  return static_cast<int>(cudaGetLastError());
}

const char* ErrorString(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace cuda
}  // namespace hsr_ops
