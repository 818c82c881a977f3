// Plumbing shared by the fused BatchNorm + ReLU kernels (mlp_train_ops.cc): vector-width dispatch of the
// block loops of mlp_train_cpu.h, argument checks, per-channel constants and the block-ordered reductions.
// Include after the TensorFlow headers and the `#pragma GCC optimize("O3")` of mlp_train_ops.cc.
#ifndef HSR_TF_OPS_MLP_TRAIN_SUPPORT_H_
#define HSR_TF_OPS_MLP_TRAIN_SUPPORT_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

#include "amx_matmul_cpu.h"
#include "linear_relu_cpu.h"
#include "mlp_train_cpu.h"

namespace hsr_ops {
namespace mlp_train {

using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
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
HSR_BLOCK_OP(LinearReluBlock)
HSR_BLOCK_OP(LinearReluGradSumsBlock)
HSR_BLOCK_OP(LinearReluInputGradBlock)
HSR_BLOCK_OP(ExtremesBlock)
HSR_BLOCK_OP(MaxGradSumsSelectedBlock)

template <typename F, typename... A>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void RunAvx512(A... a) { F::Run(a...); }
template <typename F, typename... A>
__attribute__((target("avx2"))) void RunAvx2(A... a) { F::Run(a...); }

// 2 = AVX-512, 1 = AVX2, 0 = baseline: the widest the CPU has, or HSR_TF_OPS_MLP_ISA=avx512|avx2|baseline
// (never wider than the CPU; lets the tests run every variant on one machine).
inline int IsaLevel() {
  static const int level = [] {
    const int cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
                        ? 2 : (__builtin_cpu_supports("avx2") ? 1 : 0);
    const char* env = std::getenv("HSR_TF_OPS_MLP_ISA");
    const std::string want = env ? env : "";
    const int asked = want == "baseline" ? 0 : (want == "avx2" ? 1 : 2);
    const int chosen = std::min(cpu, asked);
    // bfloat16 results: the native conversion where the CPU has it and AVX-512 is in use.
    if (chosen == 2 && __builtin_cpu_supports("avx512bf16")) StoreBf16Rows() = &StoreFloatsAvx512Bf16;
    return chosen;
  }();
  return level;
}

// Whether the ops built on the compiled bfloat16 block products (amx_matmul_cpu.h) can run here; they refuse
// otherwise, naming themselves.
inline bool Bf16ProductsReady() { return Bf16ProductsBackend() != Bf16Products::kNone && IsaLevel() == 2; }
inline absl::Status CheckBf16Products(const char* op) {
  if (Bf16ProductsReady()) return absl::OkStatus();
  return errors::FailedPrecondition(op,
                                    ": needs a CPU with AMX-BF16 or AVX512-BF16 (HsrBf16ProductsBackend is 0 here)");
}

template <typename F, typename... A>
void Run(A... a) {
  const int level = IsaLevel();
  if (level == 2) {
    RunAvx512<F>(a...);
  } else if (level == 1) {
    RunAvx2<F>(a...);
  } else {
    F::Run(a...);
  }
}

// ---------------------------------------------------------------------------------------------------
// Shared plumbing.

// Base of the BatchNorm kernels: the epsilon attribute.
class EpsilonKernel : public ::tensorflow::OpKernel {
 public:
  explicit EpsilonKernel(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

 protected:
  float epsilon_ = 0.0f;
};

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

static absl::Status CheckChannels(const char* op, const char* name, const Tensor& t, int64_t c) {
  if (t.dims() != 1 || t.dim_size(0) != c) {
    return errors::InvalidArgument(op, ": ", name, " must have shape [", c, "] (the channels of z), found ",
                                   t.shape().DebugString());
  }
  return absl::OkStatus();
}

// z [R, C]; weights [R] (positive) or [0]; the total weight W (R without weights).
static absl::Status CheckZAndWeights(const char* op, const Tensor& z, const Tensor& weights, double* total) {
  if (z.dims() != 2) {
    return errors::InvalidArgument(op, ": z must have shape [R, C], found ", z.shape().DebugString());
  }
  const int64_t r = z.dim_size(0);
  if (weights.dims() != 1 || (weights.dim_size(0) != 0 && weights.dim_size(0) != r)) {
    return errors::InvalidArgument(op, ": weights must have shape [", r, "] (the rows of z) or [0], found ",
                                   weights.shape().DebugString());
  }
  *total = static_cast<double>(r);
  if (weights.dim_size(0) == r && r > 0) {
    const float* w = weights.flat<float>().data();
    // Eight partial sums and one flag, no early exit, so that the loop vectorises (every fused op checks its
    // weights: up to 1M rows); the first bad row is looked up only when there is one.
    double part[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    bool ok = true;
    int64_t i = 0;
    for (; i + 8 <= r; i += 8) {
      for (int j = 0; j < 8; ++j) {
        const float v = w[i + j];
        ok &= (v > 0.0f) & (v <= std::numeric_limits<float>::max());
        part[j] += v;
      }
    }
    for (; i < r; ++i) {
      ok &= (w[i] > 0.0f) & (w[i] <= std::numeric_limits<float>::max());
      part[0] += w[i];
    }
    if (!ok) {
      for (i = 0; i < r; ++i) {
        if (!(w[i] > 0.0f) || !std::isfinite(w[i])) {
          return errors::InvalidArgument(op, ": weights must be finite and > 0, found ", w[i], " at row ", i);
        }
      }
    }
    *total = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  }
  return absl::OkStatus();
}

static const float* WeightsOrNull(const Tensor& weights) {
  return weights.dim_size(0) == 0 ? nullptr : weights.flat<float>().data();
}

// row_splits [G+1]: 0, strictly increasing, R; sets the largest group's size.
static absl::Status CheckRowSplits(const char* op, const Tensor& splits, int64_t r, int64_t* largest) {
  const int64_t n = splits.dims() == 1 ? splits.dim_size(0) : 0;
  if (splits.dims() != 1 || n < 1) {
    return errors::InvalidArgument(op, ": row_splits must have shape [G+1] with G >= 0, found ",
                                   splits.shape().DebugString());
  }
  const int32_t* p = splits.flat<int32_t>().data();
  if (p[0] != 0 || p[n - 1] != r) {
    return errors::InvalidArgument(op, ": row_splits must start at 0 and end at the rows of z (", r, "), found ",
                                   p[0], " ... ", p[n - 1]);
  }
  *largest = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (p[i] <= p[i - 1]) {
      return errors::InvalidArgument(op, ": row_splits must be strictly increasing (every group non-empty), "
                                     "found ", p[i - 1], ", ", p[i], " at ", i - 1);
    }
    *largest = std::max<int64_t>(*largest, p[i] - p[i - 1]);
  }
  return absl::OkStatus();
}

// Whether the AVX-512 loops of linear_relu_cpu.h run (the CPU has AVX-512 with BF16, K <= 4, C % 64 == 0); both
// loops compute the same values.
inline bool WideLinearLoops(int64_t k, int64_t c) {
  static const bool cpu = IsaLevel() == 2 && __builtin_cpu_supports("avx512bf16");
  return cpu && k <= kWideMaxK && c % 64 == 0;
}

// h = max(u kernel + bias, 0) for `rows` rows u [rows, K] (HsrLinearRelu's rows). scratch: C floats.
template <typename S>
static void LinearReluRows(const float* u, int64_t rows, int64_t k, const float* kernel, const float* bias,
                           int64_t c, S* h, float* scratch) {
  if (WideLinearLoops(k, c)) {
    WideLinearRelu(u, rows, static_cast<int>(k), kernel, bias, static_cast<int>(c), h);
  } else {
    Run<LinearReluBlockOp>(u, rows, static_cast<int>(k), kernel, bias, static_cast<int>(c), h, scratch);
  }
}

// sums [(K+1) * C] += (dbias, dkernel rows) of HsrLinearReluGrad over `rows` rows. scratch: (K+2) * C floats.
template <typename S>
static void LinearReluGradSumsRows(const S* dh, const float* u, int64_t rows, int64_t k, const float* kernel,
                                   const float* bias, int64_t c, double* sums, float* scratch) {
  if (WideLinearLoops(k, c)) {
    WideLinearReluGradSums(dh, u, rows, static_cast<int>(k), kernel, bias, static_cast<int>(c), sums);
  } else {
    Run<LinearReluGradSumsBlockOp>(dh, u, rows, static_cast<int>(k), kernel, bias, static_cast<int>(c), sums,
                                   scratch, scratch + (k + 1) * c);
  }
}

// Groups per block of the grouped passes: about kBlockRows rows.
static int64_t GroupsPerBlock(int64_t r, int64_t g) {
  return g > 0 ? std::max<int64_t>(1, kBlockRows * g / std::max<int64_t>(r, 1)) : 1;
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

// Sums of `width` quantities over num_blocks blocks, block i adding its share into its own partials
// (block(i, partial [width] doubles, scratch of `scratch_floats` floats)); the partials are reduced in block
// order into sums [width], so the sums do not depend on the number of threads.
template <typename Fn>
static void BlockOrderedSumsN(OpKernelContext* ctx, int64_t num_blocks, int64_t cost_per_block, int64_t width,
                              int64_t scratch_floats, Fn block, double* sums) {
  std::vector<double> partial(num_blocks * width, 0.0);
  ParallelBlocks(ctx, num_blocks, cost_per_block, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(scratch_floats);
    for (int64_t i = begin; i < end; ++i) block(i, partial.data() + i * width, acc.data());
  });
  std::fill(sums, sums + width, 0.0);
  for (int64_t i = 0; i < num_blocks; ++i) {
    const double* p = partial.data() + i * width;
    for (int64_t k = 0; k < width; ++k) sums[k] += p[k];
  }
}

// Per-channel sums of two quantities (block(i, first [C], second [C], scratch of 2*C floats)), as
// BlockOrderedSumsN.
template <typename Fn>
static void BlockOrderedSums(OpKernelContext* ctx, int64_t num_blocks, int64_t cost_per_block, int64_t c, Fn block,
                             double* first, double* second) {
  std::vector<double> sums(2 * c);
  BlockOrderedSumsN(ctx, num_blocks, cost_per_block, 2 * c, 2 * c,
                    [&](int64_t i, double* p, float* acc) { block(i, p, p + c, acc); }, sums.data());
  std::copy(sums.begin(), sums.begin() + c, first);
  std::copy(sums.begin() + c, sums.end(), second);
}

// Weighted batch moments of z [R, C] (mean, biased variance clamped at 0) into float outputs.
template <typename S>
static void Moments(OpKernelContext* ctx, const S* z, const float* w, double total, int64_t r, int64_t c,
                    float* mean, float* var) {
  std::vector<double> sum(c), sumsq(c);
  BlockOrderedSums(ctx, (r + kBlockRows - 1) / kBlockRows, 4 * kBlockRows * c, c,
                   [&](int64_t i, double* s, double* q, float* acc) {
                     const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, r - r0);
                     Run<MomentsBlockOp>(z + r0 * c, w ? w + r0 : nullptr, rows, static_cast<int>(c), s, q, acc);
                   },
                   sum.data(), sumsq.data());
  for (int64_t k = 0; k < c; ++k) {
    const double m = total > 0 ? sum[k] / total : 0.0;
    const double v = total > 0 ? sumsq[k] / total - m * m : 0.0;
    mean[k] = static_cast<float>(m);
    var[k] = static_cast<float>(v > 0.0 ? v : 0.0);
  }
}

// h = max(z * scale + shift, 0) over the R rows of z [R, C], in blocks over the worker threads.
template <typename S>
static void ApplyRows(OpKernelContext* ctx, const S* z, int64_t r, int64_t c, const Affine& af, S* h) {
  ParallelBlocks(ctx, (r + kBlockRows - 1) / kBlockRows, 4 * kBlockRows * c, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(c);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, r - r0);
      Run<ApplyBlockOp>(z + r0 * c, rows, static_cast<int>(c), af.scale.data(), af.shift.data(), h + r0 * c,
                        scratch.data());
    }
  });
}

