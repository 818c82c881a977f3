// TensorFlow registration and CPU kernels of the hsr_tf PointNet++ ops.
//
// Ops: HsrFarthestPointSample, HsrBallQuery, HsrKnn, HsrGroupPoints, HsrGroupPointsGrad.
// Legend: B batch, N points, M centroids / queries, S = nsample / k, C channels.
// The per-cloud arithmetic lives in pointnet_cpu.h (shared with the CUDA harness); this file validates
// arguments (InvalidArgumentError with a message) and parallelises over the batch (or batch x centroids)
// with TensorFlow's CPU worker thread pool. When built with -DHSR_OPS_WITH_CUDA the GPU kernels from
// pointnet_cuda.cu are registered too (see build.py).
#include <cstdint>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#include "pointnet_cpu.h"

namespace hsr_ops {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

// ---------------------------------------------------------------------------------------------------
// Op registrations. Shape functions only check ranks / last dimensions known at graph-build time; the
// kernels re-check everything at run time.

static absl::Status CloudShape(InferenceContext* c, int input, ShapeHandle* out) {
  TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 3, out));
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(*out, 2), 3, &unused));
  return absl::OkStatus();
}

REGISTER_OP("HsrFarthestPointSample")
    .Input("points: float32")
    .Output("indices: int32")
    .Attr("npoint: int")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle pts;
      TF_RETURN_IF_ERROR(CloudShape(c, 0, &pts));
      int npoint;
      TF_RETURN_IF_ERROR(c->GetAttr("npoint", &npoint));
      c->set_output(0, c->MakeShape({c->Dim(pts, 0), npoint}));
      return absl::OkStatus();
    })
    .Doc("Farthest point sampling from index 0: points [B,N,3] -> indices int32 [B,npoint].");

REGISTER_OP("HsrBallQuery")
    .Input("points: float32")
    .Input("centroids: float32")
    .Output("indices: int32")
    .Attr("radius: float")
    .Attr("nsample: int")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle pts, cen;
      TF_RETURN_IF_ERROR(CloudShape(c, 0, &pts));
      TF_RETURN_IF_ERROR(CloudShape(c, 1, &cen));
      int nsample;
      TF_RETURN_IF_ERROR(c->GetAttr("nsample", &nsample));
      DimensionHandle b;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(pts, 0), c->Dim(cen, 0), &b));
      c->set_output(0, c->MakeShape({b, c->Dim(cen, 1), nsample}));
      return absl::OkStatus();
    })
    .Doc("Ball query: points [B,N,3], centroids [B,M,3] -> indices int32 [B,M,nsample].");

REGISTER_OP("HsrKnn")
    .Input("points: float32")
    .Input("queries: float32")
    .Output("sq_distances: float32")
    .Output("indices: int32")
    .Attr("k: int")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle pts, qry;
      TF_RETURN_IF_ERROR(CloudShape(c, 0, &pts));
      TF_RETURN_IF_ERROR(CloudShape(c, 1, &qry));
      int k;
      TF_RETURN_IF_ERROR(c->GetAttr("k", &k));
      DimensionHandle b;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(pts, 0), c->Dim(qry, 0), &b));
      ShapeHandle out = c->MakeShape({b, c->Dim(qry, 1), k});
      c->set_output(0, out);
      c->set_output(1, out);
      return absl::OkStatus();
    })
    .Doc("k nearest neighbours: squared distances [B,M,k] ascending and indices int32 [B,M,k].");

REGISTER_OP("HsrGroupPoints")
    .Input("features: float32")
    .Input("indices: int32")
    .Output("grouped: float32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle feat, idx;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &feat));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &idx));
      DimensionHandle b;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(feat, 0), c->Dim(idx, 0), &b));
      c->set_output(0, c->MakeShape({b, c->Dim(idx, 1), c->Dim(idx, 2), c->Dim(feat, 2)}));
      return absl::OkStatus();
    })
    .Doc("Gather: features [B,N,C], indices [B,M,S] -> [B,M,S,C].");

REGISTER_OP("HsrGroupPointsGrad")
    .Input("grad_grouped: float32")
    .Input("indices: int32")
    .Input("num_points: int32")
    .Output("grad_features: float32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle g, idx;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &g));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &idx));
      DimensionHandle n;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(2, &n));
      c->set_output(0, c->MakeShape({c->Dim(g, 0), n, c->Dim(g, 3)}));
      return absl::OkStatus();
    })
    .Doc("Scatter-add gradient of HsrGroupPoints: [B,M,S,C] -> [B,N,C].");

