// HsrRasterizeDepth: the non-differentiable half of hsr_tf.render (CPU, parallel over the batch).
//
// Legend: B batch, V vertices, F faces, H, W image height / width (pixels).
// Inputs: vertices float32 [B,V,3] camera mm (x right, y up, z away), faces int32 [F,3],
// camera float32 [B,4] (fx, fy, cx, cy; u = cx + fx x/z, v = cy - fy y/z, pixel (r, c) = ray through
// (u, v) = (c, r)). Attrs: height, width, near (mm), search_radius (pixels).
// Outputs: face_ids int32 [B,H,W] (face hit first by the pixel-centre ray, -1 none) and near_ids int32
// [B,H,W] (at uncovered pixels: the face whose projection is nearest, within search_radius, among faces
// wholly in front of the near plane; -1 otherwise). Same contract as hsr_tf/render/fallback.py.
//
// The z-buffer is tensorflow-graphics' RasterizeTrianglesImpl (compiled from the source in its wheel,
// see hsr_tf/ops/build.py). It works in OpenGL clip space with pixel centres at NDC (2i + 1)/size - 1
// and 16-bit fixed point for x, y, w: we map our pixel-centre convention onto that exactly and divide
// each image's clip coordinates by their largest magnitude (homogeneous, so the image is unchanged),
// which keeps the fixed-point products far from overflow (they need |x|, |y|, |w| well below 2^7).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "rasterize_triangles_impl.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace hsr_render {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

REGISTER_OP("HsrRasterizeDepth")
    .Input("vertices: float32")
    .Input("faces: int32")
    .Input("camera: float32")
    .Attr("height: int >= 1")
    .Attr("width: int >= 1")
    .Attr("near: float")
    .Attr("search_radius: float")
    .Output("face_ids: int32")
    .Output("near_ids: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle v, f, k;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &v));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &f));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &k));
      int64_t h, w;
      TF_RETURN_IF_ERROR(c->GetAttr("height", &h));
      TF_RETURN_IF_ERROR(c->GetAttr("width", &w));
      ShapeHandle out = c->MakeShape({c->Dim(v, 0), h, w});
      c->set_output(0, out);
      c->set_output(1, out);
      return absl::OkStatus();
    });

// Squared distance from (px, py) to the 2D triangle (a, b, c); 0 inside or on it.
static double PointTriangleSq(double px, double py, const double* tx, const double* ty) {
  double best = std::numeric_limits<double>::infinity();
  double side[3];
  for (int i = 0; i < 3; ++i) {
    const int j = (i + 1) % 3;
    const double ex = tx[j] - tx[i], ey = ty[j] - ty[i];
    const double qx = px - tx[i], qy = py - ty[i];
    const double len2 = ex * ex + ey * ey;
    double t = len2 > 0 ? (qx * ex + qy * ey) / len2 : 0.0;
    t = std::min(1.0, std::max(0.0, t));
    const double dx = qx - t * ex, dy = qy - t * ey;
    best = std::min(best, dx * dx + dy * dy);
    side[i] = ex * qy - ey * qx;
  }
  const bool inside = (side[0] >= 0 && side[1] >= 0 && side[2] >= 0) || (side[0] <= 0 && side[1] <= 0 && side[2] <= 0);
  return inside ? 0.0 : best;
}

