// Gradients of the fused products (matmul_moments_ops.cc): BatchNorm + ReLU (+ max) backward and the layer's
// two products in one pass over blocks of rows, on AMX tiles.
//
// Legend as in matmul_moments_ops.cc: h_prev bfloat16 [R, Cin] (the layer's input rows), kernel float32 [Cin, C],
// z bfloat16 [R, C] = h_prev kernel (the product), weights, row_splits.
//   HsrBatchNormReluGradProduct(dh [R,C], z, weights, gamma, beta, mean, variance, h_prev, kernel)
//     -> dh_prev bf16 [R,Cin], dkernel float32 [Cin,C], dgamma [C], dbeta [C]
//   HsrBatchNormReluMaxGradProduct(dpooled [G,C], argmax [G,C], zsel [G,C], weights, row_splits, gamma, beta,
//     mean, variance, h_prev, kernel) -> the same (zsel: z at argmax, from HsrBatchNormReluMaxFromExtremes)
//   HsrBatchNormReluGradProductFromSums(the inputs of HsrBatchNormReluGradProduct, dbeta_sum, dgamma_sum float64
//     [C]) -> the same, with the backward sums given instead of summed here
//   HsrBatchNormReluGradProductLinear(the inputs of ...FromSums with u [R, K] float32 for h_prev, then kernel0
//     [K, Cin], bias0 [Cin]) -> du float32 [R, K], dkernel, dgamma, dbeta, dkernel0, dbias0: for h_prev =
//     max(u kernel0 + bias0, 0) (HsrLinearRelu's rows, formed per block and never written), with HsrLinearReluGrad's
//     and HsrLinearReluInputGrad's results taken from each block of dh_prev in cache (dh_prev is not written); du
//     only with input_grad = true (else [0, K]): that costs a pass over the [R, K] rows per block, which a graph
//     where u is data (the training path) should not pay, so mlp_pair asks for du from a second call of the op,
//     which TensorFlow prunes where nothing reads du
//   HsrBatchNormReluMaxGradProductPair(the inputs of HsrBatchNormReluMaxGradProduct with z_prev [R, Cin] for
//     h_prev, then prev_gamma, prev_beta, prev_mean, prev_variance [Cin]) -> its outputs with dh_prev the gradient of
//     h = relu(BatchNorm(z_prev)), then prev_dbeta_sum, prev_dgamma_sum float64 [Cin]: the previous layer's
//     backward sums, taken while dh's rows are in cache (the pair of mlp_pair.matmul_batch_norm_relu_max_pair;
//     the two ops replace that layer's gradient pass over (dh, z_prev) and h is never written)
// The max variant does not read z at all: its sums need only zsel, so its forward pass need not write the
// [R, C] product (HsrMatMulMomentsExtremes, keep_product = false). By default it forms neither z nor dz
// (max_grad_gram_cpu.h: dh_prev and dkernel from the argmax rows and h_prev's Gram matrix); with
// HSR_TF_OPS_MAX_GRAD=recompute every block's z is recomputed on the tiles from h_prev, rounded to bfloat16 as
// the forward pass rounded it, and goes through the path below.
// After the backward sums (one pass over (dh, z), or over zsel only), every block's dz is formed in
// cache exactly as HsrBatchNormRelu[Max]Grad writes it (bfloat16) and used at once: dh_prev = dz kernel^T
// (rounded once to bfloat16) and dkernel += h_prev^T dz (float32 tiles). The [R, C] gradient dz is never written
// and the two products need no pass of their own. dkernel is summed per chunk of consecutive blocks and the
// chunks are added in order, so results do not depend on the number of threads.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#pragma GCC optimize("O3")
#include "amx_matmul_cpu.h"
#include "max_grad_gram_cpu.h"
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
namespace errors = ::tensorflow::errors;
using namespace mlp_train;  // NOLINT: the kernels below use its plumbing throughout
using Bf16 = ::tensorflow::bfloat16;