// ---------------------------------------------------------------------------------------------------
// Shared validation (also used by the GPU kernels, which validate shapes only).

static absl::Status CheckCloud(const Tensor& t, const char* op, const char* name) {
  if (t.dims() != 3 || t.dim_size(2) != 3) {
    return errors::InvalidArgument(op, ": ", name, " must have shape [B,N,3], found ",
                                   t.shape().DebugString());
  }
  return absl::OkStatus();
}

static absl::Status CheckSameBatch(const Tensor& a, const Tensor& b, const char* op, const char* an,
                                   const char* bn) {
  if (a.dim_size(0) != b.dim_size(0)) {
    return errors::InvalidArgument(op, ": batch size mismatch, ", an, " has ", a.dim_size(0), ", ", bn,
                                   " has ", b.dim_size(0));
  }
  return absl::OkStatus();
}

static absl::Status CheckFinite(const Tensor& t, const char* op, const char* name) {
  const int64_t bad = FirstNonFinite(t.flat<float>().data(), t.NumElements());
  if (bad >= 0) {
    return errors::InvalidArgument(op, ": ", name, " contains a non-finite coordinate (NaN or Inf) at flat index ",
                                   bad);
  }
  return absl::OkStatus();
}

static absl::Status CheckNonEmpty(const Tensor& t, const char* op, const char* name) {
  if (t.dim_size(1) < 1) {
    return errors::InvalidArgument(op, ": ", name, " is an empty cloud (N = 0); expected at least one point");
  }
  return absl::OkStatus();
}

// Argument checks of each op, shared by the CPU and GPU kernels: shapes and scalar attributes only (the CPU
// kernels then check the data: finite coordinates, indices in range).

static absl::Status CheckFpsArgs(const Tensor& points, int npoint) {
  static const char* kOp = "farthest_point_sample";
  TF_RETURN_IF_ERROR(CheckCloud(points, kOp, "points"));
  TF_RETURN_IF_ERROR(CheckNonEmpty(points, kOp, "points"));
  const int64_t n = points.dim_size(1);
  if (npoint < 1 || npoint > n) {
    return errors::InvalidArgument(kOp, ": npoint must be in [1, N] = [1, ", n, "], found ", npoint);
  }
  return absl::OkStatus();
}

static absl::Status CheckBallQueryArgs(const Tensor& points, const Tensor& centroids, float radius, int nsample) {
  static const char* kOp = "ball_query";
  TF_RETURN_IF_ERROR(CheckCloud(points, kOp, "points"));
  TF_RETURN_IF_ERROR(CheckCloud(centroids, kOp, "centroids"));
  TF_RETURN_IF_ERROR(CheckSameBatch(points, centroids, kOp, "points", "centroids"));
  TF_RETURN_IF_ERROR(CheckNonEmpty(points, kOp, "points"));
  if (nsample < 1) return errors::InvalidArgument(kOp, ": nsample must be >= 1, found ", nsample);
  if (!(radius > 0.0f && std::isfinite(radius))) {
    return errors::InvalidArgument(kOp, ": radius must be finite and > 0, found ", radius);
  }
  return absl::OkStatus();
}

static absl::Status CheckKnnArgs(const Tensor& points, const Tensor& queries, int k) {
  static const char* kOp = "knn";
  TF_RETURN_IF_ERROR(CheckCloud(points, kOp, "points"));
  TF_RETURN_IF_ERROR(CheckCloud(queries, kOp, "queries"));
  TF_RETURN_IF_ERROR(CheckSameBatch(points, queries, kOp, "points", "queries"));
  TF_RETURN_IF_ERROR(CheckNonEmpty(points, kOp, "points"));
  const int64_t n = points.dim_size(1);
  if (k < 1 || k > n) return errors::InvalidArgument(kOp, ": k must be in [1, N] = [1, ", n, "], found ", k);
  return absl::OkStatus();
}

static absl::Status CheckGroupArgs(const Tensor& features, const Tensor& idx) {
  static const char* kOp = "group_points";
  if (features.dims() != 3) {
    return errors::InvalidArgument(kOp, ": features must have shape [B,N,C], found ",
                                   features.shape().DebugString());
  }
  if (idx.dims() != 3) {
    return errors::InvalidArgument(kOp, ": indices must have shape [B,M,S], found ", idx.shape().DebugString());
  }
  return CheckSameBatch(features, idx, kOp, "features", "indices");
}

