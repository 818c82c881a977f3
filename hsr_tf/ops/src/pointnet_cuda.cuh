// CUDA launch functions of the hsr_tf PointNet++ ops. Plain C++ declarations: no TensorFlow and no CUDA
// headers, so both the TensorFlow GPU OpKernels (pointnet_ops_gpu.h) and the standalone harness
// (cuda_harness.cu) can call them. Pointers are device pointers; `stream` is a cudaStream_t (nullptr =
// default stream). Each function enqueues its kernels and returns a cudaError_t value (0 = success);
// ErrorString() turns it into text. Semantics equal the CPU reference in pointnet_cpu.h (squared distances
// computed without fused multiply-add, lowest index on ties). Data are not validated on the GPU
// (callers check shapes and arguments); an out-of-range index in group_points yields zeros / is skipped
// instead of reading or writing out of bounds.
#ifndef HSR_TF_OPS_POINTNET_CUDA_CUH_
#define HSR_TF_OPS_POINTNET_CUDA_CUH_

namespace hsr_ops {
namespace cuda {

// pts [b,n,3] -> out [b,m]; scratch: b*n floats.
int FarthestPointSample(int b, int n, int m, const float* pts, float* scratch, int* out, void* stream);
// pts [b,n,3], centroids [b,m,3] -> out [b,m,ns]; r2 = radius * radius.
int BallQuery(int b, int n, int m, const float* pts, const float* centroids, float r2, int ns, int* out,
              void* stream);
// pts [b,n,3], queries [b,m,3] -> sq_dist [b,m,k] ascending, idx [b,m,k].
int Knn(int b, int n, int m, const float* pts, const float* queries, int k, float* sq_dist, int* idx, void* stream);
// feat [b,n,c], idx [b,m,s] -> out [b,m,s,c].
int GroupPoints(int b, int n, int c, int m, int s, const float* feat, const int* idx, float* out, void* stream);
// grad [b,m,s,c], idx [b,m,s] -> grad_feat [b,n,c] (zeroed here, then atomically scatter-added).
int GroupPointsGrad(int b, int n, int c, int m, int s, const float* grad, const int* idx, float* grad_feat,
                    void* stream);
const char* ErrorString(int code);

}  // namespace cuda
}  // namespace hsr_ops

#endif  // HSR_TF_OPS_POINTNET_CUDA_CUH_