// dh_prev like h_prev, dkernel like kernel, then two [C] vectors.
static absl::Status GradShapes(InferenceContext* c, int h_prev_input) {
  c->set_output(0, c->input(h_prev_input));
  c->set_output(1, c->input(h_prev_input + 1));
  c->set_output(2, c->Vector(c->Dim(c->input(h_prev_input + 1), 1)));
  c->set_output(3, c->Vector(c->Dim(c->input(h_prev_input + 1), 1)));
  return absl::OkStatus();
}

REGISTER_OP("HsrBatchNormReluGradProduct")
    .Input("dh: bfloat16")
    .Input("z: bfloat16")
    .Input("weights: float32")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("mean: float32")
    .Input("variance: float32")
    .Input("h_prev: bfloat16")
    .Input("kernel: float32")
    .Output("dh_prev: bfloat16")
    .Output("dkernel: float32")
    .Output("dgamma: float32")
    .Output("dbeta: float32")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) { return GradShapes(c, 7); });

REGISTER_OP("HsrBatchNormReluGradProductFromSums")
    .Input("dh: bfloat16")
    .Input("z: bfloat16")
    .Input("weights: float32")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("mean: float32")
    .Input("variance: float32")
    .Input("h_prev: bfloat16")
    .Input("kernel: float32")
    .Input("dbeta_sum: float64")
    .Input("dgamma_sum: float64")
    .Output("dh_prev: bfloat16")
    .Output("dkernel: float32")
    .Output("dgamma: float32")
    .Output("dbeta: float32")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) { return GradShapes(c, 7); });

REGISTER_OP("HsrBatchNormReluGradProductLinear")
    .Input("dh: bfloat16")
    .Input("z: bfloat16")
    .Input("weights: float32")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("mean: float32")
    .Input("variance: float32")
    .Input("u: float32")
    .Input("kernel: float32")
    .Input("dbeta_sum: float64")
    .Input("dgamma_sum: float64")
    .Input("kernel0: float32")
    .Input("bias0: float32")
    .Output("du: float32")
    .Output("dkernel: float32")
    .Output("dgamma: float32")
    .Output("dbeta: float32")
    .Output("dkernel0: float32")
    .Output("dbias0: float32")
    .Attr("epsilon: float")
    .Attr("input_grad: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(GradShapes(c, 7));
      bool input_grad = false;
      TF_RETURN_IF_ERROR(c->GetAttr("input_grad", &input_grad));
      if (!input_grad) c->set_output(0, c->Matrix(0, c->Dim(c->input(7), 1)));
      c->set_output(4, c->input(11));
      c->set_output(5, c->input(12));
      return absl::OkStatus();
    });

REGISTER_OP("HsrBatchNormReluMaxGradProductPair")
    .Input("dpooled: bfloat16")
    .Input("argmax: int32")
    .Input("zsel: float32")
    .Input("weights: float32")
    .Input("row_splits: int32")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("mean: float32")
    .Input("variance: float32")
    .Input("z_prev: bfloat16")
    .Input("kernel: float32")
    .Input("prev_gamma: float32")
    .Input("prev_beta: float32")
    .Input("prev_mean: float32")
    .Input("prev_variance: float32")
    .Output("dh_prev: bfloat16")
    .Output("dkernel: float32")
    .Output("dgamma: float32")
    .Output("dbeta: float32")
    .Output("prev_dbeta_sum: float64")
    .Output("prev_dgamma_sum: float64")
    .Attr("epsilon: float")
    .Attr("prev_epsilon: float")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(GradShapes(c, 9));
      c->set_output(4, c->Vector(c->Dim(c->input(9), 1)));
      c->set_output(5, c->Vector(c->Dim(c->input(9), 1)));
      return absl::OkStatus();
    });

REGISTER_OP("HsrBatchNormReluMaxGradProduct")
    .Input("dpooled: bfloat16")
    .Input("argmax: int32")
    .Input("zsel: float32")
    .Input("weights: float32")
    .Input("row_splits: int32")
    .Input("gamma: float32")
    .Input("beta: float32")
    .Input("mean: float32")
    .Input("variance: float32")
    .Input("h_prev: bfloat16")
    .Input("kernel: float32")
    .Output("dh_prev: bfloat16")
    .Output("dkernel: float32")
    .Output("dgamma: float32")
    .Output("dbeta: float32")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) { return GradShapes(c, 9); });

