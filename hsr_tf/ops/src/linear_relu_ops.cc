// HsrLinearRelu: a linear layer on a few input channels, its bias and a ReLU in one pass, with its gradient.
//
// Legend: R rows, K input channels (1..16), C output channels. T = float32 or bfloat16 (the activations).
//   HsrLinearRelu(u float32 [R,K], kernel float32 [K,C], bias float32 [C]) -> h [R,C] T = max(u kernel + bias, 0)
//   HsrLinearReluGrad(dh [R,C] T, u, kernel, bias) -> dkernel float32 [K,C], dbias float32 [C]
//   HsrLinearReluInputGrad(dh, u, kernel, bias) -> du float32 [R,K]
// (arithmetic in mlp_train_cpu.h). The training path uses it for the first layer of the first set-abstraction
// level, whose rows are 3 coordinates: BatchNorm's moments of u kernel follow from the 3 x 3 moments of u, so
// the batch-normalised layer is this op with a folded kernel and bias, and neither the [R, C] pre-activation
// nor its gradient is ever written. Both gradients recompute the ReLU mask from u; the input gradient is a
// separate op so that graphs that do not need it (u is data) never run it. Sums are formed per block of rows
// and reduced in block order: results do not depend on the number of threads.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#pragma GCC optimize("O3")
#include "mlp_train_support.h"

namespace hsr_ops {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;
using namespace mlp_train;  // NOLINT: the kernels below use its plumbing throughout

constexpr int64_t kMaxInputChannels = 16;

REGISTER_OP("HsrLinearRelu")
    .Input("u: float32")
    .Input("kernel: float32")
    .Input("bias: float32")
    .Output("h: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle u, kernel, bias;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &u));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &kernel));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &bias));
      c->set_output(0, c->Matrix(c->Dim(u, 0), c->Dim(kernel, 1)));
      return absl::OkStatus();
    });

REGISTER_OP("HsrLinearReluGrad")
    .Input("dh: T")
    .Input("u: float32")
    .Input("kernel: float32")
    .Input("bias: float32")
    .Output("dkernel: float32")
    .Output("dbias: float32")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(2));
      c->set_output(1, c->input(3));
      return absl::OkStatus();
    });

REGISTER_OP("HsrLinearReluInputGrad")
    .Input("dh: T")
    .Input("u: float32")
    .Input("kernel: float32")
    .Input("bias: float32")
    .Output("du: float32")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(1));
      return absl::OkStatus();
    });

// u [R, K] with 1 <= K <= 16, kernel [K, C], bias [C], and (gradients) dh [R, C]; sets r, k, c.
struct LinearArgs {
  int64_t r = 0, k = 0, c = 0;
  absl::Status Check(const char* op, const Tensor& u, const Tensor& kernel, const Tensor& bias,
                     const Tensor* dh) {
    if (u.dims() != 2 || u.dim_size(1) < 1 || u.dim_size(1) > kMaxInputChannels) {
      return errors::InvalidArgument(op, ": u must have shape [R, K] with 1 <= K <= ", kMaxInputChannels,
                                     ", found ", u.shape().DebugString());
    }
    r = u.dim_size(0);
    k = u.dim_size(1);
    if (kernel.dims() != 2 || kernel.dim_size(0) != k) {
      return errors::InvalidArgument(op, ": kernel must have shape [", k, ", C] (K = the channels of u), found ",
                                     kernel.shape().DebugString());
    }
    c = kernel.dim_size(1);
    if (bias.dims() != 1 || bias.dim_size(0) != c) {
      return errors::InvalidArgument(op, ": bias must have shape [", c, "] (the channels of kernel), found ",
                                     bias.shape().DebugString());
    }
    if (dh != nullptr && (dh->dims() != 2 || dh->dim_size(0) != r || dh->dim_size(1) != c)) {
      return errors::InvalidArgument(op, ": the incoming gradient must have shape [", r, ", ", c, "], found ",
                                     dh->shape().DebugString());
    }
    return absl::OkStatus();
  }
  int64_t Blocks() const { return (r + kBlockRows - 1) / kBlockRows; }
  int64_t BlockCost() const { return 4 * kBlockRows * c * (k + 1); }
};

