// Fused flow warp x scale, CUDA kernels (same WarpTap geometry and sample expression as the CPU
// kernels; --fmad=false keeps the float results identical to them in the forward pass).
// Backward: the feat gradient is scattered with atomicAdd (not bit-reproducible run to run); the flow
// gradient is one thread per pixel summing its channels in order (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "dff_checks.h"
#include "dff_ops.h"

namespace dff {
namespace {

constexpr int kThreads = 256;

inline unsigned int num_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
}

// scale strides; has == false means "no scale" (factor 1)
struct ScaleView {
  bool has;
  int64_t s0, s1, s2, s3;
};

template <typename scalar_t>
__device__ __forceinline__ scalar_t scale_at(const scalar_t* s, const ScaleView& v, int64_t n, int64_t c,
                                             int64_t y, int64_t x) {
  return v.has ? s[n * v.s0 + c * v.s1 + y * v.s2 + x * v.s3] : scalar_t(1);
}

template <typename scalar_t>
__global__ void warp_forward_kernel(int64_t count, const scalar_t* __restrict__ feat,
                                    const scalar_t* __restrict__ flow, const scalar_t* __restrict__ scale,
                                    ScaleView sv, int64_t C, int64_t H, int64_t W, scalar_t* __restrict__ out) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = index % W;
    const int64_t y = (index / W) % H;
    const int64_t c = (index / W / H) % C;
    const int64_t n = index / W / H / C;
    const int64_t HW = H * W;
    const scalar_t* fl = flow + n * 2 * HW + y * W + x;
    const WarpTap<scalar_t> tap(x, y, fl[0], fl[HW], H, W);
    const scalar_t v = tap.sample(feat + (n * C + c) * HW);
    out[index] = sv.has ? v * scale_at(scale, sv, n, c, y, x) : v;
  }
}

template <typename scalar_t>
__global__ void warp_backward_feat_kernel(int64_t count, const scalar_t* __restrict__ grad_out,
                                          const scalar_t* __restrict__ feat, const scalar_t* __restrict__ flow,
                                          const scalar_t* __restrict__ scale, ScaleView sv, int64_t C, int64_t H,
                                          int64_t W, scalar_t* __restrict__ grad_feat,
                                          scalar_t* __restrict__ grad_scale) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = index % W;
    const int64_t y = (index / W) % H;
    const int64_t c = (index / W / H) % C;
    const int64_t n = index / W / H / C;
    const int64_t HW = H * W;
    const scalar_t* fl = flow + n * 2 * HW + y * W + x;
    const WarpTap<scalar_t> tap(x, y, fl[0], fl[HW], H, W);
    scalar_t g = grad_out[index];
    if (sv.has) {
      grad_scale[index] = g * tap.sample(feat + (n * C + c) * HW);
      g = g * scale_at(scale, sv, n, c, y, x);
    }
    scalar_t* gplane = grad_feat + (n * C + c) * HW;
    if (tap.idx[0] >= 0) atomicAdd(gplane + tap.idx[0], (tap.wy0 * tap.wx0) * g);
    if (tap.idx[1] >= 0) atomicAdd(gplane + tap.idx[1], (tap.wy0 * tap.wx1) * g);
    if (tap.idx[2] >= 0) atomicAdd(gplane + tap.idx[2], (tap.wy1 * tap.wx0) * g);
    if (tap.idx[3] >= 0) atomicAdd(gplane + tap.idx[3], (tap.wy1 * tap.wx1) * g);
  }
}

template <typename scalar_t>
__global__ void warp_backward_flow_kernel(int64_t count, const scalar_t* __restrict__ grad_out,
                                          const scalar_t* __restrict__ feat, const scalar_t* __restrict__ flow,
                                          const scalar_t* __restrict__ scale, ScaleView sv, int64_t C, int64_t H,
                                          int64_t W, scalar_t* __restrict__ grad_flow) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t x = index % W;
    const int64_t y = (index / W) % H;
    const int64_t n = index / W / H;
    const int64_t HW = H * W;
    const scalar_t* fl = flow + n * 2 * HW + y * W + x;
    const WarpTap<scalar_t> tap(x, y, fl[0], fl[HW], H, W);
    scalar_t gx = 0, gy = 0;
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* plane = feat + (n * C + c) * HW;
      const scalar_t g = grad_out[(n * C + c) * HW + y * W + x] * scale_at(scale, sv, n, c, y, x);
      const scalar_t v00 = tap.idx[0] >= 0 ? plane[tap.idx[0]] : scalar_t(0);
      const scalar_t v01 = tap.idx[1] >= 0 ? plane[tap.idx[1]] : scalar_t(0);
      const scalar_t v10 = tap.idx[2] >= 0 ? plane[tap.idx[2]] : scalar_t(0);
      const scalar_t v11 = tap.idx[3] >= 0 ? plane[tap.idx[3]] : scalar_t(0);
      gx += g * (tap.wy0 * (v01 - v00) + tap.wy1 * (v11 - v10));
      gy += g * (tap.wx0 * (v10 - v00) + tap.wx1 * (v11 - v01));
    }
    grad_flow[n * 2 * HW + y * W + x] = gx;
    grad_flow[n * 2 * HW + HW + y * W + x] = gy;
  }
}