constexpr int64_t kChunks = 32;

class ProductGradBase : public EpsilonKernel {
 public:
  using EpsilonKernel::EpsilonKernel;

 protected:
  // h_prev [R, Cin] and kernel [Cin, C] with Cin, C multiples of 32; the weights (input weights_input) of the R
  // rows; row splits; and, for z_input >= 0, z [R, C].
  absl::Status CheckInputs(OpKernelContext* ctx, const char* op, int z_input, int weights_input, int h_prev_input,
                           const Tensor* splits, double* total, int64_t* largest) {
    TF_RETURN_IF_ERROR(CheckBf16Products(op));
    const Tensor &h = ctx->input(h_prev_input), &kernel = ctx->input(h_prev_input + 1);
    if (h.dims() != 2 || h.dim_size(1) % 32 != 0 || h.dim_size(1) == 0) {
      return errors::InvalidArgument(op, ": h_prev must have shape [R, Cin] with Cin a positive multiple of 32, "
                                     "found ", h.shape().DebugString());
    }
    if (kernel.dims() != 2 || kernel.dim_size(0) != h.dim_size(1) || kernel.dim_size(1) % 32 != 0 ||
        kernel.dim_size(1) == 0) {
      return errors::InvalidArgument(op, ": kernel must have shape [", h.dim_size(1), ", C] (the channels of "
                                     "h_prev; C a positive multiple of 32), found ", kernel.shape().DebugString());
    }
    const int64_t r = h.dim_size(0), c = kernel.dim_size(1);
    if (z_input >= 0) {
      const Tensor& z = ctx->input(z_input);
      if (z.dims() != 2 || z.dim_size(0) != r || z.dim_size(1) != c) {
        return errors::InvalidArgument(op, ": z must have shape [", r, ", ", c, "] (h_prev kernel), found ",
                                       z.shape().DebugString());
      }
    }
    TF_RETURN_IF_ERROR(CheckZAndWeights(op, h, ctx->input(weights_input), total));
    if (splits != nullptr) TF_RETURN_IF_ERROR(CheckRowSplits(op, *splits, r, largest));
    return absl::OkStatus();
  }

