// A shared-MLP layer's product with its BatchNorm statistics in the same pass (AMX, bfloat16), and the
// BatchNorm + ReLU (+ max over groups) ops that start from those statistics.
//
// Legend: R rows, Cin input channels, C output channels (both multiples of 32), G groups of rows given by
// row_splits int32 [G+1]; weights float32 [R] row multiplicities or [0] (all 1), as in mlp_train_ops.cc.
//   HsrMatMulMoments(h bf16 [R,Cin], kernel float32 [Cin,C], weights) -> z bf16 [R,C], mean [C], variance [C]
//   HsrMatMulMomentsExtremes(h, kernel, weights, row_splits)
//     -> z, mean, variance, zmax [G,C], zmin [G,C], argmax_z int32 [G,C], argmin_z int32 [G,C], zfirst [G,C]
//     (zfirst: every group's first row; keep_product = false: z is [0, C], not written at all, for a backward
//     pass that recomputes it, HsrBatchNormReluMaxGradProduct)
//   HsrBnReluMatMulMomentsExtremes(z_prev bf16 [R,Cin], kernel, weights, row_splits, prev_gamma, prev_beta,
//     prev_mean, prev_variance [Cin]) -> the outputs of HsrMatMulMomentsExtremes without the product, for
//     h = relu(BatchNorm(z_prev)) with the given moments: the previous layer's BatchNorm + ReLU runs block by block
//     as the product's prologue (the same h, bit for bit, as HsrBatchNormReluFromMoments writes), so that h is
//     never written (the pair of layers of mlp_pair.matmul_batch_norm_relu_max_pair)
//   HsrLinearReluMatMulMoments(u float32 [R,K], kernel, weights, kernel0 [K,Cin], bias0 [Cin]) -> z, mean,
//     variance of h kernel for h = max(u kernel0 + bias0, 0): the rows of HsrLinearRelu (the first level's folded
//     first layer, K = 3) formed block by block as the product's prologue and never written
//   HsrBatchNormReluFromMoments(z T, gamma, beta, weights, mean, variance, h_prev, kernel) -> h [R,C]
//   HsrBatchNormReluMaxFromExtremes(z, gamma, beta, weights, row_splits, mean, variance, zmax, zmin, argmax_z,
//     argmin_z, zfirst, h_prev, kernel) -> pooled [G,C], argmax [G,C], zsel [G,C] (z at argmax)
// (h_prev and kernel, the product's operands, are not read: they are there for the gradient, which with
// product_grad = true is the fused backward pass of product_grad_ops.cc and otherwise the gradient kernels of
// mlp_train_ops.cc followed by the product's own gradient.)
// The product runs on AMX tiles (or AVX512-BF16 dot products) block by block (amx_matmul_cpu.h); while a block's
// z is still in cache its weighted moments (and, per group, the extremes of every channel) are taken from the
// bfloat16 values written, so the [R, C] result is written once and never read back by the forward pass: the
// moments pass of HsrBatchNormRelu and both passes of HsrBatchNormReluMax over z go away. The BatchNorm ops here
// produce what HsrBatchNormRelu / HsrBatchNormReluMax produce from the same moments (their gradients are those
// ops' gradient kernels; the max picks the group's largest y from the extremes of z, since y = z * scale + shift
// is monotone).
// The products need a CPU with AMX-BF16 or AVX512-BF16 (HsrBf16ProductsBackend); partial sums are reduced in
// block order.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#pragma GCC optimize("O3")
#include "amx_matmul_cpu.h"
#include "mlp_train_support.h"

namespace hsr_ops {
namespace {

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
using namespace mlp_train;  // NOLINT: the kernels below use its plumbing throughout
using Bf16 = ::tensorflow::bfloat16;

// z [R, C] from h [R, Cin] and kernel [Cin, C], then [C] mean and variance; `extremes`: five [G, C] more.
static absl::Status ProductShapes(InferenceContext* c, bool extremes) {
  ShapeHandle h, kernel;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &h));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &kernel));
  const DimensionHandle channels = c->Dim(kernel, 1);
  c->set_output(0, c->Matrix(c->Dim(h, 0), channels));
  c->set_output(1, c->Vector(channels));
  c->set_output(2, c->Vector(channels));
  if (extremes) {
    DimensionHandle g;
    TF_RETURN_IF_ERROR(c->Subtract(c->Dim(c->input(3), 0), 1, &g));
    for (int i = 3; i < 8; ++i) c->set_output(i, c->Matrix(g, channels));
    // Without keep_product the product has no rows.
    c->set_output(0, c->Matrix(c->UnknownDim(), channels));
  }
  return absl::OkStatus();
}