ScaleView scale_view(const c10::optional<at::Tensor>& scale) {
  if (!scale.has_value() || !scale->defined()) return ScaleView{false, 0, 0, 0, 0};
  const auto st = scale->strides();
  return ScaleView{true, st[0], st[1], st[2], st[3]};
}

at::Tensor warp_scale_forward_cuda(const at::Tensor& feat_in, const at::Tensor& flow_in,
                                   const c10::optional<at::Tensor>& scale) {
  check_warp(feat_in, flow_in, scale);
  c10::cuda::CUDAGuard guard(feat_in.device());
  const at::Tensor feat = feat_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  const ScaleView sv = scale_view(scale);
  const int64_t C = feat.size(1), H = feat.size(2), W = feat.size(3);
  at::Tensor out = at::empty(feat.sizes(), feat.options());
  const int64_t count = out.numel();
  if (count == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "warp_scale_forward_cuda", [&] {
    warp_forward_kernel<scalar_t><<<num_blocks(count), kThreads, 0, stream>>>(
        count, feat.const_data_ptr<scalar_t>(), flow.const_data_ptr<scalar_t>(),
        sv.has ? scale->const_data_ptr<scalar_t>() : nullptr, sv, C, H, W, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> warp_scale_backward_cuda(const at::Tensor& grad_out_in,
                                                                        const at::Tensor& feat_in,
                                                                        const at::Tensor& flow_in,
                                                                        const c10::optional<at::Tensor>& scale) {
  check_warp(feat_in, flow_in, scale);
  TORCH_CHECK(grad_out_in.sizes() == feat_in.sizes() && grad_out_in.scalar_type() == feat_in.scalar_type(),
              "warp_scale_backward: grad_out must match feat, got ", grad_out_in.sizes());
  c10::cuda::CUDAGuard guard(feat_in.device());
  const at::Tensor feat = feat_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const ScaleView sv = scale_view(scale);
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  at::Tensor grad_feat = at::zeros({N, C, H, W}, feat.options());
  at::Tensor grad_flow = at::zeros({N, 2, H, W}, feat.options());
  at::Tensor grad_scale = at::zeros({sv.has ? N : 0, C, H, W}, feat.options());
  const int64_t count = feat.numel();
  if (count == 0) return {grad_feat, grad_flow, grad_scale};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "warp_scale_backward_cuda", [&] {
    const scalar_t* s_p = sv.has ? scale->const_data_ptr<scalar_t>() : nullptr;
    warp_backward_feat_kernel<scalar_t><<<num_blocks(count), kThreads, 0, stream>>>(
        count, grad_out.const_data_ptr<scalar_t>(), feat.const_data_ptr<scalar_t>(),
        flow.const_data_ptr<scalar_t>(), s_p, sv, C, H, W, grad_feat.mutable_data_ptr<scalar_t>(),
        sv.has ? grad_scale.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t pixels = N * H * W;
    warp_backward_flow_kernel<scalar_t><<<num_blocks(pixels), kThreads, 0, stream>>>(
        pixels, grad_out.const_data_ptr<scalar_t>(), feat.const_data_ptr<scalar_t>(),
        flow.const_data_ptr<scalar_t>(), s_p, sv, C, H, W, grad_flow.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_feat, grad_flow, grad_scale};
}

}  // namespace
}  // namespace dff

TORCH_LIBRARY_IMPL(dff, CUDA, m) {
  m.impl("warp_scale_forward", &dff::warp_scale_forward_cuda);
  m.impl("warp_scale_backward", &dff::warp_scale_backward_cuda);
}