class RasterizeDepthOp : public OpKernel {
 public:
  explicit RasterizeDepthOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("height", &height_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("width", &width_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("near", &near_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("search_radius", &radius_));
    OP_REQUIRES(ctx, near_ > 0, errors::InvalidArgument("HsrRasterizeDepth: near must be > 0, found ", near_));
    OP_REQUIRES(ctx, radius_ >= 0,
                errors::InvalidArgument("HsrRasterizeDepth: search_radius must be >= 0, found ", radius_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& vt = ctx->input(0);
    const Tensor& ft = ctx->input(1);
    const Tensor& kt = ctx->input(2);
    OP_REQUIRES(ctx, vt.dims() == 3 && vt.dim_size(2) == 3,
                errors::InvalidArgument("HsrRasterizeDepth: vertices must be [B,V,3], found ", vt.shape().DebugString()));
    OP_REQUIRES(ctx, ft.dims() == 2 && ft.dim_size(1) == 3,
                errors::InvalidArgument("HsrRasterizeDepth: faces must be [F,3], found ", ft.shape().DebugString()));
    OP_REQUIRES(ctx, kt.dims() == 2 && kt.dim_size(1) == 4 && kt.dim_size(0) == vt.dim_size(0),
                errors::InvalidArgument("HsrRasterizeDepth: camera must be [B,4] with B = ", vt.dim_size(0),
                                        ", found ", kt.shape().DebugString()));
    const int64_t b = vt.dim_size(0), nv = vt.dim_size(1), nf = ft.dim_size(0);
    const int32_t* faces = ft.flat<int32_t>().data();
    for (int64_t i = 0; i < 3 * nf; ++i) {
      OP_REQUIRES(ctx, faces[i] >= 0 && faces[i] < nv,
                  errors::InvalidArgument("HsrRasterizeDepth: faces index ", faces[i], " out of range [0, ", nv, ")"));
    }
    const float* verts = vt.flat<float>().data();
    const float* cams = kt.flat<float>().data();
    for (int64_t i = 0; i < b * nv * 3; ++i) {
      OP_REQUIRES(ctx, std::isfinite(verts[i]), errors::InvalidArgument("HsrRasterizeDepth: vertices contain NaN or Inf"));
    }
    Tensor* ids_t = nullptr;
    Tensor* near_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({b, height_, width_}), &ids_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({b, height_, width_}), &near_t));
    int32_t* ids = ids_t->flat<int32_t>().data();
    int32_t* near_ids = near_t->flat<int32_t>().data();
    const int64_t hw = static_cast<int64_t>(height_) * width_;
    const std::vector<int32_t> nbr = EdgeNeighbours(faces, nf);
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Render(verts + i * nv * 3, nv, faces, nf, nbr, cams + 4 * i, ids + i * hw, near_ids + i * hw);
      }
    };
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(workers->num_threads, workers->workers, b, 50 * (nf + hw), work);
  }

 private:
  // For each face t and edge k (corners k, k+1): the other face sharing that edge, or -1 at a boundary or
  // non-manifold edge (shared by more than two faces). [3 F].
  static std::vector<int32_t> EdgeNeighbours(const int32_t* faces, int64_t nf) {
    std::vector<std::pair<int64_t, int32_t>> keyed(3 * nf);  // (edge key, 3 t + k)
    for (int64_t t = 0; t < nf; ++t) {
      for (int k = 0; k < 3; ++k) {
        const int64_t a = faces[3 * t + k], b = faces[3 * t + (k + 1) % 3];
        keyed[3 * t + k] = {std::min(a, b) * (int64_t{1} << 32) + std::max(a, b), static_cast<int32_t>(3 * t + k)};
      }
    }
    std::sort(keyed.begin(), keyed.end());
    std::vector<int32_t> nbr(3 * nf, -1);
    for (size_t i = 0; i < keyed.size();) {
      size_t j = i;
      while (j < keyed.size() && keyed[j].first == keyed[i].first) ++j;
      if (j - i == 2) {
        nbr[keyed[i].second] = keyed[i + 1].second / 3;
        nbr[keyed[i + 1].second] = keyed[i].second / 3;
      }
      i = j;
    }
    return nbr;
  }

  void Render(const float* v, int64_t nv, const int32_t* faces, int64_t nf, const std::vector<int32_t>& nbr,
              const float* cam, int32_t* ids, int32_t* near_ids) const {
    const double fx = cam[0], fy = cam[1], cx = cam[2], cy = cam[3];
    const double w = width_, h = height_;
    // near / far planes for the NDC depth: as tight as the vertex depths allow (better depth resolution);
    // hits on faces wholly in front lie at depth >= the smallest vertex depth.
    double zmin = std::numeric_limits<double>::infinity(), zmax = 0.0;
    for (int64_t i = 0; i < nv; ++i) {
      zmin = std::min(zmin, static_cast<double>(v[3 * i + 2]));
      zmax = std::max(zmax, static_cast<double>(v[3 * i + 2]));
    }
    const double n = std::max(static_cast<double>(near_), 0.5 * zmin);
    const double f = std::max(2.0 * zmax, 2.0 * n) + 1.0;
    std::vector<double> clip(4 * nv);
    double scale = 0.0;
    for (int64_t i = 0; i < nv; ++i) {
      const double x = v[3 * i], y = v[3 * i + 1], z = v[3 * i + 2];
      double* c = &clip[4 * i];
      c[0] = (2.0 * fx * x + (2.0 * cx + 1.0 - w) * z) / w;   // NDC x = (2u + 1)/W - 1
      c[1] = ((2.0 * cy + 1.0 - h) * z - 2.0 * fy * y) / h;   // NDC y = (2v + 1)/H - 1: row i <-> v = i
      c[2] = (z * (f + n) - 2.0 * f * n) / (f - n);
      c[3] = z;
      scale = std::max({scale, std::fabs(c[0]), std::fabs(c[1]), std::fabs(c[3])});
    }
    if (!(scale > 0)) scale = 1.0;
    std::vector<float> clipf(4 * nv);
    for (int64_t i = 0; i < 4 * nv; ++i) clipf[i] = static_cast<float>(clip[i] / scale);
    std::vector<float> zbuf(height_ * width_, 1.0f);
    std::fill(ids, ids + height_ * width_, 0);
    RasterizeTrianglesImpl(clipf.data(), faces, static_cast<int32_t>(nf), width_, height_, 1, FaceCullingMode::kNone,
                           ids, zbuf.data(), nullptr);
    for (int64_t p = 0; p < height_ * width_; ++p) {
      if (!(zbuf[p] < 1.0f)) ids[p] = -1;
      near_ids[p] = -1;
    }
    if (radius_ <= 0) return;
    // nearest projected face for uncovered pixels (2D distance in pixels), faces wholly in front only
    std::vector<double> best(height_ * width_, std::numeric_limits<double>::infinity());
    const double r2 = static_cast<double>(radius_) * radius_;
    // Screen orientation of each face (+1 / -1 / 0 degenerate; 2 when a corner is not in front of `near`).
    // Only contour faces -- an edge whose neighbour has another orientation, or no neighbour -- can hold the
    // point of the projected mesh nearest to a pixel outside it (across an edge between two faces of the same
    // orientation the projection continues), so only they are searched (same rule as fallback.py).
    std::vector<double> fu(3 * nf), fv(3 * nf);
    std::vector<int8_t> orient(nf);
    for (int64_t t = 0; t < nf; ++t) {
      bool front = true;
      for (int k = 0; k < 3; ++k) {
        const float* p = v + 3 * faces[3 * t + k];
        if (!(p[2] > near_)) front = false;
        fu[3 * t + k] = cx + fx * p[0] / p[2];
        fv[3 * t + k] = cy - fy * p[1] / p[2];
      }
      const double* u = &fu[3 * t];
      const double* w2 = &fv[3 * t];
      const double area = (u[1] - u[0]) * (w2[2] - w2[0]) - (u[2] - u[0]) * (w2[1] - w2[0]);
      orient[t] = front ? static_cast<int8_t>((area > 0) - (area < 0)) : 2;
    }
    for (int64_t t = 0; t < nf; ++t) {
      if (orient[t] == 2) continue;
      bool contour = orient[t] == 0;
      for (int k = 0; k < 3 && !contour; ++k) {
        const int32_t o = nbr[3 * t + k];
        contour = o < 0 || orient[o] != orient[t];
      }
      if (!contour) continue;
      const double* tx = &fu[3 * t];
      const double* ty = &fv[3 * t];
      const double u0 = std::min({tx[0], tx[1], tx[2]}) - radius_, u1 = std::max({tx[0], tx[1], tx[2]}) + radius_;
      const double v0 = std::min({ty[0], ty[1], ty[2]}) - radius_, v1 = std::max({ty[0], ty[1], ty[2]}) + radius_;
      const int c0 = static_cast<int>(std::max(0.0, std::ceil(std::max(u0, -1.0))));
      const int c1 = static_cast<int>(std::min(w - 1.0, std::floor(std::min(u1, w))));
      const int rr0 = static_cast<int>(std::max(0.0, std::ceil(std::max(v0, -1.0))));
      const int rr1 = static_cast<int>(std::min(h - 1.0, std::floor(std::min(v1, h))));
      for (int r = rr0; r <= rr1; ++r) {
        for (int c = c0; c <= c1; ++c) {
          const int64_t p = static_cast<int64_t>(r) * width_ + c;
          if (ids[p] >= 0) continue;
          const double d2 = PointTriangleSq(c, r, tx, ty);
          if (d2 <= r2 && d2 < best[p]) {
            best[p] = d2;
            near_ids[p] = static_cast<int32_t>(t);
          }
        }
      }
    }
  }

  int height_, width_;
  float near_, radius_;
};

REGISTER_KERNEL_BUILDER(Name("HsrRasterizeDepth").Device(DEVICE_CPU), RasterizeDepthOp);

}  // namespace hsr_render