template <typename T>
class LinearReluCpu : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor &u = ctx->input(0), &kernel = ctx->input(1), &bias = ctx->input(2);
    LinearArgs a;
    OP_REQUIRES_OK(ctx, a.Check("linear_relu", u, kernel, bias, nullptr));
    Tensor* h = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({a.r, a.c}), &h));
    const float *up = u.flat<float>().data(), *kp = kernel.flat<float>().data(), *bp = bias.flat<float>().data();
    auto* hp = Out<T>(h);
    ParallelBlocks(ctx, a.Blocks(), a.BlockCost(), [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(a.c);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, a.r - r0);
        LinearReluRows(up + r0 * a.k, rows, a.k, kp, bp, a.c, hp + r0 * a.c, scratch.data());
      }
    });
  }
};

template <typename T>
class LinearReluGradCpu : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor &dh = ctx->input(0), &u = ctx->input(1), &kernel = ctx->input(2), &bias = ctx->input(3);
    LinearArgs a;
    OP_REQUIRES_OK(ctx, a.Check("linear_relu_grad", u, kernel, bias, &dh));
    Tensor *dkernel = nullptr, *dbias = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, kernel.shape(), &dkernel));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, bias.shape(), &dbias));
    const float *up = u.flat<float>().data(), *kp = kernel.flat<float>().data(), *bp = bias.flat<float>().data();
    const auto* gp = In<T>(dh);
    const int64_t width = (a.k + 1) * a.c;
    std::vector<double> sums(width);
    // The block's scratch: (K+1)*C float sums, then C floats of dy.
    BlockOrderedSumsN(ctx, a.Blocks(), a.BlockCost(), width, width + a.c,
                      [&](int64_t i, double* partial, float* acc) {
                        const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, a.r - r0);
                        LinearReluGradSumsRows(gp + r0 * a.c, up + r0 * a.k, rows, a.k, kp, bp, a.c, partial, acc);
                      },
                      sums.data());
    float* db = dbias->flat<float>().data();
    float* dk = dkernel->flat<float>().data();
    for (int64_t i = 0; i < a.c; ++i) db[i] = static_cast<float>(sums[i]);
    for (int64_t i = 0; i < a.k * a.c; ++i) dk[i] = static_cast<float>(sums[a.c + i]);
  }
};

template <typename T>
class LinearReluInputGradCpu : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor &dh = ctx->input(0), &u = ctx->input(1), &kernel = ctx->input(2), &bias = ctx->input(3);
    LinearArgs a;
    OP_REQUIRES_OK(ctx, a.Check("linear_relu_input_grad", u, kernel, bias, &dh));
    Tensor* du = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, u.shape(), &du));
    const float *up = u.flat<float>().data(), *kp = kernel.flat<float>().data(), *bp = bias.flat<float>().data();
    const auto* gp = In<T>(dh);
    float* dup = du->flat<float>().data();
    const int ki = static_cast<int>(a.k), ci = static_cast<int>(a.c);
    ParallelBlocks(ctx, a.Blocks(), a.BlockCost(), [&](int64_t begin, int64_t end) {
      std::vector<float> dy(a.c);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, a.r - r0);
        Run<LinearReluInputGradBlockOp>(gp + r0 * a.c, up + r0 * a.k, rows, ki, kp, bp, ci, dup + r0 * a.k,
                                        dy.data());
      }
    });
  }
};