  static absl::Status Allocate(OpKernelContext* ctx, const Tensor& h, const Tensor& kernel, Tensor** dh_prev,
                               Tensor** dkernel, Tensor** dgamma, Tensor** dbeta) {
    const int64_t c = kernel.dim_size(1);
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, h.shape(), dh_prev));
    TF_RETURN_IF_ERROR(ctx->allocate_output(1, kernel.shape(), dkernel));
    TF_RETURN_IF_ERROR(ctx->allocate_output(2, TensorShape({c}), dgamma));
    return ctx->allocate_output(3, TensorShape({c}), dbeta);
  }

  // For num_blocks blocks in kChunks ordered chunks: dz_block(b, dz scratch, &first, &rows) forms block b's dz
  // rows; then dh_prev's rows = dz kernel^T and the chunk's dkernel += h_prev^T dz, h_prev [R, Cin] and dh_prev the
  // tensors given.
  template <typename DzBlock>
  static void Products(OpKernelContext* ctx, const Tensor& h, const Tensor& kernel, int64_t num_blocks,
                       int64_t max_rows, DzBlock dz_block, Tensor* dh_prev, Tensor* dkernel) {
    const uint16_t* hp = In<Bf16>(h);
    uint16_t* out = Out<Bf16>(dh_prev);
    const int64_t cin = h.dim_size(1);
    ProductsWith(ctx, cin, kernel, num_blocks, max_rows, dz_block,
                 [&](int64_t first, int64_t) { return hp + first * cin; },
                 [&](int64_t first) { return out + first * cin; },
                 [](int64_t, int64_t, int64_t, const uint16_t*) {}, dkernel);
  }

  // Products with the block's rows of h_prev from h_rows(first, rows) and dh_prev's rows written to
  // dh_rows(first), then dh_done(chunk, first, rows, those rows) while in cache.
  template <typename DzBlock, typename HRows, typename DhRows, typename DhDone>
  static void ProductsWith(OpKernelContext* ctx, int64_t cin, const Tensor& kernel, int64_t num_blocks,
                           int64_t max_rows, DzBlock dz_block, HRows h_rows, DhRows dh_rows, DhDone dh_done,
                           Tensor* dkernel) {
    const int64_t c = kernel.dim_size(1);
    AmxWeights wtv;  // kernel^T: the B tiles of dz kernel^T
    PackAmxKernel(kernel.flat<float>().data(), static_cast<int>(cin), static_cast<int>(c), true, &wtv);
    const int64_t pad_rows = (max_rows + 31) / 32 * 32;
    const int64_t num_chunks = std::max<int64_t>(1, std::min(kChunks, num_blocks));
    const int64_t per_chunk = (num_blocks + num_chunks - 1) / num_chunks;
    std::vector<float> partial(num_chunks * cin * c, 0.0f);
    const int ci = static_cast<int>(c), cini = static_cast<int>(cin);
    ParallelBlocks(ctx, num_chunks, 16 * per_chunk * max_rows * (cin + c), [&](int64_t begin, int64_t end) {
      std::vector<uint16_t> dz(pad_rows * c), hpv(pad_rows * cin), hpt(pad_rows * cin), dzv(pad_rows * c),
          pad(32 * c);
      std::vector<float> strip(32 * cin);
      AmxConfigure();
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        for (int64_t b = chunk * per_chunk; b < std::min(num_blocks, (chunk + 1) * per_chunk); ++b) {
          int64_t first = 0, rows = 0;
          dz_block(b, dz.data(), &first, &rows);
          const int64_t n_pad = (rows + 31) / 32 * 32;
          std::fill(dz.begin() + rows * c, dz.begin() + n_pad * c, uint16_t{0});
          uint16_t* dh = dh_rows(first);
          AmxMatMulBlock(dz.data(), rows, wtv, dh, strip.data(), pad.data(), StoreBf16Rows());
          dh_done(chunk, first, rows, dh);
          PackVnniPadded(h_rows(first, rows), cin, static_cast<int>(rows), static_cast<int>(n_pad), cini,
                         hpv.data());
          AmxWeightGradBlock(hpv.data(), dz.data(), static_cast<int>(n_pad), cini, ci,
                             partial.data() + chunk * cin * c, hpt.data(), dzv.data());
        }
      }
      AmxRelease();
    });
    float* dk = dkernel->flat<float>().data();
    for (int64_t i = 0; i < cin * c; ++i) {
      double sum = 0.0;
      for (int64_t chunk = 0; chunk < num_chunks; ++chunk) sum += partial[chunk * cin * c + i];
      dk[i] = static_cast<float>(sum);
    }
  }
};

// The hidden layer's backward op: kPlain HsrBatchNormReluGradProduct; kFromSums HsrBatchNormReluGradProductFromSums
// (the backward sums are inputs 9 and 10); kLinear HsrBatchNormReluGradProductLinear (those sums, and input 7 is u
// [R, K]: h_prev's rows are HsrLinearRelu's rows of u with kernel0, bias0 (inputs 11, 12), formed per block; dh_prev
// is not written: HsrLinearReluGrad's sums and HsrLinearReluInputGrad's du are taken from each block of it).
enum GradProductMode { kPlain, kFromSums, kLinear };

