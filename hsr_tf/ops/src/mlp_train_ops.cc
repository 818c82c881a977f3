// TensorFlow registration and CPU kernels of the fused training-mode BatchNorm + ReLU ops of the shared
// MLPs (see mlp_train_cpu.h for the arithmetic and hsr_tf/layers/training_path.py for their use).
//
// Ops (T = float or bfloat16; statistics float32; R rows, C channels, G groups of S = group_size rows):
//   HsrBatchNormRelu(z [R,C], gamma [C], beta [C]) -> h [R,C], mean [C], variance [C] (biased)
//   HsrBatchNormReluGrad(dh, z, gamma, beta, mean, variance) -> dz [R,C], dgamma [C], dbeta [C]
//   HsrBatchNormReluMax(z [G*S,C], gamma, beta) -> pooled [G,C], argmax int32 [G,C], mean, variance
//   HsrBatchNormReluMaxGrad(dpooled, argmax, z, gamma, beta, mean, variance) -> dz, dgamma, dbeta
// Each op makes two passes over its [R, C] inputs (moments or gradient sums, then the element-wise
// result), in blocks of rows spread over TensorFlow's CPU worker pool. Partial sums are kept per block
// and reduced in block order, so results do not depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

// The block loops are written channel-innermost for the vectoriser, which -O2 leaves mostly off.
#pragma GCC optimize("O3")
#include "mlp_train_cpu.h"

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
// Vector-width dispatch: the same inline block code compiled for AVX-512, AVX2 or the baseline ISA,
// chosen once from the CPU's feature flags.

#define HSR_BLOCK_OP(NAME)                                  \
  struct NAME##Op {                                         \
    template <typename... A>                                \
    static HSR_INLINE void Run(A... a) { NAME(a...); }      \
  };
HSR_BLOCK_OP(MomentsBlock)
HSR_BLOCK_OP(ApplyBlock)
HSR_BLOCK_OP(GradSumsBlock)
HSR_BLOCK_OP(GradApplyBlock)
HSR_BLOCK_OP(MaxBlock)
HSR_BLOCK_OP(MaxGradSumsBlock)
HSR_BLOCK_OP(MaxGradApplyBlock)

template <typename F, typename... A>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void RunAvx512(A... a) { F::Run(a...); }
template <typename F, typename... A>
__attribute__((target("avx2"))) void RunAvx2(A... a) { F::Run(a...); }

template <typename F, typename... A>
void Run(A... a) {
  static const int level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
                               ? 2 : (__builtin_cpu_supports("avx2") ? 1 : 0);
  if (level == 2) {
    RunAvx512<F>(a...);
  } else if (level == 1) {
    RunAvx2<F>(a...);
  } else {
    F::Run(a...);
  }
}

// ---------------------------------------------------------------------------------------------------
// Op registrations.

static absl::Status MatrixAndVectors(InferenceContext* c, int num_vectors, int first_vector, ShapeHandle* z) {
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, z));
  for (int i = 0; i < num_vectors; ++i) {
    ShapeHandle v;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(first_vector + i), 1, &v));
  }
  return absl::OkStatus();
}

REGISTER_OP("HsrBatchNormRelu")
    .Input("z: T")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Output("h: T")
    .Output("mean: float32")
    .Output("variance: float32")
    .Attr("T: {float, bfloat16}")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle z;
      TF_RETURN_IF_ERROR(MatrixAndVectors(c, 2, 1, &z));
      c->set_output(0, z);
      c->set_output(1, c->Vector(c->Dim(z, 1)));
      c->set_output(2, c->Vector(c->Dim(z, 1)));
      return absl::OkStatus();
    })
    .Doc("relu(BatchNorm(z)) with the batch's moments (training mode): z [R,C] -> h, mean, biased variance.");

REGISTER_OP("HsrBatchNormReluGrad")
    .Input("dh: T")
    .Input("z: T")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("mean: float32")
    .Input("variance: float32")
    .Output("dz: T")
    .Output("dgamma: float32")
    .Output("dbeta: float32")
    .Attr("T: {float, bfloat16}")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle z;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &z));
      c->set_output(0, z);
      c->set_output(1, c->Vector(c->Dim(z, 1)));
      c->set_output(2, c->Vector(c->Dim(z, 1)));
      return absl::OkStatus();
    })
    .Doc("Gradient of HsrBatchNormRelu with respect to z, gamma and beta.");

