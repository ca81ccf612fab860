// Geometry shared by the CPU (.cpp) and CUDA (.cu) kernels of the DFF operators. Both devices must
// compute the same bins and bilinear weights bit for bit, so the arithmetic lives here once.
// (The CPU build uses -ffp-contract=off and the CUDA build --fmad=false: no FMA contraction, as in the
// x86-64 MXNet reference, where `p * bin + start` is rounded twice.)
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DFF_HD __host__ __device__ __forceinline__
#else
#define DFF_HD inline
#endif

namespace dff {

// C round(): halves AWAY from zero (2.5 -> 3, -0.5 -> -1), as MXNet's PSROIPooling uses it.
// torch.round / nearbyint round half to even and would move some rois by one pixel.
DFF_HD float c_round(float v) { return ::roundf(v); }
DFF_HD double c_round(double v) { return ::round(v); }
DFF_HD float c_floor(float v) { return ::floorf(v); }
DFF_HD double c_floor(double v) { return ::floor(v); }
DFF_HD float c_ceil(float v) { return ::ceilf(v); }
DFF_HD double c_ceil(double v) { return ::ceil(v); }

// Clip a floor/ceil'ed bin edge to [0, limit] in floating point before the int conversion, so a huge
// or NaN coordinate never overflows it (undefined behaviour); NaN -> 0, an empty bin.
template <typename T>
DFF_HD int64_t clip_edge(T v, int64_t limit) {
  if (!(v > T(0))) return 0;
  if (v >= static_cast<T>(limit)) return limit;
  return static_cast<int64_t>(v);
}

// Source channel of output channel ctop, bin (ph, pw): (ctop*G + gh)*G + gw with gh = floor(ph*G/P)
// clamped to [0, G-1] (== ph when G == P).
DFF_HD int64_t psroi_channel(int64_t ctop, int64_t ph, int64_t pw, int64_t G, int64_t P) {
  int64_t gh = (ph * G) / P;
  int64_t gw = (pw * G) / P;
  gh = gh < 0 ? 0 : (gh > G - 1 ? G - 1 : gh);
  gw = gw < 0 ? 0 : (gw > G - 1 ? G - 1 : gw);
  return (ctop * G + gh) * G + gw;
}

// One roi of PSROIPooling (docs/design.md §3.1, fixtures README section 4), in the data dtype and in the
// reference's operation order: start = round(x1)*s, end = (round(x2) + 1)*s,
// size = max(end - start, 0.1), bin = size/P; bin p covers [floor(p*bin + start),
// ceil((p+1)*bin + start)) clipped to the map. roi = [batch, x1, y1, x2, y2].
template <typename T>
struct PsroiRoi {
  T start_w, start_h, bin_w, bin_h;

  DFF_HD PsroiRoi(const T* roi, T spatial_scale, int64_t P) {
    start_w = c_round(roi[1]) * spatial_scale;
    start_h = c_round(roi[2]) * spatial_scale;
    const T end_w = (c_round(roi[3]) + T(1)) * spatial_scale;
    const T end_h = (c_round(roi[4]) + T(1)) * spatial_scale;
    const T min_size = static_cast<T>(0.1);  // MXNet: static_cast<DType>(0.1)
    T roi_w = end_w - start_w;
    T roi_h = end_h - start_h;
    roi_w = roi_w > min_size ? roi_w : min_size;  // max(., 0.1): degenerate and inverted rois
    roi_h = roi_h > min_size ? roi_h : min_size;
    bin_w = roi_w / static_cast<T>(P);
    bin_h = roi_h / static_cast<T>(P);
  }

  DFF_HD void bin_h_range(int64_t ph, int64_t H, int64_t& lo, int64_t& hi) const {
    lo = clip_edge(c_floor(static_cast<T>(ph) * bin_h + start_h), H);
    hi = clip_edge(c_ceil(static_cast<T>(ph + 1) * bin_h + start_h), H);
  }