// 0: no bfloat16 block products on this CPU, 1: AMX tiles, 2: AVX512-BF16 dot products (Bf16ProductsBackend).
REGISTER_OP("HsrBf16ProductsBackend").Output("backend: int32").SetShapeFn([](InferenceContext* c) {
  c->set_output(0, c->Scalar());
  return absl::OkStatus();
});

REGISTER_OP("HsrMatMulMoments")
    .Input("h: bfloat16")
    .Input("kernel: float32")
    .Input("weights: float32")
    .Output("z: bfloat16")
    .Output("mean: float32")
    .Output("variance: float32")
    .SetShapeFn([](InferenceContext* c) { return ProductShapes(c, false); });

REGISTER_OP("HsrMatMulMomentsExtremes")
    .Input("h: bfloat16")
    .Input("kernel: float32")
    .Input("weights: float32")
    .Input("row_splits: int32")
    .Output("z: bfloat16")
    .Output("mean: float32")
    .Output("variance: float32")
    .Output("zmax: float32")
    .Output("zmin: float32")
    .Output("argmax_z: int32")
    .Output("argmin_z: int32")
    .Output("zfirst: float32")
    .Attr("keep_product: bool = true")
    .SetShapeFn([](InferenceContext* c) { return ProductShapes(c, true); });

REGISTER_OP("HsrLinearReluMatMulMoments")
    .Input("u: float32")
    .Input("kernel: float32")
    .Input("weights: float32")
    .Input("kernel0: float32")
    .Input("bias0: float32")
    .Output("z: bfloat16")
    .Output("mean: float32")
    .Output("variance: float32")
    .SetShapeFn([](InferenceContext* c) { return ProductShapes(c, false); });

REGISTER_OP("HsrBnReluMatMulMomentsExtremes")
    .Input("z_prev: bfloat16")
    .Input("kernel: float32")
    .Input("weights: float32")
    .Input("row_splits: int32")
    .Input("prev_gamma: float32")
    .Input("prev_beta: float32")
    .Input("prev_mean: float32")
    .Input("prev_variance: float32")
    .Output("z: bfloat16")
    .Output("mean: float32")
    .Output("variance: float32")
    .Output("zmax: float32")
    .Output("zmin: float32")
    .Output("argmax_z: int32")
    .Output("argmin_z: int32")
    .Output("zfirst: float32")
    .Attr("prev_epsilon: float")
    .SetShapeFn([](InferenceContext* c) { return ProductShapes(c, true); });

REGISTER_OP("HsrBatchNormReluFromMoments")
    .Input("z: T")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("weights: float32")
    .Input("mean: float32")
    .Input("variance: float32")
    .Input("h_prev: bfloat16")
    .Input("kernel: float32")
    .Output("h: T")
    .Attr("T: {float, bfloat16}")
    .Attr("epsilon: float")
    .Attr("product_grad: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

REGISTER_OP("HsrBatchNormReluMaxFromExtremes")
    .Input("z: T")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("weights: float32")
    .Input("row_splits: int32")
    .Input("mean: float32")
    .Input("variance: float32")
    .Input("zmax: float32")
    .Input("zmin: float32")
    .Input("argmax_z: int32")
    .Input("argmin_z: int32")
    .Input("zfirst: float32")
    .Input("h_prev: bfloat16")
    .Input("kernel: float32")
    .Output("pooled: T")
    .Output("argmax: int32")
    .Output("zsel: float32")
    .Attr("T: {float, bfloat16}")
    .Attr("epsilon: float")
    .Attr("product_grad: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      for (int i = 0; i < 3; ++i) c->set_output(i, c->input(7));
      return absl::OkStatus();
    });

class Bf16ProductsBackendCpu : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<int32_t>()() = Bf16ProductsReady() ? static_cast<int32_t>(Bf16ProductsBackend()) : 0;
  }
};

// One call of a product op: h, kernel, weights (and row_splits) checked; the kernel packed for the tiles.
struct Product {
  int64_t r_ = 0, cin_ = 0, c_ = 0, g_ = 0, largest_ = 0, k_ = 0;
  double total_ = 0.0;
  AmxWeights wv_;  // the kernel in bfloat16, packed for the tiles (PackAmxWeights)

