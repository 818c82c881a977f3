// Standalone test of the CUDA kernels (pointnet_cuda.cu) against the CPU reference (pointnet_cpu.h).
// No TensorFlow. Build:  python -m hsr_tf.ops.build --cuda-harness /tmp/hsr_cuda_harness
//                   or:  nvcc -O2 -std=c++17 --fmad=false -I hsr_tf/ops/src hsr_tf/ops/src/pointnet_cuda.cu \
//                             hsr_tf/ops/src/cuda_harness.cu -o /tmp/hsr_cuda_harness
// Run: /tmp/hsr_cuda_harness   -> prints one line per check; exit 0 all passed, 1 a mismatch, 2 no GPU.
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "pointnet_cpu.h"
#include "pointnet_cuda.cuh"

namespace {

int g_failures = 0;

#define CHECK_CUDA(expr)                                                                \
  do {                                                                                  \
    const cudaError_t e_ = (expr);                                                      \
    if (e_ != cudaSuccess) {                                                            \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

void CheckLaunch(int code, const char* what) {
  if (code != 0) {
    std::printf("launch of %s failed: %s\n", what, hsr_ops::cuda::ErrorString(code));
    std::exit(1);
  }
  CHECK_CUDA(cudaDeviceSynchronize());
}

template <typename T>
T* ToDevice(const std::vector<T>& h) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, sizeof(T) * (h.size() ? h.size() : 1)));
  CHECK_CUDA(cudaMemcpy(d, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<T> ToHost(const T* d, size_t n) {
  std::vector<T> h(n);
  CHECK_CUDA(cudaMemcpy(h.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost));
  return h;
}

template <typename T>
void Report(const char* what, const std::vector<T>& got, const std::vector<T>& want, double tol = 0.0) {
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i])) > tol) ++bad;
  }
  std::printf("%-46s %s (%zu / %zu mismatches)\n", what, bad ? "FAIL" : "PASS", bad, got.size());
  if (bad) ++g_failures;
}