  DFF_HD void bin_w_range(int64_t pw, int64_t W, int64_t& lo, int64_t& hi) const {
    lo = clip_edge(c_floor(static_cast<T>(pw) * bin_w + start_w), W);
    hi = clip_edge(c_ceil(static_cast<T>(pw + 1) * bin_w + start_w), W);
  }
};

// Bilinear sampling geometry of output pixel (x, y) with flow (u, v): the key feature is sampled at
// (x + u, y + v) in pixels, formed directly (no [-1, 1] normalisation round trip, which is inexact).
// The top-left neighbour is floor(.) with weight 1 - frac (MXNet's floor convention: at an exactly
// integer position it has weight 1, and the flow derivative is the one-sided difference to the +1
// neighbour). idx = plane offsets of (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1); -1 = outside the map
// (contributes zero). The pure-PyTorch fallback (dff/ops/warp.py) uses the same expressions.
template <typename T>
struct WarpTap {
  int64_t idx[4];
  T wx0, wx1, wy0, wy1;

  DFF_HD WarpTap(int64_t x, int64_t y, T u, T v, int64_t H, int64_t W) {
    const T px = static_cast<T>(x) + u;
    const T py = static_cast<T>(y) + v;
    const T fx = c_floor(px);
    const T fy = c_floor(py);
    wx1 = px - fx;  // exact: the fractional part of a float is representable
    wx0 = T(1) - wx1;
    wy1 = py - fy;
    wy0 = T(1) - wy1;
    // clamp before the int conversion (far away or non-finite positions stay outside)
    const int64_t x0 = fx >= T(-2) ? (fx <= static_cast<T>(W + 1) ? static_cast<int64_t>(fx) : W + 1) : -2;
    const int64_t y0 = fy >= T(-2) ? (fy <= static_cast<T>(H + 1) ? static_cast<int64_t>(fy) : H + 1) : -2;
    const bool x0_in = x0 >= 0 && x0 < W, x1_in = x0 + 1 >= 0 && x0 + 1 < W;
    const bool y0_in = y0 >= 0 && y0 < H, y1_in = y0 + 1 >= 0 && y0 + 1 < H;
    idx[0] = (y0_in && x0_in) ? y0 * W + x0 : -1;
    idx[1] = (y0_in && x1_in) ? y0 * W + x0 + 1 : -1;
    idx[2] = (y1_in && x0_in) ? (y0 + 1) * W + x0 : -1;
    idx[3] = (y1_in && x1_in) ? (y0 + 1) * W + x0 + 1 : -1;
  }

  // ((w00 v00 + w01 v01) + w10 v10) + w11 v11, outside neighbours = 0. With a zero or integer flow
  // (wx1 = wy1 = 0) this is 1*v00 + 0 + 0 + 0 == v00 exactly: the identity and shifts are exact.
  DFF_HD T sample(const T* plane) const {
    const T v00 = idx[0] >= 0 ? plane[idx[0]] : T(0);
    const T v01 = idx[1] >= 0 ? plane[idx[1]] : T(0);
    const T v10 = idx[2] >= 0 ? plane[idx[2]] : T(0);
    const T v11 = idx[3] >= 0 ? plane[idx[3]] : T(0);
    return (((wy0 * wx0) * v00 + (wy0 * wx1) * v01) + (wy1 * wx0) * v10) + (wy1 * wx1) * v11;
  }
};

// Greedy-NMS overlap test of two boxes [x1, y1, x2, y2] with inclusive pixel ends (the reference's
// +1 widths): torchvision's IoU formula on boxes shifted to (x1, y1, x2 + 1, y2 + 1), the shift
// rounded in T, as dff.core.bbox_transform.nms_sorted feeds torchvision; compared with the threshold
// in double, as torchvision's CPU kernel does (suppress iff IoU > thresh).
template <typename T>
DFF_HD bool nms_suppresses(const T* a, const T* b, double thresh) {
  const T ax2 = a[2] + T(1), ay2 = a[3] + T(1), bx2 = b[2] + T(1), by2 = b[3] + T(1);
  const T left = a[0] > b[0] ? a[0] : b[0];
  const T right = ax2 < bx2 ? ax2 : bx2;
  const T top = a[1] > b[1] ? a[1] : b[1];
  const T bottom = ay2 < by2 ? ay2 : by2;
  const T w = right - left > T(0) ? right - left : T(0);
  const T h = bottom - top > T(0) ? bottom - top : T(0);
  const T inter = w * h;
  const T area_a = (ax2 - a[0]) * (ay2 - a[1]);
  const T area_b = (bx2 - b[0]) * (by2 - b[1]);
  return static_cast<double>(inter / (area_a + area_b - inter)) > thresh;
}

}  // namespace dff
