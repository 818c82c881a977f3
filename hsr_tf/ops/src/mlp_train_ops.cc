// TensorFlow registration and CPU kernels of the fused training-mode BatchNorm + ReLU ops of the shared
// MLPs (see mlp_train_cpu.h for the arithmetic and hsr_tf/layers/training_path.py for their use).
//
// Ops (T = float or bfloat16; statistics float32; R rows, C channels, G groups of consecutive rows given by
// row_splits int32 [G+1] (0 = row_splits[0] < row_splits[1] < ... = R); weights float32 [R] row multiplicities,
// or [0] for all 1):
//   HsrBatchNormRelu(z [R,C], gamma [C], beta [C], weights) -> h [R,C], mean [C], variance [C] (biased)
//   HsrBatchNormReluGrad(dh, z, weights, gamma, beta, mean, variance) -> dz [R,C], dgamma [C], dbeta [C]
//   HsrBatchNormReluMax(z, gamma, beta, weights, row_splits) -> pooled [G,C], argmax int32 [G,C], mean, variance
//   HsrBatchNormReluMaxGrad(dpooled, argmax, z, weights, row_splits, gamma, beta, mean, variance)
//     -> dz, dgamma, dbeta
// Each op makes two passes over its [R, C] inputs (moments or gradient sums, then the element-wise
// result), in blocks of rows spread over TensorFlow's CPU worker pool. Partial sums are kept per block
// and reduced in block order, so results do not depend on the number of threads.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

// The block loops are written channel-innermost for the vectoriser, which -O2 leaves mostly off.
#pragma GCC optimize("O3")
#include "mlp_train_support.h"

namespace hsr_ops {

using namespace mlp_train;  // NOLINT: the kernels below are this file's only code

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
// Op registrations. Shape functions check ranks; the kernels check everything at run time.

static absl::Status CheckRanks(InferenceContext* c, std::initializer_list<std::pair<int, int>> input_ranks) {
  for (const auto& [input, rank] : input_ranks) {
    ShapeHandle unused;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(input), rank, &unused));
  }
  return absl::OkStatus();
}

// Outputs [R, C] (like input z_input), then two [C] vectors.
static absl::Status SameAsZAndTwoVectors(InferenceContext* c, int z_input) {
  ShapeHandle z = c->input(z_input);
  c->set_output(0, z);
  c->set_output(1, c->Vector(c->Dim(z, 1)));
  c->set_output(2, c->Vector(c->Dim(z, 1)));
  return absl::OkStatus();
}

REGISTER_OP("HsrBatchNormRelu")
    .Input("z: T")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("weights: float32")
    .Output("h: T")
    .Output("mean: float32")
    .Output("variance: float32")
    .Attr("T: {float, bfloat16}")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(CheckRanks(c, {{0, 2}, {1, 1}, {2, 1}, {3, 1}}));
      return SameAsZAndTwoVectors(c, 0);
    })
    .Doc("relu(BatchNorm(z)) with the batch's (weighted) moments: z [R,C] -> h, mean, biased variance.");

REGISTER_OP("HsrBatchNormReluGrad")
    .Input("dh: T")
    .Input("z: T")
    .Input("weights: float32")
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
      TF_RETURN_IF_ERROR(CheckRanks(c, {{0, 2}, {1, 2}, {2, 1}}));
      return SameAsZAndTwoVectors(c, 1);
    })
    .Doc("Gradient of HsrBatchNormRelu with respect to z, gamma and beta.");

REGISTER_OP("HsrBatchNormReluMax")
    .Input("z: T")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("weights: float32")
    .Input("row_splits: int32")
    .Output("pooled: T")
    .Output("argmax: int32")
    .Output("mean: float32")
    .Output("variance: float32")
    .Attr("T: {float, bfloat16}")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(CheckRanks(c, {{0, 2}, {1, 1}, {2, 1}, {3, 1}, {4, 1}}));
      ShapeHandle z = c->input(0);
      DimensionHandle g;
      TF_RETURN_IF_ERROR(c->Subtract(c->Dim(c->input(4), 0), 1, &g));
      c->set_output(0, c->Matrix(g, c->Dim(z, 1)));
      c->set_output(1, c->Matrix(g, c->Dim(z, 1)));
      c->set_output(2, c->Vector(c->Dim(z, 1)));
      c->set_output(3, c->Vector(c->Dim(z, 1)));
      return absl::OkStatus();
    })
    .Doc("max over each group of rows of relu(BatchNorm(z)) with the batch's (weighted) moments: "
         "z [R,C], row_splits [G+1] -> pooled [G,C], argmax [G,C] (row within the group), mean, biased variance.");

