// GPU OpKernels of the hsr_tf PointNet++ ops, included at the end of pointnet_ops.cc only when built with
// -DHSR_OPS_WITH_CUDA (see build.py). They need no CUDA or Eigen-GPU headers: the CUDA stream comes from
// StreamExecutor's platform_specific_handle() as a void*, and the kernels are the plain launch functions
// of pointnet_cuda.cu. Shapes and scalar arguments are validated on the host as on the CPU; the data
// themselves (non-finite coordinates, out-of-range group indices) are NOT validated on the GPU: indices out
// of range give zero features / no gradient instead of an error (documented in hsr_tf/ops/__init__.py).
#include "xla/stream_executor/stream.h"

#include "pointnet_cuda.cuh"

namespace hsr_ops {

using ::tensorflow::DEVICE_GPU;

static absl::Status GpuStream(OpKernelContext* ctx, void** stream) {
  auto* dc = ctx->op_device_context();
  if (dc == nullptr || dc->stream() == nullptr) return errors::Internal("hsr_tf ops: no GPU stream");
  *stream = dc->stream()->platform_specific_handle().stream;
  return absl::OkStatus();
}

static absl::Status LaunchStatus(int code, const char* op) {
  if (code != 0) return errors::Internal(op, ": CUDA launch failed: ", cuda::ErrorString(code));
  return absl::OkStatus();
}

class FarthestPointSampleGpu : public OpKernel {
 public:
  explicit FarthestPointSampleGpu(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("npoint", &npoint_));
  }
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "farthest_point_sample";
    const Tensor& points = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckFpsArgs(points, npoint_));
    const int64_t b = points.dim_size(0), n = points.dim_size(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, npoint_}), &out));
    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({b, n}), &scratch));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, GpuStream(ctx, &stream));
    OP_REQUIRES_OK(ctx, LaunchStatus(cuda::FarthestPointSample(
                                         static_cast<int>(b), static_cast<int>(n), npoint_, points.flat<float>().data(),
                                         scratch.flat<float>().data(), out->flat<int>().data(), stream),
                                     kOp));
  }

 private:
  int npoint_;
};

class BallQueryGpu : public OpKernel {
 public:
  explicit BallQueryGpu(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("radius", &radius_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nsample", &nsample_));
  }
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "ball_query";
    const Tensor& points = ctx->input(0);
    const Tensor& centroids = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckBallQueryArgs(points, centroids, radius_, nsample_));
    const int64_t b = points.dim_size(0), n = points.dim_size(1), m = centroids.dim_size(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, m, nsample_}), &out));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, GpuStream(ctx, &stream));
    OP_REQUIRES_OK(ctx, LaunchStatus(cuda::BallQuery(static_cast<int>(b), static_cast<int>(n), static_cast<int>(m),
                                                     points.flat<float>().data(), centroids.flat<float>().data(),
                                                     radius_ * radius_, nsample_, out->flat<int>().data(), stream),
                                     kOp));
  }

 private:
  float radius_;
  int nsample_;
};

class KnnGpu : public OpKernel {
 public:
  explicit KnnGpu(OpKernelConstruction* ctx) : OpKernel(ctx) { OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_)); }
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "knn";
    const Tensor& points = ctx->input(0);
    const Tensor& queries = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckKnnArgs(points, queries, k_));
    const int64_t b = points.dim_size(0), n = points.dim_size(1), m = queries.dim_size(1);
    Tensor* dist = nullptr;
    Tensor* idx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, m, k_}), &dist));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({b, m, k_}), &idx));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, GpuStream(ctx, &stream));
    OP_REQUIRES_OK(ctx, LaunchStatus(cuda::Knn(static_cast<int>(b), static_cast<int>(n), static_cast<int>(m),
                                               points.flat<float>().data(), queries.flat<float>().data(), k_,
                                               dist->flat<float>().data(), idx->flat<int>().data(), stream),
                                     kOp));
  }

 private:
  int k_;
};

class GroupPointsGpu : public OpKernel {
 public:
  explicit GroupPointsGpu(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckGroupArgs(features, indices));
    const int64_t b = features.dim_size(0), n = features.dim_size(1), c = features.dim_size(2);
    const int64_t m = indices.dim_size(1), s = indices.dim_size(2);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, m, s, c}), &out));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, GpuStream(ctx, &stream));
    OP_REQUIRES_OK(ctx, LaunchStatus(cuda::GroupPoints(static_cast<int>(b), static_cast<int>(n), static_cast<int>(c),
                                                       static_cast<int>(m), static_cast<int>(s),
                                                       features.flat<float>().data(), indices.flat<int>().data(),
                                                       out->flat<float>().data(), stream),
                                     "group_points"));
  }
};

class GroupPointsGradGpu : public OpKernel {
 public:
  explicit GroupPointsGradGpu(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "group_points_grad";
    const Tensor& grad = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& num_points = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckGroupGradArgs(grad, indices, num_points));
    const int64_t n = num_points.scalar<int>()();
    const int64_t b = grad.dim_size(0), m = grad.dim_size(1), s = grad.dim_size(2), c = grad.dim_size(3);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, n, c}), &out));
    void* stream = nullptr;
    OP_REQUIRES_OK(ctx, GpuStream(ctx, &stream));
    OP_REQUIRES_OK(ctx, LaunchStatus(cuda::GroupPointsGrad(static_cast<int>(b), static_cast<int>(n),
                                                           static_cast<int>(c), static_cast<int>(m),
                                                           static_cast<int>(s), grad.flat<float>().data(),
                                                           indices.flat<int>().data(), out->flat<float>().data(),
                                                           stream),
                                     kOp));
  }
};

REGISTER_KERNEL_BUILDER(Name("HsrFarthestPointSample").Device(DEVICE_GPU), FarthestPointSampleGpu);
REGISTER_KERNEL_BUILDER(Name("HsrBallQuery").Device(DEVICE_GPU), BallQueryGpu);
REGISTER_KERNEL_BUILDER(Name("HsrKnn").Device(DEVICE_GPU), KnnGpu);
REGISTER_KERNEL_BUILDER(Name("HsrGroupPoints").Device(DEVICE_GPU), GroupPointsGpu);
REGISTER_KERNEL_BUILDER(Name("HsrGroupPointsGrad").Device(DEVICE_GPU).HostMemory("num_points"), GroupPointsGradGpu);

}  // namespace hsr_ops