REGISTER_OP("HsrBatchNormReluMax")
    .Input("z: T")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Output("pooled: T")
    .Output("argmax: int32")
    .Output("mean: float32")
    .Output("variance: float32")
    .Attr("T: {float, bfloat16}")
    .Attr("epsilon: float")
    .Attr("group_size: int >= 1")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle z;
      TF_RETURN_IF_ERROR(MatrixAndVectors(c, 2, 1, &z));
      int s;
      TF_RETURN_IF_ERROR(c->GetAttr("group_size", &s));
      DimensionHandle g;
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(z, 0), s, /*evenly_divisible=*/true, &g));
      c->set_output(0, c->Matrix(g, c->Dim(z, 1)));
      c->set_output(1, c->Matrix(g, c->Dim(z, 1)));
      c->set_output(2, c->Vector(c->Dim(z, 1)));
      c->set_output(3, c->Vector(c->Dim(z, 1)));
      return absl::OkStatus();
    })
    .Doc("max over groups of group_size rows of relu(BatchNorm(z)) (training mode): z [G*S,C] -> pooled [G,C], "
         "argmax [G,C] (row within the group), mean, biased variance.");

REGISTER_OP("HsrBatchNormReluMaxGrad")
    .Input("dpooled: T")
    .Input("argmax: int32")
    .Input("z: T")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("mean: float32")
    .Input("variance: float32")
    .Output("dz: T")
    .Output("dgamma: float32")
    .Output("dbeta: float32")
    .Attr("T: {float, bfloat16}")
    .Attr("epsilon: float")
    .Attr("group_size: int >= 1")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle z;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &z));
      c->set_output(0, z);
      c->set_output(1, c->Vector(c->Dim(z, 1)));
      c->set_output(2, c->Vector(c->Dim(z, 1)));
      return absl::OkStatus();
    })
    .Doc("Gradient of HsrBatchNormReluMax with respect to z, gamma and beta.");

// ---------------------------------------------------------------------------------------------------
// Shared plumbing.

template <typename T> struct Storage;
template <> struct Storage<float> { using type = float; };
template <> struct Storage<::tensorflow::bfloat16> { using type = uint16_t; };

template <typename T>
static const typename Storage<T>::type* In(const Tensor& t) {
  return reinterpret_cast<const typename Storage<T>::type*>(t.flat<T>().data());
}
template <typename T>
static typename Storage<T>::type* Out(Tensor* t) {
  return reinterpret_cast<typename Storage<T>::type*>(t->flat<T>().data());
}

// Rows per block of the row-wise passes: a block's activations (<= 512 x 1024 x 4 bytes) stay in L2.
constexpr int64_t kBlockRows = 512;

template <typename Fn>
static void ParallelBlocks(OpKernelContext* ctx, int64_t num_blocks, int64_t cost_per_block, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, num_blocks, cost_per_block, fn);
}

static absl::Status CheckMatrix(const char* op, const char* name, const Tensor& t) {
  if (t.dims() != 2) return errors::InvalidArgument(op, ": ", name, " must have shape [R, C], found ",
                                                    t.shape().DebugString());
  return absl::OkStatus();
}

static absl::Status CheckChannels(const char* op, const char* name, const Tensor& t, int64_t c) {
  if (t.dims() != 1 || t.dim_size(0) != c) {
    return errors::InvalidArgument(op, ": ", name, " must have shape [", c, "] (the channels of z), found ",
                                   t.shape().DebugString());
  }
  return absl::OkStatus();
}

static absl::Status CheckGroups(const char* op, int64_t rows, int64_t s) {
  if (rows % s != 0) {
    return errors::InvalidArgument(op, ": the rows of z (", rows, ") must be a multiple of group_size (", s, ")");
  }
  return absl::OkStatus();
}

// Per-channel constants from the moments: inv = 1/sqrt(var + eps), scale = gamma * inv,
// shift = beta - mean * scale.
struct Affine {
  std::vector<float> mean, inv, scale, shift;
  Affine(const float* m, const float* v, const float* gamma, const float* beta, int64_t c, float eps)
      : mean(m, m + c), inv(c), scale(c), shift(c) {
    for (int64_t k = 0; k < c; ++k) {
      inv[k] = 1.0f / std::sqrt(v[k] + eps);
      scale[k] = gamma[k] * inv[k];
      shift[k] = beta[k] - m[k] * scale[k];
    }
  }
};