REGISTER_OP("HsrBatchNormReluMaxGrad")
    .Input("dpooled: T")
    .Input("argmax: int32")
    .Input("z: T")
    .Input("weights: float32")
    .Input("row_splits: int32")
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
      TF_RETURN_IF_ERROR(CheckRanks(c, {{0, 2}, {1, 2}, {2, 2}, {3, 1}, {4, 1}}));
      return SameAsZAndTwoVectors(c, 2);
    })
    .Doc("Gradient of HsrBatchNormReluMax with respect to z, gamma and beta.");

// ---------------------------------------------------------------------------------------------------
// Kernels.

// z [R, C], its weights and (grouped ops) row_splits, checked: sizes, largest group, total weight.
struct Rows {
  int64_t r = 0, c = 0, g = 0, largest = 0;
  double total = 0.0;
  absl::Status Check(const char* op, const Tensor& z, const Tensor& weights, const Tensor* splits = nullptr) {
    TF_RETURN_IF_ERROR(CheckZAndWeights(op, z, weights, &total));
    r = z.dim_size(0);
    c = z.dim_size(1);
    if (splits != nullptr) {
      TF_RETURN_IF_ERROR(CheckRowSplits(op, *splits, r, &largest));
      g = splits->dim_size(0) - 1;
    }
    return absl::OkStatus();
  }
};

template <typename T>
class BatchNormReluCpu : public EpsilonKernel {
 public:
  using EpsilonKernel::EpsilonKernel;
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "batch_norm_relu";
    const Tensor& z = ctx->input(0);
    const Tensor& weights = ctx->input(3);
    Rows in;
    OP_REQUIRES_OK(ctx, in.Check(kOp, z, weights));
    const int64_t r = in.r, c = in.c;
    const double total = in.total;
    OP_REQUIRES_OK(ctx, CheckChannels(kOp, "gamma", ctx->input(1), c));
    OP_REQUIRES_OK(ctx, CheckChannels(kOp, "beta", ctx->input(2), c));
    Tensor *h = nullptr, *mean = nullptr, *var = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, z.shape(), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({c}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({c}), &var));
    const auto* zp = In<T>(z);
    float* mp = mean->flat<float>().data();
    float* vp = var->flat<float>().data();
    Moments(ctx, zp, WeightsOrNull(weights), total, r, c, mp, vp);
    const Affine af(mp, vp, ctx->input(1).flat<float>().data(), ctx->input(2).flat<float>().data(), c, epsilon_);
    ApplyRows(ctx, zp, r, c, af, Out<T>(h));
  }
};

template <typename T>
class BatchNormReluGradCpu : public EpsilonKernel {
 public:
  using EpsilonKernel::EpsilonKernel;
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "batch_norm_relu_grad";
    const Tensor& dh = ctx->input(0);
    const Tensor& z = ctx->input(1);
    const Tensor& weights = ctx->input(2);
    Rows in;
    OP_REQUIRES_OK(ctx, in.Check(kOp, z, weights));
    const double total = in.total;
    OP_REQUIRES(ctx, dh.shape() == z.shape(),
                errors::InvalidArgument(kOp, ": the incoming gradient must have shape ", z.shape().DebugString(),
                                        ", found ", dh.shape().DebugString()));
    const int64_t r = in.r, c = in.c;
    std::unique_ptr<Affine> af;
    OP_REQUIRES_OK(ctx, GradAffine(ctx, kOp, 3, c, epsilon_, &af));
    Tensor *dz = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    OP_REQUIRES_OK(ctx, AllocateGradOutputs(ctx, z, &dz, &dgamma, &dbeta));
    const auto* gp = In<T>(dh);
    const auto* zp = In<T>(z);
    const float* w = WeightsOrNull(weights);
    const int ci = static_cast<int>(c);
    const int64_t num_blocks = (r + kBlockRows - 1) / kBlockRows;
    std::vector<double> sb(c), sg(c);
    GradSums(ctx, gp, zp, r, c, *af, sb.data(), sg.data());
    const GradConstants gc(*af, ctx->input(3).flat<float>().data(), sb.data(), sg.data(), total, c,
                           dbeta->flat<float>().data(), dgamma->flat<float>().data());
    auto* out = Out<T>(dz);
    ParallelBlocks(ctx, num_blocks, 8 * kBlockRows * c, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(c);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, r - r0);
        Run<GradApplyBlockOp>(gp + r0 * c, zp + r0 * c, w ? w + r0 : nullptr, rows, ci, af->scale.data(),
                              af->shift.data(), af->mean.data(), af->inv.data(), gc.k1.data(), gc.a.data(),
                              gc.b.data(), out + r0 * c, scratch.data());
      }
    });
  }
};

