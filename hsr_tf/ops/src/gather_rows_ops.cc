// HsrGatherRowsMinusCentre: the first MLP layer's input of ragged ball-query groups, gathered per row.
//
// Legend: P points (all clouds of the batch, flattened), C channels, G groups, R rows.
//   rows[r] = params[index[r]] - centres[g]   for r in [row_splits[g], row_splits[g+1])
// params float32 [P, C] (per-point projections), centres float32 [G, C], index int32 [R], row_splits int32 [G+1];
// rows in T (float32 or bfloat16, rounded once). The gradient (HsrGatherRowsMinusCentreGrad) scatter-adds the
// rows' gradient into dparams [P, C] and sums it, negated, per group into dcentres [G, C]; both in float32, run
// over ranges of params rows (dparams) and groups (dcentres) so no two threads write one value and the result
// does not depend on the number of threads. Replaces GatherNd + Sub + Cast and their ScatterNd / UnsortedSegmentSum
// gradients (single-threaded on CPU) in the training path.
#include <algorithm>
#include <cstdint>
#include <memory>
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
using mlp_train::CheckRowSplits;
using mlp_train::GroupsPerBlock;
using mlp_train::kBlockRows;
using mlp_train::In;
using mlp_train::Out;
using mlp_train::ParallelBlocks;

REGISTER_OP("HsrGatherRowsMinusCentre")
    .Input("params: float32")
    .Input("index: int32")
    .Input("centres: float32")
    .Input("row_splits: int32")
    .Output("rows: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle params, index, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &params));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &index));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &unused));
      c->set_output(0, c->Matrix(c->Dim(index, 0), c->Dim(params, 1)));
      return absl::OkStatus();
    })
    .Doc("rows[r] = params[index[r]] - centres[g] for the rows r of group g (row_splits).");

REGISTER_OP("HsrGatherRowsMinusCentreGrad")
    .Input("grad: T")
    .Input("index: int32")
    .Input("row_splits: int32")
    .Input("num_params: int32")
    .Output("dparams: float32")
    .Output("dcentres: float32")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle grad, splits;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &grad));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &splits));
      ::tensorflow::shape_inference::DimensionHandle p, g;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(3, &p));
      TF_RETURN_IF_ERROR(c->Subtract(c->Dim(splits, 0), 1, &g));
      c->set_output(0, c->Matrix(p, c->Dim(grad, 1)));
      c->set_output(1, c->Matrix(g, c->Dim(grad, 1)));
      return absl::OkStatus();
    })
    .Doc("Gradient of HsrGatherRowsMinusCentre with respect to params and centres.");

static absl::Status CheckIndex(const char* op, const Tensor& index, int64_t p) {
  if (index.dims() != 1) {
    return errors::InvalidArgument(op, ": index must have shape [R], found ", index.shape().DebugString());
  }
  const int32_t* ix = index.flat<int32_t>().data();
  for (int64_t i = 0; i < index.NumElements(); ++i) {
    if (ix[i] < 0 || ix[i] >= p) {
      return errors::InvalidArgument(op, ": index ", ix[i], " at position ", i, " is out of range [0, ", p, ")");
    }
  }
  return absl::OkStatus();
}

template <typename T>
class GatherRowsMinusCentreCpu : public OpKernel {
 public:
  explicit GatherRowsMinusCentreCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "gather_rows_minus_centre";
    const Tensor& params = ctx->input(0);
    const Tensor& index = ctx->input(1);
    const Tensor& centres = ctx->input(2);
    const Tensor& splits = ctx->input(3);
    OP_REQUIRES(ctx, params.dims() == 2,
                errors::InvalidArgument(kOp, ": params must have shape [P, C], found ", params.shape().DebugString()));
    const int64_t c = params.dim_size(1);
    OP_REQUIRES_OK(ctx, CheckIndex(kOp, index, params.dim_size(0)));
    const int64_t r = index.dim_size(0);
    int64_t largest = 0;
    OP_REQUIRES_OK(ctx, CheckRowSplits(kOp, splits, r, &largest));
    const int64_t g = splits.dim_size(0) - 1;
    OP_REQUIRES(ctx, centres.dims() == 2 && centres.dim_size(0) == g && centres.dim_size(1) == c,
                errors::InvalidArgument(kOp, ": centres must have shape [", g, ", ", c, "] (groups, channels), found ",
                                        centres.shape().DebugString()));
    Tensor* rows = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({r, c}), &rows));
    const float* pp = params.flat<float>().data();
    const float* cp = centres.flat<float>().data();
    const int32_t* ix = index.flat<int32_t>().data();
    const int32_t* sp = splits.flat<int32_t>().data();
    auto* out = Out<T>(rows);
    const int64_t per_block = GroupsPerBlock(r, g);
    ParallelBlocks(ctx, (g + per_block - 1) / per_block, 3 * kBlockRows * c, [&](int64_t begin, int64_t end) {
      for (int64_t gi = begin * per_block; gi < std::min(g, end * per_block); ++gi) {
        const float* centre = cp + gi * c;
        for (int64_t ri = sp[gi]; ri < sp[gi + 1]; ++ri) {
          const float* src = pp + static_cast<int64_t>(ix[ri]) * c;
          auto* dst = out + ri * c;
          for (int64_t k = 0; k < c; ++k) Store(src[k] - centre[k], dst + k);
        }
      }
    });
  }
};