static absl::Status CheckGroupGradArgs(const Tensor& grad, const Tensor& indices, const Tensor& num_points) {
  static const char* kOp = "group_points_grad";
  if (!(grad.dims() == 4 && indices.dims() == 3 && num_points.dims() == 0)) {
    return errors::InvalidArgument(kOp, ": expected grad [B,M,S,C], indices [B,M,S], num_points scalar");
  }
  if (grad.dim_size(0) != indices.dim_size(0) || grad.dim_size(1) != indices.dim_size(1) ||
      grad.dim_size(2) != indices.dim_size(2)) {
    return errors::InvalidArgument(kOp, ": grad shape ", grad.shape().DebugString(),
                                   " does not match indices shape ", indices.shape().DebugString());
  }
  return absl::OkStatus();
}

// Runs fn(begin, end) over [0, total) on TensorFlow's CPU worker pool.
template <typename Fn>
static void ParallelFor(OpKernelContext* ctx, int64_t total, int64_t cost_per_unit, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, total, cost_per_unit, fn);
}

// ---------------------------------------------------------------------------------------------------
// CPU kernels.

class FarthestPointSampleCpu : public OpKernel {
 public:
  explicit FarthestPointSampleCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("npoint", &npoint_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& points = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckFpsArgs(points, npoint_));
    OP_REQUIRES_OK(ctx, CheckFinite(points, "farthest_point_sample", "points"));
    const int64_t b = points.dim_size(0), n = points.dim_size(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, npoint_}), &out));
    const float* p = points.flat<float>().data();
    int* o = out->flat<int>().data();
    const int nn = static_cast<int>(n), m = npoint_;
    ParallelFor(ctx, b, 10 * n * m, [&](int64_t begin, int64_t end) {
      CloudSoA cloud;
      std::vector<float> scratch;
      for (int64_t i = begin; i < end; ++i) {
        cloud.Load(p + i * nn * 3, nn);
        scratch.resize(cloud.npad);
        FarthestPointSampleSoA(cloud, m, o + i * m, scratch.data());
      }
    });
  }

 private:
  int npoint_;
};

class BallQueryCpu : public OpKernel {
 public:
  explicit BallQueryCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("radius", &radius_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nsample", &nsample_));
  }
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "ball_query";
    const Tensor& points = ctx->input(0);
    const Tensor& centroids = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckBallQueryArgs(points, centroids, radius_, nsample_));
    OP_REQUIRES_OK(ctx, CheckFinite(points, kOp, "points"));
    OP_REQUIRES_OK(ctx, CheckFinite(centroids, kOp, "centroids"));
    const int64_t b = points.dim_size(0), n = points.dim_size(1), m = centroids.dim_size(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, m, nsample_}), &out));
    const float* p = points.flat<float>().data();
    const float* c = centroids.flat<float>().data();
    int* o = out->flat<int>().data();
    const float r2 = radius_ * radius_;
    const int nn = static_cast<int>(n), ns = nsample_;
    std::vector<CloudSoA> clouds(b);
    ParallelFor(ctx, b, 10 * n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) clouds[i].Load(p + i * nn * 3, nn);
    });
    ParallelFor(ctx, b * m, 5 * n, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        BallQuerySoA(clouds[u / m], c + u * 3, r2, ns, o + u * ns);
      }
    });
  }

 private:
  float radius_;
  int nsample_;
};

class KnnCpu : public OpKernel {
 public:
  explicit KnnCpu(OpKernelConstruction* ctx) : OpKernel(ctx) { OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_)); }
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "knn";
    const Tensor& points = ctx->input(0);
    const Tensor& queries = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckKnnArgs(points, queries, k_));
    OP_REQUIRES_OK(ctx, CheckFinite(points, kOp, "points"));
    OP_REQUIRES_OK(ctx, CheckFinite(queries, kOp, "queries"));
    const int64_t b = points.dim_size(0), n = points.dim_size(1), m = queries.dim_size(1);
    Tensor* dist = nullptr;
    Tensor* idx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, m, k_}), &dist));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({b, m, k_}), &idx));
    const float* p = points.flat<float>().data();
    const float* q = queries.flat<float>().data();
    float* d = dist->flat<float>().data();
    int* o = idx->flat<int>().data();
    const int nn = static_cast<int>(n), k = k_;