// Sums per channel of two quantities over blocks, reduced in block order: partial[block][2*C].
static void ReduceBlocks(const std::vector<double>& partial, int64_t num_blocks, int64_t c, double* first,
                         double* second) {
  std::fill(first, first + c, 0.0);
  std::fill(second, second + c, 0.0);
  for (int64_t i = 0; i < num_blocks; ++i) {
    const double* p = partial.data() + i * 2 * c;
    for (int64_t k = 0; k < c; ++k) {
      first[k] += p[k];
      second[k] += p[c + k];
    }
  }
}

// Batch moments of z [R, C] (mean, biased variance, clamped at 0) into float outputs.
template <typename S>
static void Moments(OpKernelContext* ctx, const S* z, int64_t r, int64_t c, float* mean, float* var) {
  const int64_t num_blocks = (r + kBlockRows - 1) / kBlockRows;
  std::vector<double> partial(num_blocks * 2 * c, 0.0);
  ParallelBlocks(ctx, num_blocks, 4 * kBlockRows * c, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(2 * c);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, r - r0);
      double* p = partial.data() + i * 2 * c;
      Run<MomentsBlockOp>(z + r0 * c, rows, static_cast<int>(c), p, p + c, acc.data());
    }
  });
  std::vector<double> sum(c), sumsq(c);
  ReduceBlocks(partial, num_blocks, c, sum.data(), sumsq.data());
  for (int64_t k = 0; k < c; ++k) {
    const double m = r > 0 ? sum[k] / r : 0.0;
    const double v = r > 0 ? sumsq[k] / r - m * m : 0.0;
    mean[k] = static_cast<float>(m);
    var[k] = static_cast<float>(v > 0.0 ? v : 0.0);
  }
}

// ---------------------------------------------------------------------------------------------------
// Kernels.

template <typename T>
class BatchNormReluCpu : public OpKernel {
 public:
  explicit BatchNormReluCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "batch_norm_relu";
    const Tensor& z = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckMatrix(kOp, "z", z));
    const int64_t r = z.dim_size(0), c = z.dim_size(1);
    OP_REQUIRES_OK(ctx, CheckChannels(kOp, "gamma", ctx->input(1), c));
    OP_REQUIRES_OK(ctx, CheckChannels(kOp, "beta", ctx->input(2), c));
    Tensor *h = nullptr, *mean = nullptr, *var = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, z.shape(), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({c}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({c}), &var));
    const auto* zp = In<T>(z);
    float* mp = mean->flat<float>().data();
    float* vp = var->flat<float>().data();
    Moments(ctx, zp, r, c, mp, vp);
    const Affine af(mp, vp, ctx->input(1).flat<float>().data(), ctx->input(2).flat<float>().data(), c, epsilon_);
    auto* hp = Out<T>(h);
    ParallelBlocks(ctx, (r + kBlockRows - 1) / kBlockRows, 4 * kBlockRows * c, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, r - r0);
        Run<ApplyBlockOp>(zp + r0 * c, rows, static_cast<int>(c), af.scale.data(), af.shift.data(), hp + r0 * c);
      }
    });
  }

 private:
  float epsilon_;
};

// Inputs shared by both gradient kernels: checks and the per-channel constants.
struct GradInputs {
  int64_t r = 0, c = 0;
  absl::Status Check(const char* op, const Tensor& grad, const TensorShape& grad_shape, const Tensor& z,
                     OpKernelContext* ctx, int first_vector) {
    TF_RETURN_IF_ERROR(CheckMatrix(op, "z", z));
    r = z.dim_size(0);
    c = z.dim_size(1);
    if (grad.shape() != grad_shape) {
      return errors::InvalidArgument(op, ": the incoming gradient must have shape ", grad_shape.DebugString(),
                                     ", found ", grad.shape().DebugString());
    }
    static const char* kNames[] = {"gamma", "beta", "mean", "variance"};
    for (int i = 0; i < 4; ++i) TF_RETURN_IF_ERROR(CheckChannels(op, kNames[i], ctx->input(first_vector + i), c));
    return absl::OkStatus();
  }
};