template <typename T>
class BatchNormReluMaxCpu : public EpsilonKernel {
 public:
  using EpsilonKernel::EpsilonKernel;
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "batch_norm_relu_max";
    const Tensor& z = ctx->input(0);
    const Tensor& weights = ctx->input(3);
    const Tensor& splits = ctx->input(4);
    Rows in;
    OP_REQUIRES_OK(ctx, in.Check(kOp, z, weights, &splits));
    const int64_t r = in.r, c = in.c, g = in.g;
    const double total = in.total;
    OP_REQUIRES_OK(ctx, CheckChannels(kOp, "gamma", ctx->input(1), c));
    OP_REQUIRES_OK(ctx, CheckChannels(kOp, "beta", ctx->input(2), c));
    Tensor *pooled = nullptr, *argmax = nullptr, *mean = nullptr, *var = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({g, c}), &pooled));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({g, c}), &argmax));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({c}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({c}), &var));
    const auto* zp = In<T>(z);
    float* mp = mean->flat<float>().data();
    float* vp = var->flat<float>().data();
    Moments(ctx, zp, WeightsOrNull(weights), total, r, c, mp, vp);
    const Affine af(mp, vp, ctx->input(1).flat<float>().data(), ctx->input(2).flat<float>().data(), c, epsilon_);
    auto* pp = Out<T>(pooled);
    int32_t* ap = argmax->flat<int32_t>().data();
    const int32_t* sp = splits.flat<int32_t>().data();
    const int64_t per_block = GroupsPerBlock(r, g);
    ParallelBlocks(ctx, (g + per_block - 1) / per_block, 4 * kBlockRows * c, [&](int64_t begin, int64_t end) {
      std::vector<float> best(c);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g0 = i * per_block, groups = std::min(per_block, g - g0);
        Run<MaxBlockOp>(zp, sp + g0, groups, static_cast<int>(c), af.scale.data(), af.shift.data(), pp + g0 * c,
                        ap + g0 * c, best.data());
      }
    });
  }
};

template <typename T>
class BatchNormReluMaxGradCpu : public EpsilonKernel {
 public:
  using EpsilonKernel::EpsilonKernel;
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "batch_norm_relu_max_grad";
    const Tensor& dpooled = ctx->input(0);
    const Tensor& argmax = ctx->input(1);
    const Tensor& z = ctx->input(2);
    const Tensor& weights = ctx->input(3);
    const Tensor& splits = ctx->input(4);
    Rows in;
    OP_REQUIRES_OK(ctx, in.Check(kOp, z, weights, &splits));
    const int64_t r = in.r, c = in.c, g = in.g, largest = in.largest;
    const double total = in.total;
    OP_REQUIRES_OK(ctx, CheckPooledGrad(kOp, dpooled, argmax, splits, g, c));
    const int32_t* ap = argmax.flat<int32_t>().data();
    const int32_t* sp = splits.flat<int32_t>().data();
    std::unique_ptr<Affine> af;
    OP_REQUIRES_OK(ctx, GradAffine(ctx, kOp, 5, c, epsilon_, &af));
    Tensor *dz = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    OP_REQUIRES_OK(ctx, AllocateGradOutputs(ctx, z, &dz, &dgamma, &dbeta));
    const auto* gp = In<T>(dpooled);
    const auto* zp = In<T>(z);
    const float* w = WeightsOrNull(weights);
    const int ci = static_cast<int>(c);
    const int64_t per_block = GroupsPerBlock(r, g);
    const int64_t num_blocks = (g + per_block - 1) / per_block;
    std::vector<double> sb(c), sg(c);
    MaxGradSums(ctx, gp, ap, zp, sp, r, g, c, *af, sb.data(), sg.data());
    const GradConstants gc(*af, ctx->input(5).flat<float>().data(), sb.data(), sg.data(), total, c,
                           dbeta->flat<float>().data(), dgamma->flat<float>().data());
    auto* out = Out<T>(dz);
    ParallelBlocks(ctx, num_blocks, 6 * kBlockRows * c, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(largest * c);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g0 = i * per_block, groups = std::min(per_block, g - g0);
        Run<MaxGradApplyBlockOp>(gp + g0 * c, ap + g0 * c, zp, w, sp + g0, groups, ci, af->scale.data(),
                                 af->shift.data(), af->mean.data(), af->inv.data(), gc.k1.data(), gc.a.data(),
                                 gc.b.data(), out, buf.data());
      }
    });
  }
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