#ifdef HSR_OPS_HAVE_AVX_PATH
    if (k == 1 && CpuHasAvx()) {  // nearest point: an AVX scan of the SoA cloud, no sort
      ParallelFor(ctx, b * m, 4 * n, [&](int64_t begin, int64_t end) {
        CloudSoA cloud;
        int64_t loaded = -1;
        for (int64_t u = begin; u < end; ++u) {
          const int64_t bi = u / m;
          if (bi != loaded) {
            cloud.Load(p + bi * nn * 3, nn);
            loaded = bi;
          }
          o[u] = NearestAvx(cloud.x.data(), cloud.y.data(), cloud.z.data(), cloud.npad, q + u * 3, d + u);
        }
      });
      return;
    }
#endif
    ParallelFor(ctx, b * m, 20 * n, [&](int64_t begin, int64_t end) {
      std::vector<std::pair<float, int>> scratch;
      for (int64_t u = begin; u < end; ++u) {
        const int64_t bi = u / m;
        KnnOne(p + bi * nn * 3, nn, q + u * 3, k, d + u * k, o + u * k, &scratch);
      }
    });
  }

 private:
  int k_;
};

class GroupPointsCpu : public OpKernel {
 public:
  explicit GroupPointsCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckGroupArgs(features, indices));
    const int64_t b = features.dim_size(0), n = features.dim_size(1), c = features.dim_size(2);
    const int64_t m = indices.dim_size(1), s = indices.dim_size(2);
    const int* ix = indices.flat<int>().data();
    for (int64_t i = 0; i < indices.NumElements(); ++i) {
      OP_REQUIRES(ctx, ix[i] >= 0 && ix[i] < n,
                  errors::InvalidArgument("group_points: index ", ix[i], " at flat position ", i,
                                          " is out of range [0, N) = [0, ", n, ")"));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, m, s, c}), &out));
    const float* f = features.flat<float>().data();
    float* o = out->flat<float>().data();
    ParallelFor(ctx, b * m, 2 * s * c, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int64_t bi = u / m;
        GroupPointsOne(f + bi * n * c, static_cast<int>(c), ix + u * s, s, o + u * s * c);
      }
    });
  }
};

class GroupPointsGradCpu : public OpKernel {
 public:
  explicit GroupPointsGradCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "group_points_grad";
    const Tensor& grad = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& num_points = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckGroupGradArgs(grad, indices, num_points));
    const int64_t n = num_points.scalar<int>()();
    const int64_t b = grad.dim_size(0), m = grad.dim_size(1), s = grad.dim_size(2), c = grad.dim_size(3);
    const int* ix = indices.flat<int>().data();
    for (int64_t i = 0; i < indices.NumElements(); ++i) {
      OP_REQUIRES(ctx, ix[i] >= 0 && ix[i] < n,
                  errors::InvalidArgument(kOp, ": index ", ix[i], " out of range [0, ", n, ")"));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, n, c}), &out));
    const float* g = grad.flat<float>().data();
    float* o = out->flat<float>().data();
    ParallelFor(ctx, b, 2 * m * s * c + n * c, [&](int64_t begin, int64_t end) {
      for (int64_t bi = begin; bi < end; ++bi) {
        float* dst = o + bi * n * c;
        std::fill(dst, dst + n * c, 0.0f);
        GroupPointsGradOne(g + bi * m * s * c, static_cast<int>(c), ix + bi * m * s, m * s, dst);
      }
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("HsrFarthestPointSample").Device(DEVICE_CPU), FarthestPointSampleCpu);
REGISTER_KERNEL_BUILDER(Name("HsrBallQuery").Device(DEVICE_CPU), BallQueryCpu);
REGISTER_KERNEL_BUILDER(Name("HsrKnn").Device(DEVICE_CPU), KnnCpu);
REGISTER_KERNEL_BUILDER(Name("HsrGroupPoints").Device(DEVICE_CPU), GroupPointsCpu);
REGISTER_KERNEL_BUILDER(Name("HsrGroupPointsGrad").Device(DEVICE_CPU).HostMemory("num_points"),
                        GroupPointsGradCpu);

}  // namespace hsr_ops

#ifdef HSR_OPS_WITH_CUDA
#include "pointnet_ops_gpu.h"
#endif