  // linear: input 0 is u [R, K] and inputs 3, 4 kernel0 [K, Cin] and bias0 [Cin] (HsrLinearReluMatMulMoments).
  absl::Status Prepare(OpKernelContext* ctx, const char* op, bool grouped, bool linear = false) {
    TF_RETURN_IF_ERROR(CheckBf16Products(op));
    const Tensor &h = ctx->input(0), &kernel = ctx->input(1);
    if (linear) {
      const Tensor &kernel0 = ctx->input(3), &bias0 = ctx->input(4);
      if (h.dims() != 2 || h.dim_size(1) < 1 || h.dim_size(1) > 16) {
        return errors::InvalidArgument(op, ": u must have shape [R, K] with 1 <= K <= 16, found ",
                                       h.shape().DebugString());
      }
      if (kernel0.dims() != 2 || kernel0.dim_size(0) != h.dim_size(1) || kernel0.dim_size(1) % 32 != 0 ||
          kernel0.dim_size(1) == 0) {
        return errors::InvalidArgument(op, ": kernel0 must have shape [", h.dim_size(1), ", Cin] (K = the channels "
                                       "of u; Cin a positive multiple of 32), found ", kernel0.shape().DebugString());
      }
      TF_RETURN_IF_ERROR(CheckChannels(op, "bias0", bias0, kernel0.dim_size(1)));
      k_ = h.dim_size(1);
      cin_ = kernel0.dim_size(1);
    } else if (h.dims() != 2 || h.dim_size(1) % 32 != 0 || h.dim_size(1) == 0) {
      return errors::InvalidArgument(op, ": h must have shape [R, Cin] with Cin a positive multiple of 32, found ",
                                     h.shape().DebugString());
    } else {
      cin_ = h.dim_size(1);
    }
    r_ = h.dim_size(0);
    if (kernel.dims() != 2 || kernel.dim_size(0) != cin_ || kernel.dim_size(1) % 32 != 0 ||
        kernel.dim_size(1) == 0) {
      return errors::InvalidArgument(op, ": kernel must have shape [", cin_, ", C] (the channels of h",
                                     linear ? ": kernel0's outputs" : "", ") with C a positive multiple of 32, "
                                     "found ", kernel.shape().DebugString());
    }
    c_ = kernel.dim_size(1);
    // The weights are checked against rows of an [R, C] tensor: that of h has R rows.
    TF_RETURN_IF_ERROR(CheckZAndWeights(op, h, ctx->input(2), &total_));
    if (grouped) {
      TF_RETURN_IF_ERROR(CheckRowSplits(op, ctx->input(3), r_, &largest_));
      g_ = ctx->input(3).dim_size(0) - 1;
    }
    PackAmxKernel(kernel.flat<float>().data(), static_cast<int>(cin_), static_cast<int>(c_), false, &wv_);
    return absl::OkStatus();
  }

  // The block's rows h [rows, Cin] from input 0 for the product, formed in the thread's scratch (max_rows rows)
  // by a prologue: prev (input 0 the previous layer's z): h = max(z_prev * scale + shift, 0) as
  // HsrBatchNormReluFromMoments forms it (ApplyBlock); linear (input 0 is u): HsrLinearRelu's rows with inputs 3, 4;
  // neither: input 0's own rows.
  const uint16_t* BlockRows(OpKernelContext* ctx, int64_t first, int64_t rows, int64_t max_rows, const Affine* prev,
                            bool linear) {
    if (prev == nullptr && !linear) return In<Bf16>(ctx->input(0)) + first * cin_;
    thread_local std::vector<uint16_t> h;  // reused per thread
    thread_local std::vector<float> scratch;
    h.resize(max_rows * cin_);
    scratch.resize(cin_);
    if (linear) {
      LinearReluRows(ctx->input(0).flat<float>().data() + first * k_, rows, k_, ctx->input(3).flat<float>().data(),
                     ctx->input(4).flat<float>().data(), cin_, h.data(), scratch.data());
    } else {
      mlp_train::Run<ApplyBlockOp>(In<Bf16>(ctx->input(0)) + first * cin_, rows, static_cast<int>(cin_),
                                   prev->scale.data(), prev->shift.data(), h.data(), scratch.data());
    }
    return h.data();
  }

