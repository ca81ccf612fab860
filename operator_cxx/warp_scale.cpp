// Fused flow warp x scale (DFF non-key frames), CPU kernels.
//   out[n,c,y,x] = bilinear(feat[n,c], x + flow[n,0,y,x], y + flow[n,1,y,x]) * scale[n,c,y,x]
// = MXNet GridGenerator(warp) + BilinearSampler, then the elementwise scale map.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "dff_checks.h"
#include "dff_ops.h"

namespace dff {
namespace {

// Tasks of `work` pixels each: enough per chunk that small inputs (gradcheck, tests) run inline instead
// of paying for waking the thread pool, which costs more than the work itself.
inline int64_t grain_for(int64_t work) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work)); }

// The sampling geometry depends only on (n, y, x): compute it once per pixel, then reuse it for all
// channels (1024 in DFF), which keeps the channel loops to plain gathers over one cached plane.
template <typename scalar_t>
std::vector<WarpTap<scalar_t>> make_taps(const scalar_t* flow_p, int64_t N, int64_t H, int64_t W) {
  std::vector<WarpTap<scalar_t>> taps;
  taps.reserve(N * H * W);
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* u = flow_p + n * 2 * H * W;
    const scalar_t* v = u + H * W;
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) taps.emplace_back(x, y, u[y * W + x], v[y * W + x], H, W);
  }
  return taps;
}