void RunCase(int b, int n, int m, int ns, float radius, int c, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> pts(static_cast<size_t>(b) * n * 3), cen(static_cast<size_t>(b) * m * 3);
  for (auto& v : pts) v = normal(gen);
  for (auto& v : cen) v = normal(gen);
  std::vector<float> feat(static_cast<size_t>(b) * n * c);
  for (auto& v : feat) v = normal(gen);
  char label[128];

  float* d_pts = ToDevice(pts);
  float* d_cen = ToDevice(cen);
  float* d_feat = ToDevice(feat);

  // FPS
  std::vector<int> fps_ref(static_cast<size_t>(b) * m);
  std::vector<float> scratch(n);
  for (int i = 0; i < b; ++i) hsr_ops::FarthestPointSampleOne(&pts[i * n * 3], n, m, &fps_ref[i * m], scratch.data());
  float* d_scratch = nullptr;
  int* d_fps = nullptr;
  CHECK_CUDA(cudaMalloc(&d_scratch, sizeof(float) * b * n));
  CHECK_CUDA(cudaMalloc(&d_fps, sizeof(int) * b * m));
  auto t0 = std::chrono::steady_clock::now();
  CheckLaunch(hsr_ops::cuda::FarthestPointSample(b, n, m, d_pts, d_scratch, d_fps, nullptr), "fps");
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::snprintf(label, sizeof(label), "fps B=%d N=%d M=%d (%.2f ms)", b, n, m, ms);
  Report(label, ToHost(d_fps, fps_ref.size()), fps_ref);

  // ball query
  const float r2 = radius * radius;
  std::vector<int> bq_ref(static_cast<size_t>(b) * m * ns);
  for (int i = 0; i < b; ++i)
    for (int j = 0; j < m; ++j)
      hsr_ops::BallQueryOne(&pts[i * n * 3], n, &cen[(i * m + j) * 3], r2, ns, &bq_ref[(i * m + j) * ns]);
  int* d_bq = nullptr;
  CHECK_CUDA(cudaMalloc(&d_bq, sizeof(int) * bq_ref.size()));
  CheckLaunch(hsr_ops::cuda::BallQuery(b, n, m, d_pts, d_cen, r2, ns, d_bq, nullptr), "ball_query");
  std::snprintf(label, sizeof(label), "ball_query B=%d N=%d M=%d S=%d r=%.2f", b, n, m, ns, radius);
  Report(label, ToHost(d_bq, bq_ref.size()), bq_ref);

  // kNN
  const int k = ns < n ? ns : n;
  std::vector<float> kd_ref(static_cast<size_t>(b) * m * k);
  std::vector<int> ki_ref(kd_ref.size());
  std::vector<std::pair<float, int>> tmp;
  for (int i = 0; i < b; ++i)
    for (int j = 0; j < m; ++j)
      hsr_ops::KnnOne(&pts[i * n * 3], n, &cen[(i * m + j) * 3], k, &kd_ref[(i * m + j) * k], &ki_ref[(i * m + j) * k],
                      &tmp);
  float* d_kd = nullptr;
  int* d_ki = nullptr;
  CHECK_CUDA(cudaMalloc(&d_kd, sizeof(float) * kd_ref.size()));
  CHECK_CUDA(cudaMalloc(&d_ki, sizeof(int) * ki_ref.size()));
  CheckLaunch(hsr_ops::cuda::Knn(b, n, m, d_pts, d_cen, k, d_kd, d_ki, nullptr), "knn");
  std::snprintf(label, sizeof(label), "knn indices B=%d N=%d M=%d k=%d", b, n, m, k);
  Report(label, ToHost(d_ki, ki_ref.size()), ki_ref);
  std::snprintf(label, sizeof(label), "knn squared distances (bitwise)");
  Report(label, ToHost(d_kd, kd_ref.size()), kd_ref);

  // group_points and gradient, with the ball-query indices
  std::vector<float> gp_ref(static_cast<size_t>(b) * m * ns * c), grad(gp_ref.size()), gf_ref(feat.size(), 0.0f);
  for (auto& v : grad) v = normal(gen);
  for (int i = 0; i < b; ++i) {
    hsr_ops::GroupPointsOne(&feat[i * n * c], c, &bq_ref[i * m * ns], static_cast<int64_t>(m) * ns,
                            &gp_ref[static_cast<size_t>(i) * m * ns * c]);
    hsr_ops::GroupPointsGradOne(&grad[static_cast<size_t>(i) * m * ns * c], c, &bq_ref[i * m * ns],
                                static_cast<int64_t>(m) * ns, &gf_ref[i * n * c]);
  }
  float* d_gp = nullptr;
  float* d_gf = nullptr;
  CHECK_CUDA(cudaMalloc(&d_gp, sizeof(float) * gp_ref.size()));
  CHECK_CUDA(cudaMalloc(&d_gf, sizeof(float) * gf_ref.size()));
  float* d_grad = ToDevice(grad);
  CheckLaunch(hsr_ops::cuda::GroupPoints(b, n, c, m, ns, d_feat, d_bq, d_gp, nullptr), "group_points");
  std::snprintf(label, sizeof(label), "group_points C=%d", c);
  Report(label, ToHost(d_gp, gp_ref.size()), gp_ref);
  CheckLaunch(hsr_ops::cuda::GroupPointsGrad(b, n, c, m, ns, d_grad, d_bq, d_gf, nullptr), "group_points_grad");
  Report("group_points_grad (atomics: tol 1e-4)", ToHost(d_gf, gf_ref.size()), gf_ref, 1e-4);

  for (void* p : {static_cast<void*>(d_pts), static_cast<void*>(d_cen), static_cast<void*>(d_feat),
                  static_cast<void*>(d_scratch), static_cast<void*>(d_fps), static_cast<void*>(d_bq),
                  static_cast<void*>(d_kd), static_cast<void*>(d_ki), static_cast<void*>(d_gp),
                  static_cast<void*>(d_gf), static_cast<void*>(d_grad)})
    cudaFree(p);
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device available: nothing tested\n");
    return 2;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  RunCase(2, 17, 5, 8, 0.8f, 3, 1);
  RunCase(4, 1000, 128, 32, 0.5f, 16, 2);
  RunCase(32, 1024, 512, 64, 0.3f, 8, 3);
  RunCase(3, 3000, 700, 16, 0.1f, 4, 4);  // many empty balls
  std::printf("%s\n", g_failures ? "SOME CHECKS FAILED" : "ALL CHECKS PASSED");
  return g_failures ? 1 : 0;
}