  // Computes each of num_blocks blocks' z on the tiles (rows_of(i, &first, &rows)), into z when it is kept (z
  // non-null), else into the thread's scratch (max_rows rows); then extra(i, z of the block, first row) while the
  // block is in cache. The blocks' moments are summed in block order into mean / variance. The block's rows of h
  // come from BlockRows (prev, linear: its prologues).
  template <typename RowsOf, typename Extra>
  void RunBlocks(OpKernelContext* ctx, int64_t num_blocks, int64_t max_rows, RowsOf rows_of, Extra extra, Tensor* z,
                 float* mean, float* var, const Affine* prev = nullptr, bool linear = false) {
    uint16_t* zp = z != nullptr ? Out<Bf16>(z) : nullptr;
    const float* w = WeightsOrNull(ctx->input(2));
    const int cin = static_cast<int>(cin_), c = static_cast<int>(c_);
    // Scratch per block: moments (2C floats), a 32-row strip of float results, a zero-padded 32-row strip of h,
    // and (product not kept) the block's z.
    const int64_t zblock = zp != nullptr ? 0 : (max_rows * c_ + 1) / 2;
    const int64_t scratch = 2 * c_ + 32 * c_ + 16 * cin_ + zblock;
    std::vector<double> sums(2 * c_);
    BlockOrderedSumsN(ctx, num_blocks, 2 * kBlockRows * cin_ * c_ / 16, 2 * c_, scratch,
                      [&](int64_t i, double* partial, float* acc) {
                        int64_t first = 0, rows = 0;
                        rows_of(i, &first, &rows);
                        uint16_t* zb = zp != nullptr ? zp + first * c
                                                     : reinterpret_cast<uint16_t*>(acc + 34 * c_ + 16 * cin_);
                        const uint16_t* hb = BlockRows(ctx, first, rows, max_rows, prev, linear);
                        AmxConfigure();
                        // Each 32-row strip's moments while its rows are in L1. MomentsBlock sums 32 rows in float
                        // per step from its first row, so strips from the block's start add the same float sums
                        // in the same order as one call over the block (same bits).
                        static_assert(kRowsPerFloatSum == 32, "strips of 32 rows");
                        AmxMatMulStrips(hb, rows, wv_, acc + 2 * c_, reinterpret_cast<uint16_t*>(acc + 34 * c_),
                                        [&](const float* strip, int64_t r0, int64_t n) {
                                          uint16_t* zr = zb + r0 * c;
                                          StoreBf16Rows()(strip, zr, n * c);
                                          mlp_train::Run<MomentsBlockOp>(zr, w ? w + first + r0 : nullptr, n, c,
                                                                         partial, partial + c_, acc);
                                        });
                        AmxRelease();
                        extra(i, zb, first);
                      },
                      sums.data());
    for (int64_t k = 0; k < c_; ++k) {
      const double m = total_ > 0 ? sums[k] / total_ : 0.0;
      const double v = total_ > 0 ? sums[c_ + k] / total_ - m * m : 0.0;
      mean[k] = static_cast<float>(m);
      var[k] = static_cast<float>(v > 0.0 ? v : 0.0);
    }
  }

  absl::Status AllocateProduct(OpKernelContext* ctx, Tensor** z, Tensor** mean, Tensor** var, bool keep = true) {
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({keep ? r_ : 0, c_}), z));
    TF_RETURN_IF_ERROR(ctx->allocate_output(1, TensorShape({c_}), mean));
    return ctx->allocate_output(2, TensorShape({c_}), var);
  }
};

// linear = true: HsrLinearReluMatMulMoments (input 0 is u; h from HsrLinearRelu's rows, BlockRows).
template <bool linear>
class MatMulMomentsCpu : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    Product p;
    OP_REQUIRES_OK(ctx, p.Prepare(ctx, linear ? "linear_relu_matmul_moments" : "matmul_moments", false, linear));
    Tensor *z = nullptr, *mean = nullptr, *var = nullptr;
    OP_REQUIRES_OK(ctx, p.AllocateProduct(ctx, &z, &mean, &var));
    const int64_t r = p.r_;
    p.RunBlocks(ctx, (r + kBlockRows - 1) / kBlockRows, kBlockRows,
        [&](int64_t i, int64_t* first, int64_t* rows) {
          *first = i * kBlockRows;
          *rows = std::min(kBlockRows, r - *first);
        },
        [](int64_t, const uint16_t*, int64_t) {}, z, mean->flat<float>().data(), var->flat<float>().data(), nullptr,
        linear);
  }
};