at::Tensor warp_scale_forward_cpu(const at::Tensor& feat_in, const at::Tensor& flow_in,
                                  const c10::optional<at::Tensor>& scale_opt) {
  check_warp(feat_in, flow_in, scale_opt);
  const at::Tensor feat = feat_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  const bool has_scale = scale_opt.has_value() && scale_opt->defined();
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), HW = H * W;
  at::Tensor out = at::empty({N, C, H, W}, feat.options());
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "warp_scale_forward_cpu", [&] {
    const scalar_t* feat_p = feat.const_data_ptr<scalar_t>();
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    const auto taps = make_taps(flow.const_data_ptr<scalar_t>(), N, H, W);
    // scale is read through its strides: an expanded (broadcast) scale is never materialised
    const scalar_t* s_p = has_scale ? scale_opt->const_data_ptr<scalar_t>() : nullptr;
    const auto st = has_scale ? scale_opt->strides() : c10::IntArrayRef();
    at::parallel_for(0, N * C, grain_for(HW), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / C, c = i % C;
        const scalar_t* plane = feat_p + i * HW;
        const WarpTap<scalar_t>* t = taps.data() + n * HW;
        scalar_t* o = out_p + i * HW;
        if (!has_scale) {
          for (int64_t p = 0; p < HW; ++p) o[p] = t[p].sample(plane);
        } else {
          const scalar_t* sp = s_p + n * st[0] + c * st[1];
          for (int64_t y = 0; y < H; ++y)
            for (int64_t x = 0; x < W; ++x) {
              const int64_t p = y * W + x;
              o[p] = t[p].sample(plane) * sp[y * st[2] + x * st[3]];
            }
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> warp_scale_backward_cpu(const at::Tensor& grad_out_in,
                                                                       const at::Tensor& feat_in,
                                                                       const at::Tensor& flow_in,
                                                                       const c10::optional<at::Tensor>& scale_opt) {
  check_warp(feat_in, flow_in, scale_opt);
  TORCH_CHECK(grad_out_in.sizes() == feat_in.sizes() && grad_out_in.scalar_type() == feat_in.scalar_type(),
              "warp_scale_backward: grad_out must match feat, got ", grad_out_in.sizes());
  const at::Tensor feat = feat_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const bool has_scale = scale_opt.has_value() && scale_opt->defined();
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), HW = H * W;
  at::Tensor grad_feat = at::zeros({N, C, H, W}, feat.options());
  at::Tensor grad_flow = at::zeros({N, 2, H, W}, feat.options());
  at::Tensor grad_scale = at::empty({has_scale ? N : 0, C, H, W}, feat.options());
  if (feat.numel() == 0) return {grad_feat, grad_flow, grad_scale.zero_()};

  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "warp_scale_backward_cpu", [&] {
    const scalar_t* feat_p = feat.const_data_ptr<scalar_t>();
    const scalar_t* go_p = grad_out.const_data_ptr<scalar_t>();
    scalar_t* gfeat_p = grad_feat.mutable_data_ptr<scalar_t>();
    scalar_t* gflow_p = grad_flow.mutable_data_ptr<scalar_t>();
    scalar_t* gscale_p = has_scale ? grad_scale.mutable_data_ptr<scalar_t>() : nullptr;
    const auto taps = make_taps(flow.const_data_ptr<scalar_t>(), N, H, W);
    const scalar_t* s_p = has_scale ? scale_opt->const_data_ptr<scalar_t>() : nullptr;
    const auto st = has_scale ? scale_opt->strides() : c10::IntArrayRef();

    // One sweep over each (n, c) plane computes everything: grad_scale, the scatter into grad_feat
    // (it stays inside the plane: race free) and the plane's share of the flow gradient. The flow
    // gradient is a sum over channels; each task sums a fixed block of channels into its own buffer and
    // the blocks are added in a fixed order afterwards, so the result does not depend on the number
    // of threads (deterministic), unlike a shared accumulator.
    // d out / d px = wy0 (v01 - v00) + wy1 (v11 - v10), d out / d py = wx0 (v10 - v00) + wx1 (v11 - v01)
    const int64_t blocks = std::min<int64_t>(C, 32);
    const int64_t block_size = (C + blocks - 1) / blocks;
    std::vector<scalar_t> partial(static_cast<size_t>(N * blocks * 2 * HW), scalar_t(0));
    at::parallel_for(0, N * blocks, grain_for(block_size * HW), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / blocks, blk = task % blocks;
        const WarpTap<scalar_t>* t = taps.data() + n * HW;
        scalar_t* gx = partial.data() + task * 2 * HW;
        scalar_t* gy = gx + HW;
        for (int64_t c = blk * block_size; c < std::min(C, (blk + 1) * block_size); ++c) {
          const int64_t i = n * C + c;
          const scalar_t* plane = feat_p + i * HW;
          const scalar_t* go = go_p + i * HW;
          scalar_t* gplane = gfeat_p + i * HW;
          const scalar_t* sp = has_scale ? s_p + n * st[0] + c * st[1] : nullptr;
          for (int64_t y = 0; y < H; ++y)
            for (int64_t x = 0; x < W; ++x) {
              const int64_t p = y * W + x;
              const WarpTap<scalar_t>& tp = t[p];
              const scalar_t v00 = tp.idx[0] >= 0 ? plane[tp.idx[0]] : scalar_t(0);
              const scalar_t v01 = tp.idx[1] >= 0 ? plane[tp.idx[1]] : scalar_t(0);
              const scalar_t v10 = tp.idx[2] >= 0 ? plane[tp.idx[2]] : scalar_t(0);
              const scalar_t v11 = tp.idx[3] >= 0 ? plane[tp.idx[3]] : scalar_t(0);
              scalar_t g = go[p];
              if (has_scale) {
                // = g * tp.sample(plane), from the values already loaded (same expression and order)
                gscale_p[i * HW + p] =
                    g * ((((tp.wy0 * tp.wx0) * v00 + (tp.wy0 * tp.wx1) * v01) + (tp.wy1 * tp.wx0) * v10) +
                         (tp.wy1 * tp.wx1) * v11);
                g = g * sp[y * st[2] + x * st[3]];
              }
              if (tp.idx[0] >= 0) gplane[tp.idx[0]] += (tp.wy0 * tp.wx0) * g;
              if (tp.idx[1] >= 0) gplane[tp.idx[1]] += (tp.wy0 * tp.wx1) * g;
              if (tp.idx[2] >= 0) gplane[tp.idx[2]] += (tp.wy1 * tp.wx0) * g;
              if (tp.idx[3] >= 0) gplane[tp.idx[3]] += (tp.wy1 * tp.wx1) * g;
              gx[p] += g * (tp.wy0 * (v01 - v00) + tp.wy1 * (v11 - v10));
              gy[p] += g * (tp.wx0 * (v10 - v00) + tp.wx1 * (v11 - v01));
            }
        }
      }
    });
    for (int64_t n = 0; n < N; ++n)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const scalar_t* part = partial.data() + (n * blocks + blk) * 2 * HW;
        scalar_t* out = gflow_p + n * 2 * HW;
        for (int64_t q = 0; q < 2 * HW; ++q) out[q] += part[q];
      }
  });
  return {grad_feat, grad_flow, grad_scale};
}

}  // namespace
}  // namespace dff

TORCH_LIBRARY_IMPL(dff, CPU, m) {
  m.impl("warp_scale_forward", &dff::warp_scale_forward_cpu);
  m.impl("warp_scale_backward", &dff::warp_scale_backward_cpu);
}