// dgamma/dbeta outputs and the constants of dz = k1 * (dy - w * (a + xhat * b)).
struct GradConstants {
  std::vector<float> k1, a, b;
  GradConstants(const Affine& af, const float* gamma, const double* dbeta, const double* dgamma, double total,
                int64_t c, float* dbeta_out, float* dgamma_out)
      : k1(c), a(c), b(c) {
    for (int64_t k = 0; k < c; ++k) {
      dbeta_out[k] = static_cast<float>(dbeta[k]);
      dgamma_out[k] = static_cast<float>(dgamma[k]);
      k1[k] = gamma[k] * af.inv[k];
      a[k] = total > 0 ? static_cast<float>(dbeta[k] / total) : 0.0f;
      b[k] = total > 0 ? static_cast<float>(dgamma[k] / total) : 0.0f;
    }
  }
};

// Checks gamma, beta, mean, variance (inputs first..first+3) and builds the constants of the forward pass.
static absl::Status GradAffine(OpKernelContext* ctx, const char* op, int first, int64_t c, float eps,
                               std::unique_ptr<Affine>* af) {
  static const char* kNames[] = {"gamma", "beta", "mean", "variance"};
  for (int i = 0; i < 4; ++i) TF_RETURN_IF_ERROR(CheckChannels(op, kNames[i], ctx->input(first + i), c));
  af->reset(new Affine(ctx->input(first + 2).flat<float>().data(), ctx->input(first + 3).flat<float>().data(),
                       ctx->input(first).flat<float>().data(), ctx->input(first + 1).flat<float>().data(), c, eps));
  return absl::OkStatus();
}