template <GradProductMode mode>
class BatchNormReluGradProductCpu : public ProductGradBase {
 public:
  explicit BatchNormReluGradProductCpu(OpKernelConstruction* ctx) : ProductGradBase(ctx) {
    if (mode == kLinear) OP_REQUIRES_OK(ctx, ctx->GetAttr("input_grad", &input_grad_));
  }
  void Compute(OpKernelContext* ctx) override {
    const char* kOp = mode == kPlain      ? "batch_norm_relu_grad_product"
                      : mode == kFromSums ? "batch_norm_relu_grad_product_from_sums"
                                          : "batch_norm_relu_grad_product_linear";
    const Tensor &dh = ctx->input(0), &z = ctx->input(1);
    double total = 0.0;
    int64_t unused = 0;
    if (mode == kLinear) {
      OP_REQUIRES_OK(ctx, CheckLinear(ctx, kOp, &total));
    } else {
      OP_REQUIRES_OK(ctx, CheckInputs(ctx, kOp, 1, 2, 7, nullptr, &total, &unused));
    }
    OP_REQUIRES(ctx, dh.shape() == z.shape(),
                errors::InvalidArgument(kOp, ": the incoming gradient must have shape ", z.shape().DebugString(),
                                        ", found ", dh.shape().DebugString()));
    const int64_t r = z.dim_size(0), c = z.dim_size(1);
    std::unique_ptr<Affine> af;
    OP_REQUIRES_OK(ctx, GradAffine(ctx, kOp, 3, c, epsilon_, &af));
    Tensor *dh_prev = nullptr, *dkernel = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    if (mode == kLinear) {  // du like u (or no rows), then as Allocate
      const Tensor& kernel = ctx->input(8);
      OP_REQUIRES_OK(ctx, ctx->allocate_output(
                              0, TensorShape({input_grad_ ? r : 0, ctx->input(7).dim_size(1)}), &dh_prev));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(1, kernel.shape(), &dkernel));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({c}), &dgamma));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({c}), &dbeta));
    } else {
      OP_REQUIRES_OK(ctx, Allocate(ctx, ctx->input(7), ctx->input(8), &dh_prev, &dkernel, &dgamma, &dbeta));
    }
    const uint16_t* gp = In<Bf16>(dh);
    const uint16_t* zp = In<Bf16>(z);
    const float* w = WeightsOrNull(ctx->input(2));
    std::vector<double> sb(c), sg(c);
    if (mode != kPlain) {
      for (int i = 9; i < 11; ++i) {
        const Tensor& t = ctx->input(i);
        OP_REQUIRES(ctx, t.dims() == 1 && t.dim_size(0) == c,
                    errors::InvalidArgument(kOp, ": ", i == 9 ? "dbeta_sum" : "dgamma_sum", " must have shape [",
                                            c, "] (the channels of z), found ", t.shape().DebugString()));
      }
      std::copy_n(ctx->input(9).flat<double>().data(), c, sb.data());
      std::copy_n(ctx->input(10).flat<double>().data(), c, sg.data());
    } else {
      GradSums(ctx, gp, zp, r, c, *af, sb.data(), sg.data());
    }
    const GradConstants gc(*af, ctx->input(3).flat<float>().data(), sb.data(), sg.data(), total, c,
                           dbeta->flat<float>().data(), dgamma->flat<float>().data());
    const int ci = static_cast<int>(c);
    auto dz_block = [&](int64_t b, uint16_t* dz, int64_t* first, int64_t* rows) {
      *first = b * kBlockRows;
      *rows = std::min(kBlockRows, r - *first);
      std::vector<float> scratch(c);
      Run<GradApplyBlockOp>(gp + *first * c, zp + *first * c, w ? w + *first : nullptr, *rows, ci,
                            af->scale.data(), af->shift.data(), af->mean.data(), af->inv.data(), gc.k1.data(),
                            gc.a.data(), gc.b.data(), dz, scratch.data());
    };
    const int64_t num_blocks = (r + kBlockRows - 1) / kBlockRows;
    if (mode != kLinear) {
      Products(ctx, ctx->input(7), ctx->input(8), num_blocks, kBlockRows, dz_block, dh_prev, dkernel);
      return;
    }
    // The linear first layer: h_prev's rows from u, and its gradient sums per chunk (dbias0, then dkernel0 rows).
    const Tensor &u = ctx->input(7), &kernel0 = ctx->input(11), &bias0 = ctx->input(12);
    const int64_t k = u.dim_size(1), c0 = kernel0.dim_size(1), width = (k + 1) * c0;
    const float *up = u.flat<float>().data(), *k0p = kernel0.flat<float>().data(), *b0p = bias0.flat<float>().data();
    float* dup = dh_prev->flat<float>().data();
    std::vector<double> part(kChunks * width, 0.0);
    ProductsWith(
        ctx, c0, ctx->input(8), num_blocks, kBlockRows, dz_block,
        [&](int64_t first, int64_t rows) {
          thread_local std::vector<uint16_t> h;  // reused per thread
          thread_local std::vector<float> scratch;
          h.resize(kBlockRows * c0);
          scratch.resize(c0);
          LinearReluRows(up + first * k, rows, k, k0p, b0p, c0, h.data(), scratch.data());
          return static_cast<const uint16_t*>(h.data());
        },
        [&](int64_t) {  // dh_prev's rows stay in the thread's scratch (not written)
          thread_local std::vector<uint16_t> dh0;
          dh0.resize(kBlockRows * c0);
          return dh0.data();
        },
        [&](int64_t chunk, int64_t first, int64_t rows, const uint16_t* dh0) {
          thread_local std::vector<float> scratch;
          scratch.resize((k + 2) * c0);
          LinearReluGradSumsRows(dh0, up + first * k, rows, k, k0p, b0p, c0, part.data() + chunk * width,
                                 scratch.data());
          if (input_grad_) {
            Run<LinearReluInputGradBlockOp>(dh0, up + first * k, rows, static_cast<int>(k), k0p, b0p,
                                            static_cast<int>(c0), dup + first * k, scratch.data());
          }
        },
        dkernel);
    Tensor *dkernel0 = nullptr, *dbias0 = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, kernel0.shape(), &dkernel0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, bias0.shape(), &dbias0));
    float* db0 = dbias0->flat<float>().data();
    float* dk0 = dkernel0->flat<float>().data();
    for (int64_t i = 0; i < width; ++i) {
      double sum = 0.0;
      for (int64_t chunk = 0; chunk < kChunks; ++chunk) sum += part[chunk * width + i];
      (i < c0 ? db0[i] : dk0[i - c0]) = static_cast<float>(sum);
    }
  }

 private:
  // kLinear's inputs: z [R, C] and kernel [C0, C] (multiples of 32), u [R, K] with 1 <= K <= 16, kernel0 [K, C0],
  // bias0 [C0], the weights of the R rows.
  static absl::Status CheckLinear(OpKernelContext* ctx, const char* op, double* total) {
    TF_RETURN_IF_ERROR(CheckBf16Products(op));
    const Tensor &z = ctx->input(1), &u = ctx->input(7), &kernel = ctx->input(8), &kernel0 = ctx->input(11);
    if (z.dims() != 2 || z.dim_size(1) % 32 != 0 || z.dim_size(1) == 0) {
      return errors::InvalidArgument(op, ": z must have shape [R, C] with C a positive multiple of 32, found ",
                                     z.shape().DebugString());
    }
    if (u.dims() != 2 || u.dim_size(0) != z.dim_size(0) || u.dim_size(1) < 1 || u.dim_size(1) > 16) {
      return errors::InvalidArgument(op, ": u must have shape [", z.dim_size(0), ", K] (the rows of z) with 1 <= K "
                                     "<= 16, found ", u.shape().DebugString());
    }
    if (kernel0.dims() != 2 || kernel0.dim_size(0) != u.dim_size(1) || kernel0.dim_size(1) % 32 != 0 ||
        kernel0.dim_size(1) == 0) {
      return errors::InvalidArgument(op, ": kernel0 must have shape [", u.dim_size(1), ", C0] (C0 a positive "
                                     "multiple of 32), found ", kernel0.shape().DebugString());
    }
    TF_RETURN_IF_ERROR(CheckChannels(op, "bias0", ctx->input(12), kernel0.dim_size(1)));
    if (kernel.dims() != 2 || kernel.dim_size(0) != kernel0.dim_size(1) || kernel.dim_size(1) != z.dim_size(1)) {
      return errors::InvalidArgument(op, ": kernel must have shape [", kernel0.dim_size(1), ", ", z.dim_size(1),
                                     "] (kernel0's outputs, z's channels), found ", kernel.shape().DebugString());
    }
    return CheckZAndWeights(op, z, ctx->input(2), total);
  }

  bool input_grad_ = false;
};