// dgamma/dbeta outputs and the constants of dz = k1 * (dy - a - xhat * b).
struct GradConstants {
  std::vector<float> k1, a, b;
  GradConstants(const Affine& af, const float* gamma, const double* dbeta, const double* dgamma, int64_t r,
                int64_t c, float* dbeta_out, float* dgamma_out)
      : k1(c), a(c), b(c) {
    for (int64_t k = 0; k < c; ++k) {
      dbeta_out[k] = static_cast<float>(dbeta[k]);
      dgamma_out[k] = static_cast<float>(dgamma[k]);
      k1[k] = gamma[k] * af.inv[k];
      a[k] = r > 0 ? static_cast<float>(dbeta[k] / r) : 0.0f;
      b[k] = r > 0 ? static_cast<float>(dgamma[k] / r) : 0.0f;
    }
  }
};

template <typename T>
class BatchNormReluGradCpu : public OpKernel {
 public:
  explicit BatchNormReluGradCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dh = ctx->input(0);
    const Tensor& z = ctx->input(1);
    GradInputs in;
    OP_REQUIRES_OK(ctx, in.Check("batch_norm_relu_grad", dh, z.shape(), z, ctx, 2));
    const int64_t r = in.r, c = in.c;
    const float* gamma = ctx->input(2).flat<float>().data();
    const Affine af(ctx->input(4).flat<float>().data(), ctx->input(5).flat<float>().data(), gamma,
                    ctx->input(3).flat<float>().data(), c, epsilon_);
    Tensor *dz = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, z.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({c}), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({c}), &dbeta));
    const auto* gp = In<T>(dh);
    const auto* zp = In<T>(z);
    const int ci = static_cast<int>(c);
    const int64_t num_blocks = (r + kBlockRows - 1) / kBlockRows;
    std::vector<double> partial(num_blocks * 2 * c, 0.0);
    ParallelBlocks(ctx, num_blocks, 8 * kBlockRows * c, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(2 * c);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, r - r0);
        double* p = partial.data() + i * 2 * c;
        Run<GradSumsBlockOp>(gp + r0 * c, zp + r0 * c, rows, ci, af.scale.data(), af.shift.data(), af.mean.data(),
                             af.inv.data(), p, p + c, acc.data());
      }
    });
    std::vector<double> sb(c), sg(c);
    ReduceBlocks(partial, num_blocks, c, sb.data(), sg.data());
    const GradConstants gc(af, gamma, sb.data(), sg.data(), r, c, dbeta->flat<float>().data(),
                           dgamma->flat<float>().data());
    auto* out = Out<T>(dz);
    ParallelBlocks(ctx, num_blocks, 8 * kBlockRows * c, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, r - r0);
        Run<GradApplyBlockOp>(gp + r0 * c, zp + r0 * c, rows, ci, af.scale.data(), af.shift.data(),
                              af.mean.data(), af.inv.data(), gc.k1.data(), gc.a.data(), gc.b.data(), out + r0 * c);
      }
    });
  }

 private:
  float epsilon_;
};

template <typename T>
class BatchNormReluMaxCpu : public OpKernel {
 public:
  explicit BatchNormReluMaxCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("group_size", &s_));
  }
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "batch_norm_relu_max";
    const Tensor& z = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckMatrix(kOp, "z", z));
    const int64_t r = z.dim_size(0), c = z.dim_size(1), s = s_;
    OP_REQUIRES_OK(ctx, CheckGroups(kOp, r, s));
    OP_REQUIRES_OK(ctx, CheckChannels(kOp, "gamma", ctx->input(1), c));
    OP_REQUIRES_OK(ctx, CheckChannels(kOp, "beta", ctx->input(2), c));
    const int64_t g = r / s;
    Tensor *pooled = nullptr, *argmax = nullptr, *mean = nullptr, *var = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({g, c}), &pooled));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({g, c}), &argmax));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({c}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({c}), &var));
    const auto* zp = In<T>(z);
    float* mp = mean->flat<float>().data();
    float* vp = var->flat<float>().data();
    Moments(ctx, zp, r, c, mp, vp);
    const Affine af(mp, vp, ctx->input(1).flat<float>().data(), ctx->input(2).flat<float>().data(), c, epsilon_);
    auto* pp = Out<T>(pooled);
    int32_t* ap = argmax->flat<int32_t>().data();
    const int64_t per_block = std::max<int64_t>(1, kBlockRows / s);
    ParallelBlocks(ctx, (g + per_block - 1) / per_block, 4 * per_block * s * c, [&](int64_t begin, int64_t end) {
      std::vector<float> best(c);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g0 = i * per_block, groups = std::min(per_block, g - g0);
        Run<MaxBlockOp>(zp + g0 * s * c, groups, s, static_cast<int>(c), af.scale.data(), af.shift.data(),
                        pp + g0 * c, ap + g0 * c, best.data());
      }
    });
  }

 private:
  float epsilon_;
  int s_;
};