static absl::Status AllocateGradOutputs(OpKernelContext* ctx, const Tensor& z, Tensor** dz, Tensor** dgamma,
                                        Tensor** dbeta) {
  const int64_t c = z.dim_size(1);
  TF_RETURN_IF_ERROR(ctx->allocate_output(0, z.shape(), dz));
  TF_RETURN_IF_ERROR(ctx->allocate_output(1, TensorShape({c}), dgamma));
  return ctx->allocate_output(2, TensorShape({c}), dbeta);
}

// dpooled and argmax [G, C], each argmax a row inside its group (row_splits already checked).
static absl::Status CheckPooledGrad(const char* op, const Tensor& dpooled, const Tensor& argmax,
                                    const Tensor& splits, int64_t g, int64_t c) {
  const TensorShape pooled_shape({g, c});
  if (dpooled.shape() != pooled_shape) {
    return errors::InvalidArgument(op, ": the incoming gradient must have shape ", pooled_shape.DebugString(),
                                   ", found ", dpooled.shape().DebugString());
  }
  if (argmax.shape() != pooled_shape) {
    return errors::InvalidArgument(op, ": argmax must have shape ", pooled_shape.DebugString(), ", found ",
                                   argmax.shape().DebugString());
  }
  const int32_t* ap = argmax.flat<int32_t>().data();
  const int32_t* sp = splits.flat<int32_t>().data();
  for (int64_t gi = 0; gi < g; ++gi) {
    const int32_t size = sp[gi + 1] - sp[gi];
    const int32_t* row = ap + gi * c;
    bool ok = true;
    for (int64_t k = 0; k < c; ++k) ok &= row[k] >= 0 && row[k] < size;
    if (!ok) {
      const int64_t k = std::find_if(row, row + c, [&](int32_t a) { return a < 0 || a >= size; }) - row;
      return errors::InvalidArgument(op, ": argmax ", row[k], " at flat position ", gi * c + k,
                                     " is out of range for its group of ", size, " rows");
    }
  }
  return absl::OkStatus();
}