// pair: HsrBatchNormReluMaxGradProductPair (input 9 is z_prev; h = relu(BatchNorm(z_prev)) with inputs 11..14).
template <bool pair>
class BatchNormReluMaxGradProductCpu : public ProductGradBase {
 public:
  explicit BatchNormReluMaxGradProductCpu(OpKernelConstruction* ctx) : ProductGradBase(ctx) {
    if (pair) OP_REQUIRES_OK(ctx, ctx->GetAttr("prev_epsilon", &prev_epsilon_));
  }
  void Compute(OpKernelContext* ctx) override {
    const char* kOp = pair ? "batch_norm_relu_max_grad_product_pair" : "batch_norm_relu_max_grad_product";
    const Tensor &dpooled = ctx->input(0), &argmax = ctx->input(1), &zsel = ctx->input(2), &splits = ctx->input(4);
    const Tensor &h = ctx->input(9), &kernel = ctx->input(10);
    double total = 0.0;
    int64_t largest = 0;
    OP_REQUIRES_OK(ctx, CheckInputs(ctx, kOp, -1, 3, 9, &splits, &total, &largest));
    const int64_t r = h.dim_size(0), cin = h.dim_size(1), c = kernel.dim_size(1), g = splits.dim_size(0) - 1;
    OP_REQUIRES_OK(ctx, CheckPooledGrad(kOp, dpooled, argmax, splits, g, c));
    OP_REQUIRES(ctx, zsel.shape() == dpooled.shape(),
                errors::InvalidArgument(kOp, ": zsel must have shape ", dpooled.shape().DebugString(), ", found ",
                                        zsel.shape().DebugString()));
    std::unique_ptr<Affine> af;
    OP_REQUIRES_OK(ctx, GradAffine(ctx, kOp, 5, c, epsilon_, &af));
    Tensor *dh_prev = nullptr, *dkernel = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    OP_REQUIRES_OK(ctx, Allocate(ctx, h, kernel, &dh_prev, &dkernel, &dgamma, &dbeta));
    std::unique_ptr<Affine> prev;
    Tensor *prev_dbeta = nullptr, *prev_dgamma = nullptr;
    if (pair) {
      OP_REQUIRES_OK(ctx, GradAffine(ctx, kOp, 11, cin, prev_epsilon_, &prev));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({cin}), &prev_dbeta));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(5, TensorShape({cin}), &prev_dgamma));
    }
    const uint16_t* gp = In<Bf16>(dpooled);
    const int32_t* ap = argmax.flat<int32_t>().data();
    const float* zs = zsel.flat<float>().data();
    const int32_t* sp = splits.flat<int32_t>().data();
    const float* w = WeightsOrNull(ctx->input(3));
    const int64_t per_block = GroupsPerBlock(r, g);
    const int64_t num_blocks = (g + per_block - 1) / per_block;
    std::vector<double> sb(c), sg(c);
    BlockOrderedSums(ctx, num_blocks, 4 * per_block * c, c,
                     [&](int64_t i, double* db, double* dg, float*) {
                       const int64_t g0 = i * per_block, groups = std::min(per_block, g - g0);
                       Run<MaxGradSumsSelectedBlockOp>(gp + g0 * c, zs + g0 * c, groups, static_cast<int>(c),
                                                       af->scale.data(), af->shift.data(), af->mean.data(),
                                                       af->inv.data(), db, dg);
                     },
                     sb.data(), sg.data());
    const GradConstants gc(*af, ctx->input(5).flat<float>().data(), sb.data(), sg.data(), total, c,
                           dbeta->flat<float>().data(), dgamma->flat<float>().data());
    int64_t max_rows = 1;
    for (int64_t b = 0; b < num_blocks; ++b) {
      max_rows = std::max<int64_t>(max_rows, sp[std::min(g, (b + 1) * per_block)] - sp[b * per_block]);
    }
    // The Gram path (max_grad_gram_cpu.h) never forms z or dz, but its per-call constants cost ~2 Cin^2 C
    // multiply-adds in double: it pays on many rows (the first two levels), not on the global level's few
    // wide ones (4K rows, 512 -> 1024: 236 ms against 48 ms recomputing). Hence by default from R >= 64 Cin;
    // HSR_TF_OPS_MAX_GRAD=recompute | gram (read per call, so that one process can time both) forces a path.
    const char* env = std::getenv("HSR_TF_OPS_MAX_GRAD");
    const std::string path = env != nullptr ? env : "";
    if (path == "gram" || (path != "recompute" && r >= 64 * cin)) {
      MaxGradGramInputs in{In<Bf16>(h), kernel.flat<float>().data(), w, sp, ap, gp, zs, r, cin, c, g,
                           per_block, max_rows};
      if (pair) {
        in.prev = prev.get();
        in.prev_dbeta = prev_dbeta->flat<double>().data();
        in.prev_dgamma = prev_dgamma->flat<double>().data();
      }
      MaxGradGram(ctx, in, *af, gc, kChunks, Out<Bf16>(dh_prev), dkernel->flat<float>().data());
      return;
    }
    // Recomputing z from h: the pair's h is formed once in full here (this path is for few rows, or forced).
    const Tensor* hsrc = &h;
    Tensor h_rows;
    if (pair) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_BFLOAT16, h.shape(), &h_rows));
      ApplyRows(ctx, In<Bf16>(h), r, cin, *prev, Out<Bf16>(&h_rows));
      hsrc = &h_rows;
    }
    AmxWeights wv;  // the kernel packed as in the forward pass: the block's z is recomputed there
    PackAmxKernel(kernel.flat<float>().data(), static_cast<int>(cin), static_cast<int>(c), false, &wv);
    const uint16_t* hp = In<Bf16>(*hsrc);
    const int ci = static_cast<int>(c);
    auto dz_block = [&](int64_t b, uint16_t* dz, int64_t* first, int64_t* rows) {
      const int64_t g0 = b * per_block, groups = std::min(per_block, g - g0);
      *first = sp[g0];
      *rows = sp[g0 + groups] - *first;
      // Per thread, reused across blocks (the tiles are configured by Products).
      thread_local std::vector<uint16_t> zb, pad;
      thread_local std::vector<float> strip, buf;
      thread_local std::vector<int32_t> local;
      zb.resize(max_rows * c);
      pad.resize(32 * cin);
      strip.resize(32 * c);
      buf.resize(largest * c);
      local.resize(groups + 1);
      AmxMatMulBlock(hp + *first * cin, *rows, wv, zb.data(), strip.data(), pad.data(), StoreBf16Rows());
      // The block's row splits relative to its first row: the group pass writes into the scratch.
      for (int64_t i = 0; i <= groups; ++i) local[i] = sp[g0 + i] - sp[g0];
      Run<MaxGradApplyBlockOp>(gp + g0 * c, ap + g0 * c, zb.data(), w ? w + *first : nullptr, local.data(), groups,
                               ci, af->scale.data(), af->shift.data(), af->mean.data(), af->inv.data(),
                               gc.k1.data(), gc.a.data(), gc.b.data(), dz, buf.data());
    };
    Products(ctx, *hsrc, kernel, num_blocks, max_rows, dz_block, dh_prev, dkernel);
    if (pair) {
      GradSums(ctx, In<Bf16>(*dh_prev), In<Bf16>(h), r, cin, *prev, prev_dbeta->flat<double>().data(),
               prev_dgamma->flat<double>().data());
    }
  }

 private:
  float prev_epsilon_ = 0.0f;
};

REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluGradProduct").Device(DEVICE_CPU), BatchNormReluGradProductCpu<kPlain>);
REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluGradProductFromSums").Device(DEVICE_CPU),
                        BatchNormReluGradProductCpu<kFromSums>);
REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluGradProductLinear").Device(DEVICE_CPU),
                        BatchNormReluGradProductCpu<kLinear>);
REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluMaxGradProduct").Device(DEVICE_CPU),
                        BatchNormReluMaxGradProductCpu<false>);
REGISTER_KERNEL_BUILDER(Name("HsrBatchNormReluMaxGradProductPair").Device(DEVICE_CPU),
                        BatchNormReluMaxGradProductCpu<true>);

}  // namespace
}  // namespace hsr_ops