// prologue = true: HsrBnReluMatMulMomentsExtremes (input 0 is z_prev, inputs 4..7 its BatchNorm's parameters and
// moments; the product is not kept).
template <bool prologue>
class MatMulMomentsExtremesCpu : public OpKernel {
 public:
  explicit MatMulMomentsExtremesCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {
    if (prologue) {
      OP_REQUIRES_OK(ctx, ctx->GetAttr("prev_epsilon", &prev_epsilon_));
      keep_product_ = false;
    } else {
      OP_REQUIRES_OK(ctx, ctx->GetAttr("keep_product", &keep_product_));
    }
  }
  void Compute(OpKernelContext* ctx) override {
    const char* op = prologue ? "bn_relu_matmul_moments_extremes" : "matmul_moments_extremes";
    Product p;
    OP_REQUIRES_OK(ctx, p.Prepare(ctx, op, true));
    std::unique_ptr<Affine> prev;
    if (prologue) OP_REQUIRES_OK(ctx, GradAffine(ctx, op, 4, p.cin_, prev_epsilon_, &prev));
    Tensor *z = nullptr, *mean = nullptr, *var = nullptr, *out[5] = {};
    OP_REQUIRES_OK(ctx, p.AllocateProduct(ctx, &z, &mean, &var, keep_product_));
    const int64_t g = p.g_, c = p.c_, per_block = GroupsPerBlock(p.r_, p.g_);
    for (int i = 0; i < 5; ++i) OP_REQUIRES_OK(ctx, ctx->allocate_output(3 + i, TensorShape({g, c}), &out[i]));
    const int32_t* sp = ctx->input(3).flat<int32_t>().data();
    float *hi = out[0]->flat<float>().data(), *lo = out[1]->flat<float>().data();
    int32_t *ahi = out[2]->flat<int32_t>().data(), *alo = out[3]->flat<int32_t>().data();
    float* z0 = out[4]->flat<float>().data();
    const int64_t num_blocks = (g + per_block - 1) / per_block;
    int64_t max_rows = 1;
    for (int64_t b = 0; b < num_blocks; ++b) {
      max_rows = std::max<int64_t>(max_rows, sp[std::min(g, (b + 1) * per_block)] - sp[b * per_block]);
    }
    p.RunBlocks(ctx, num_blocks, max_rows,
        [&](int64_t i, int64_t* first, int64_t* rows) {
          const int64_t g0 = i * per_block, g1 = std::min(g, g0 + per_block);
          *first = sp[g0];
          *rows = sp[g1] - sp[g0];
        },
        [&](int64_t i, const uint16_t* zb, int64_t first) {
          const int64_t g0 = i * per_block, groups = std::min(per_block, g - g0);
          thread_local std::vector<int32_t> local;  // the block's splits from its first row (reused per thread)
          local.resize(groups + 1);
          for (int64_t j = 0; j <= groups; ++j) local[j] = sp[g0 + j] - static_cast<int32_t>(first);
          if (c % 64 == 0) {  // AMX implies AVX-512
            ExtremesBf16Avx512(zb, local.data(), groups, static_cast<int>(c), hi + g0 * c, lo + g0 * c,
                               ahi + g0 * c, alo + g0 * c, z0 + g0 * c);
          } else {
            mlp_train::Run<ExtremesBlockOp>(zb, local.data(), groups, static_cast<int>(c), hi + g0 * c, lo + g0 * c,
                                            ahi + g0 * c, alo + g0 * c, z0 + g0 * c);
          }
        },
        keep_product_ ? z : nullptr, mean->flat<float>().data(), var->flat<float>().data(), prev.get());
  }

 private:
  bool keep_product_ = true;
  float prev_epsilon_ = 0.0f;
};

// Base of the two BatchNorm ops: the epsilon attribute and the constants from the given moments.
class FromMomentsBase : public EpsilonKernel {
 public:
  using EpsilonKernel::EpsilonKernel;