// The backward sums of the BatchNorm + ReLU gradient over every row: dbeta = sum dy, dgamma = sum dy * xhat.
template <typename S>
static void GradSums(OpKernelContext* ctx, const S* dh, const S* z, int64_t r, int64_t c, const Affine& af,
                     double* dbeta, double* dgamma) {
  BlockOrderedSums(ctx, (r + kBlockRows - 1) / kBlockRows, 8 * kBlockRows * c, c,
                   [&](int64_t i, double* db, double* dg, float* acc) {
                     const int64_t r0 = i * kBlockRows, rows = std::min(kBlockRows, r - r0);
                     Run<GradSumsBlockOp>(dh + r0 * c, z + r0 * c, rows, static_cast<int>(c), af.scale.data(),
                                          af.shift.data(), af.mean.data(), af.inv.data(), db, dg, acc);
                   },
                   dbeta, dgamma);
}

// The same sums of the max variant: only the argmax rows of every group carry dy.
template <typename S>
static void MaxGradSums(OpKernelContext* ctx, const S* dpooled, const int32_t* argmax, const S* z,
                        const int32_t* splits, int64_t r, int64_t g, int64_t c, const Affine& af, double* dbeta,
                        double* dgamma) {
  const int64_t per_block = GroupsPerBlock(r, g);
  BlockOrderedSums(ctx, (g + per_block - 1) / per_block, 8 * per_block * c, c,
                   [&](int64_t i, double* db, double* dg, float*) {
                     const int64_t g0 = i * per_block, groups = std::min(per_block, g - g0);
                     Run<MaxGradSumsBlockOp>(dpooled + g0 * c, argmax + g0 * c, z, splits + g0, groups,
                                             static_cast<int>(c), af.scale.data(), af.shift.data(), af.mean.data(),
                                             af.inv.data(), db, dg);
                   },
                   dbeta, dgamma);
}

}  // namespace mlp_train
}  // namespace hsr_ops

#endif  // HSR_TF_OPS_MLP_TRAIN_SUPPORT_H_