// HsrRowMoments(u float32 [R,K], weights [R] or [0]) -> mean [K], covariance [K,K]: the weighted mean and
// biased covariance (sum_r w_r (u_r - mean)(u_r - mean)^T / W) of the rows, which fold the first layer's
// BatchNorm into this op's kernel and bias. Two passes (the sums, then the centred products: no cancellation),
// per block in double, reduced in block order. Replaces five TensorFlow passes over [R, K].
REGISTER_OP("HsrRowMoments")
    .Input("u: float32")
    .Input("weights: float32")
    .Output("mean: float32")
    .Output("covariance: float32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle u;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &u));
      c->set_output(0, c->Vector(c->Dim(u, 1)));
      c->set_output(1, c->Matrix(c->Dim(u, 1), c->Dim(u, 1)));
      return absl::OkStatus();
    });

class RowMomentsCpu : public OpKernel {
 public:
  explicit RowMomentsCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "row_moments";
    const Tensor& u = ctx->input(0);
    OP_REQUIRES(ctx, u.dims() == 2 && u.dim_size(1) >= 1 && u.dim_size(1) <= kMaxInputChannels,
                errors::InvalidArgument(kOp, ": u must have shape [R, K] with 1 <= K <= ", kMaxInputChannels,
                                        ", found ", u.shape().DebugString()));
    double total = 0.0;
    OP_REQUIRES_OK(ctx, CheckZAndWeights(kOp, u, ctx->input(1), &total));
    const int64_t r = u.dim_size(0), k = u.dim_size(1);
    Tensor *mean = nullptr, *cov = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({k, k}), &cov));
    const float* up = u.flat<float>().data();
    const float* w = WeightsOrNull(ctx->input(1));
    const int64_t blocks = (r + kBlockRows - 1) / kBlockRows;
    std::vector<double> sum(k), m(k), prod(k * k);
    BlockOrderedSumsN(ctx, blocks, 2 * kBlockRows * k, k, 0, [&](int64_t i, double* part, float*) {
      for (int64_t row = i * kBlockRows; row < std::min(r, (i + 1) * kBlockRows); ++row) {
        const double wr = w ? w[row] : 1.0;
        for (int64_t a = 0; a < k; ++a) part[a] += wr * up[row * k + a];
      }
    }, sum.data());
    for (int64_t a = 0; a < k; ++a) m[a] = total > 0 ? sum[a] / total : 0.0;
    BlockOrderedSumsN(ctx, blocks, 2 * kBlockRows * k * k, k * k, 0, [&](int64_t i, double* part, float*) {
      double d[kMaxInputChannels];
      for (int64_t row = i * kBlockRows; row < std::min(r, (i + 1) * kBlockRows); ++row) {
        const double wr = w ? w[row] : 1.0;
        for (int64_t a = 0; a < k; ++a) d[a] = up[row * k + a] - m[a];
        for (int64_t a = 0; a < k; ++a)
          for (int64_t b = 0; b < k; ++b) part[a * k + b] += wr * d[a] * d[b];
      }
    }, prod.data());
    float* mp = mean->flat<float>().data();
    float* cp = cov->flat<float>().data();
    for (int64_t a = 0; a < k; ++a) mp[a] = static_cast<float>(m[a]);
    for (int64_t a = 0; a < k * k; ++a) cp[a] = total > 0 ? static_cast<float>(prod[a] / total) : 0.0f;
  }
};
REGISTER_KERNEL_BUILDER(Name("HsrRowMoments").Device(DEVICE_CPU), RowMomentsCpu);

#define HSR_REGISTER_LINEAR_RELU(T)                                                                           \
  REGISTER_KERNEL_BUILDER(Name("HsrLinearRelu").Device(DEVICE_CPU).TypeConstraint<T>("T"), LinearReluCpu<T>); \
  REGISTER_KERNEL_BUILDER(Name("HsrLinearReluGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),                \
                          LinearReluGradCpu<T>);                                                              \
  REGISTER_KERNEL_BUILDER(Name("HsrLinearReluInputGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),           \
                          LinearReluInputGradCpu<T>);
HSR_REGISTER_LINEAR_RELU(float)
HSR_REGISTER_LINEAR_RELU(::tensorflow::bfloat16)

}  // namespace
}  // namespace hsr_ops