 protected:
  // rows_input: a tensor with the R rows of the weights (z, or h_prev where z is not kept).
  absl::Status Constants(OpKernelContext* ctx, const char* op, int mean_input, int rows_input,
                         std::unique_ptr<Affine>* af) {
    const Tensor& z = ctx->input(0);
    double total = 0.0;
    TF_RETURN_IF_ERROR(CheckZAndWeights(op, ctx->input(rows_input), ctx->input(3), &total));
    const int64_t c = z.dim_size(1);
    TF_RETURN_IF_ERROR(CheckChannels(op, "gamma", ctx->input(1), c));
    TF_RETURN_IF_ERROR(CheckChannels(op, "beta", ctx->input(2), c));
    TF_RETURN_IF_ERROR(CheckChannels(op, "mean", ctx->input(mean_input), c));
    TF_RETURN_IF_ERROR(CheckChannels(op, "variance", ctx->input(mean_input + 1), c));
    af->reset(new Affine(ctx->input(mean_input).flat<float>().data(),
                         ctx->input(mean_input + 1).flat<float>().data(), ctx->input(1).flat<float>().data(),
                         ctx->input(2).flat<float>().data(), c, epsilon_));
    return absl::OkStatus();
  }
};

template <typename T>
class BatchNormReluFromMomentsCpu : public FromMomentsBase {
 public:
  using FromMomentsBase::FromMomentsBase;
  void Compute(OpKernelContext* ctx) override {
    std::unique_ptr<Affine> af;
    OP_REQUIRES_OK(ctx, Constants(ctx, "batch_norm_relu_from_moments", 4, 0, &af));
    const Tensor& z = ctx->input(0);
    const int64_t r = z.dim_size(0), c = z.dim_size(1);
    Tensor* h = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, z.shape(), &h));
    ApplyRows(ctx, In<T>(z), r, c, *af, Out<T>(h));
  }
};

template <typename T>
class BatchNormReluMaxFromExtremesCpu : public FromMomentsBase {
 public:
  using FromMomentsBase::FromMomentsBase;
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "batch_norm_relu_max_from_extremes";
    std::unique_ptr<Affine> af;
    OP_REQUIRES_OK(ctx, Constants(ctx, kOp, 5, 12, &af));
    int64_t largest = 0;
    OP_REQUIRES_OK(ctx, CheckRowSplits(kOp, ctx->input(4), ctx->input(12).dim_size(0), &largest));
    const int64_t g = ctx->input(4).dim_size(0) - 1, c = ctx->input(0).dim_size(1);
    const TensorShape shape({g, c});
    static const char* kNames[] = {"zmax", "zmin", "argmax_z", "argmin_z", "zfirst"};
    for (int i = 0; i < 5; ++i) {
      OP_REQUIRES(ctx, ctx->input(7 + i).shape() == shape,
                  errors::InvalidArgument(kOp, ": ", kNames[i], " must have shape ", shape.DebugString(), ", found ",
                                          ctx->input(7 + i).shape().DebugString()));
    }
    Tensor *pooled = nullptr, *argmax = nullptr, *zsel = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &pooled));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, shape, &argmax));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, shape, &zsel));
    SelectMaxBlock(ctx->input(7).flat<float>().data(), ctx->input(8).flat<float>().data(),
                   ctx->input(9).flat<int32_t>().data(), ctx->input(10).flat<int32_t>().data(),
                   ctx->input(11).flat<float>().data(), g,
                   static_cast<int>(c), af->scale.data(), af->shift.data(), Out<T>(pooled),
                   argmax->flat<int32_t>().data(), zsel->flat<float>().data());
  }
};

REGISTER_KERNEL_BUILDER(Name("HsrBf16ProductsBackend").Device(DEVICE_CPU), Bf16ProductsBackendCpu);
REGISTER_KERNEL_BUILDER(Name("HsrMatMulMoments").Device(DEVICE_CPU), MatMulMomentsCpu<false>);
REGISTER_KERNEL_BUILDER(Name("HsrLinearReluMatMulMoments").Device(DEVICE_CPU), MatMulMomentsCpu<true>);
REGISTER_KERNEL_BUILDER(Name("HsrMatMulMomentsExtremes").Device(DEVICE_CPU), MatMulMomentsExtremesCpu<false>);
REGISTER_KERNEL_BUILDER(Name("HsrBnReluMatMulMomentsExtremes").Device(DEVICE_CPU), MatMulMomentsExtremesCpu<true>);
#define HSR_REGISTER_FROM_MOMENTS(T)                                                                        \
  REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluFromMoments").Device(DEVICE_CPU).TypeConstraint<T>("T"),    \
                          BatchNormReluFromMomentsCpu<T>);                                                  \
  REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluMaxFromExtremes").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          BatchNormReluMaxFromExtremesCpu<T>);
HSR_REGISTER_FROM_MOMENTS(float)
HSR_REGISTER_FROM_MOMENTS(Bf16)

}  // namespace
}  // namespace hsr_ops