template <typename T>
class BatchNormReluMaxGradCpu : public OpKernel {
 public:
  explicit BatchNormReluMaxGradCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("group_size", &s_));
  }
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "batch_norm_relu_max_grad";
    const Tensor& dpooled = ctx->input(0);
    const Tensor& argmax = ctx->input(1);
    const Tensor& z = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckMatrix(kOp, "z", z));
    const int64_t s = s_;
    OP_REQUIRES_OK(ctx, CheckGroups(kOp, z.dim_size(0), s));
    const TensorShape pooled_shape({z.dim_size(0) / s, z.dim_size(1)});
    GradInputs in;
    OP_REQUIRES_OK(ctx, in.Check(kOp, dpooled, pooled_shape, z, ctx, 3));
    OP_REQUIRES(ctx, argmax.shape() == pooled_shape,
                errors::InvalidArgument(kOp, ": argmax must have shape ", pooled_shape.DebugString(), ", found ",
                                        argmax.shape().DebugString()));
    const int32_t* ap = argmax.flat<int32_t>().data();
    for (int64_t i = 0; i < argmax.NumElements(); ++i) {
      OP_REQUIRES(ctx, ap[i] >= 0 && ap[i] < s,
                  errors::InvalidArgument(kOp, ": argmax ", ap[i], " at flat position ", i,
                                          " is out of range [0, group_size) = [0, ", s, ")"));
    }
    const int64_t r = in.r, c = in.c, g = r / s;
    const float* gamma = ctx->input(3).flat<float>().data();
    const Affine af(ctx->input(5).flat<float>().data(), ctx->input(6).flat<float>().data(), gamma,
                    ctx->input(4).flat<float>().data(), c, epsilon_);
    Tensor *dz = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, z.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({c}), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({c}), &dbeta));
    const auto* gp = In<T>(dpooled);
    const auto* zp = In<T>(z);
    const int ci = static_cast<int>(c);
    const int64_t per_block = std::max<int64_t>(1, kBlockRows / s);
    const int64_t num_blocks = (g + per_block - 1) / per_block;
    std::vector<double> partial(num_blocks * 2 * c, 0.0);
    ParallelBlocks(ctx, num_blocks, 8 * per_block * c, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g0 = i * per_block, groups = std::min(per_block, g - g0);
        double* p = partial.data() + i * 2 * c;
        Run<MaxGradSumsBlockOp>(gp + g0 * c, ap + g0 * c, zp + g0 * s * c, groups, s, ci, af.scale.data(),
                                af.shift.data(), af.mean.data(), af.inv.data(), p, p + c);
      }
    });
    std::vector<double> sb(c), sg(c);
    ReduceBlocks(partial, num_blocks, c, sb.data(), sg.data());
    const GradConstants gc(af, gamma, sb.data(), sg.data(), r, c, dbeta->flat<float>().data(),
                           dgamma->flat<float>().data());
    auto* out = Out<T>(dz);
    ParallelBlocks(ctx, num_blocks, 6 * per_block * s * c, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(s * c);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g0 = i * per_block, groups = std::min(per_block, g - g0);
        Run<MaxGradApplyBlockOp>(gp + g0 * c, ap + g0 * c, zp + g0 * s * c, groups, s, ci, af.scale.data(),
                                 af.shift.data(), af.mean.data(), af.inv.data(), gc.k1.data(), gc.a.data(),
                                 gc.b.data(), out + g0 * s * c, buf.data());
      }
    });
  }

 private:
  float epsilon_;
  int s_;
};

#define HSR_REGISTER_MLP_TRAIN(T)                                                                        \
  REGISTER_KERNEL_BUILDER(Name("HsrBatchNormRelu").Device(DEVICE_CPU).TypeConstraint<T>("T"),           \
                          BatchNormReluCpu<T>);                                                          \
  REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),       \
                          BatchNormReluGradCpu<T>);                                                      \
  REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluMax").Device(DEVICE_CPU).TypeConstraint<T>("T"),        \
                          BatchNormReluMaxCpu<T>);                                                       \
  REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluMaxGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),    \
                          BatchNormReluMaxGradCpu<T>);
HSR_REGISTER_MLP_TRAIN(float)
HSR_REGISTER_MLP_TRAIN(::tensorflow::bfloat16)

}  // namespace hsr_ops