// dparams[index[r]] += grad[r] for the rows r whose index lies in [lo, hi), in row order.
template <typename S>
HSR_INLINE void ScatterAddRows(const S* grad, const int32_t* index, int64_t r, int64_t c, int64_t lo, int64_t hi,
                               float* dparams) {
  for (int64_t ri = 0; ri < r; ++ri) {
    const int64_t i = index[ri];
    if (i < lo || i >= hi) continue;
    float* __restrict dst = dparams + i * c;
    const S* __restrict src = grad + ri * c;
    for (int64_t k = 0; k < c; ++k) dst[k] += ToFloat(src[k]);
  }
}
HSR_BLOCK_OP(ScatterAddRows)

template <typename T>
class GatherRowsMinusCentreGradCpu : public OpKernel {
 public:
  explicit GatherRowsMinusCentreGradCpu(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "gather_rows_minus_centre_grad";
    const Tensor& grad = ctx->input(0);
    const Tensor& index = ctx->input(1);
    const Tensor& splits = ctx->input(2);
    const int64_t p = ctx->input(3).scalar<int32_t>()();
    OP_REQUIRES(ctx, p >= 0, errors::InvalidArgument(kOp, ": num_params must be >= 0, found ", p));
    OP_REQUIRES_OK(ctx, CheckIndex(kOp, index, p));
    const int64_t r = index.dim_size(0);
    OP_REQUIRES(ctx, grad.dims() == 2 && grad.dim_size(0) == r,
                errors::InvalidArgument(kOp, ": grad must have shape [", r, ", C], found ", grad.shape().DebugString()));
    int64_t largest = 0;
    OP_REQUIRES_OK(ctx, CheckRowSplits(kOp, splits, r, &largest));
    const int64_t c = grad.dim_size(1), g = splits.dim_size(0) - 1;
    Tensor *dparams = nullptr, *dcentres = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({p, c}), &dparams));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({g, c}), &dcentres));
    const auto* gp = In<T>(grad);
    const int32_t* ix = index.flat<int32_t>().data();
    const int32_t* sp = splits.flat<int32_t>().data();
    float* dp = dparams->flat<float>().data();
    float* dc = dcentres->flat<float>().data();
    // dparams: each unit of consecutive params rows is owned by one thread, which adds the whole rows of grad
    // whose index falls in it (grad is read once, row by row; every dparams row adds its rows in row order, as
    // before). Split by 16-channel blocks, every row was read once per block; one thread, 218K x 128: 20 -> 16 ms.
    const int64_t units = std::max<int64_t>(1, std::min<int64_t>(p, 64));
    const int64_t per_unit = (p + units - 1) / units;
    ParallelBlocks(ctx, units, 2 * r * c / units + r, [&](int64_t begin, int64_t end) {
      const int64_t lo = std::min(p, begin * per_unit), hi = std::min(p, end * per_unit);
      std::fill(dp + lo * c, dp + hi * c, 0.0f);
      mlp_train::Run<ScatterAddRowsOp>(gp, ix, r, c, lo, hi, dp);
    });
    const int64_t per_block = GroupsPerBlock(r, g);
    ParallelBlocks(ctx, (g + per_block - 1) / per_block, 2 * kBlockRows * c, [&](int64_t begin, int64_t end) {
      for (int64_t gi = begin * per_block; gi < std::min(g, end * per_block); ++gi) {
        float* dst = dc + gi * c;
        std::fill(dst, dst + c, 0.0f);
        for (int64_t ri = sp[gi]; ri < sp[gi + 1]; ++ri) {
          const auto* src = gp + ri * c;
          for (int64_t k = 0; k < c; ++k) dst[k] -= ToFloat(src[k]);
        }
      }
    });
  }
};

#define HSR_REGISTER_GATHER_ROWS(T)                                                                            \
  REGISTER_KERNEL_BUILDER(Name("HsrGatherRowsMinusCentre").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
                          GatherRowsMinusCentreCpu<T>);                                                        \
  REGISTER_KERNEL_BUILDER(                                                                                     \
      Name("HsrGatherRowsMinusCentreGrad").Device(DEVICE_CPU).TypeConstraint<T>("T").HostMemory("num_params"), \
      GatherRowsMinusCentreGradCpu<T>);
HSR_REGISTER_GATHER_ROWS(float)
HSR_REGISTER_GATHER_ROWS(::tensorflow::bfloat16)

}  // namespace
}  // namespace hsr_ops
