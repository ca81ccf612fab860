// PSROIPooling, CUDA kernels: the original psroi_pooling.cu algorithm (one thread per output
// element; the backward scatters with atomicAdd, so its float sums are not bit-reproducible, unlike
// the CPU kernel). Compiled with --fmad=false so the bin edges match the CPU kernels exactly.
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

// the kernels loop grid-stride, so the grid can be capped
inline unsigned int num_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
}

// The CPU entry point rejects rois whose batch index is not an image; here that check would need a
// device-to-host sync, so such rois read nothing and give zeros instead.
template <typename scalar_t>
__device__ __forceinline__ bool roi_batch(const scalar_t* roi, int64_t batch, int64_t& b) {
  const scalar_t v = roi[0];
  if (!(v > scalar_t(-1)) || !(v < static_cast<scalar_t>(batch))) return false;  // also rejects NaN
  b = static_cast<int64_t>(v);
  return true;
}

template <typename scalar_t>
__global__ void psroi_forward_kernel(int64_t count, const scalar_t* __restrict__ data,
                                     const scalar_t* __restrict__ rois, scalar_t spatial_scale, int64_t N,
                                     int64_t C, int64_t H, int64_t W, int64_t D, int64_t P, int64_t G,
                                     scalar_t* __restrict__ out, int32_t* __restrict__ mapping) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = index % P;
    const int64_t ph = (index / P) % P;
    const int64_t ctop = (index / P / P) % D;
    const int64_t n = index / P / P / D;
    const scalar_t* roi_p = rois + n * 5;
    const int64_t c = psroi_channel(ctop, ph, pw, G, P);
    mapping[index] = static_cast<int32_t>(c);
    int64_t b;
    if (!roi_batch(roi_p, N, b)) {
      out[index] = scalar_t(0);
      continue;
    }
    const PsroiRoi<scalar_t> roi(roi_p, spatial_scale, P);
    int64_t hstart, hend, wstart, wend;
    roi.bin_h_range(ph, H, hstart, hend);
    roi.bin_w_range(pw, W, wstart, wend);
    const scalar_t* plane = data + (b * C + c) * H * W;
    scalar_t sum = 0;
    for (int64_t h = hstart; h < hend; ++h)
      for (int64_t w = wstart; w < wend; ++w) sum += plane[h * W + w];
    const bool empty = hend <= hstart || wend <= wstart;
    out[index] = empty ? scalar_t(0) : sum / static_cast<scalar_t>((hend - hstart) * (wend - wstart));
  }
}

template <typename scalar_t>
__global__ void psroi_backward_kernel(int64_t count, const scalar_t* __restrict__ grad_out,
                                      const scalar_t* __restrict__ rois, const int32_t* __restrict__ mapping,
                                      scalar_t spatial_scale, int64_t N, int64_t C, int64_t H, int64_t W,
                                      int64_t D, int64_t P, scalar_t* __restrict__ grad_data) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = index % P;
    const int64_t ph = (index / P) % P;
    const int64_t n = index / P / P / D;
    const scalar_t* roi_p = rois + n * 5;
    int64_t b;
    const int64_t c = mapping[index];
    if (!roi_batch(roi_p, N, b) || c < 0 || c >= C) continue;
    const PsroiRoi<scalar_t> roi(roi_p, spatial_scale, P);
    int64_t hstart, hend, wstart, wend;
    roi.bin_h_range(ph, H, hstart, hend);
    roi.bin_w_range(pw, W, wstart, wend);
    if (hend <= hstart || wend <= wstart) continue;
    const scalar_t diff = grad_out[index] / static_cast<scalar_t>((hend - hstart) * (wend - wstart));
    scalar_t* plane = grad_data + (b * C + c) * H * W;
    for (int64_t h = hstart; h < hend; ++h)
      for (int64_t w = wstart; w < wend; ++w) atomicAdd(plane + h * W + w, diff);
  }
}

std::tuple<at::Tensor, at::Tensor> psroi_pool_forward_cuda(const at::Tensor& data_in, const at::Tensor& rois_in,
                                                           double spatial_scale, int64_t group_size,
                                                           int64_t pooled_size, int64_t output_dim) {
  check_psroi_forward(data_in, rois_in, group_size, pooled_size, output_dim);
  c10::cuda::CUDAGuard guard(data_in.device());
  const at::Tensor data = data_in.contiguous();
  const at::Tensor rois = rois_in.contiguous();
  const int64_t N = data.size(0), C = data.size(1), H = data.size(2), W = data.size(3);
  const int64_t R = rois.size(0), D = output_dim, P = pooled_size;
  at::Tensor out = at::empty({R, D, P, P}, data.options());
  at::Tensor mapping = at::empty({R, D, P, P}, data.options().dtype(at::kInt));
  const int64_t count = out.numel();
  if (count == 0) return {out, mapping};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(data.scalar_type(), "psroi_pool_forward_cuda", [&] {
    psroi_forward_kernel<scalar_t><<<num_blocks(count), kThreads, 0, stream>>>(
        count, data.const_data_ptr<scalar_t>(), rois.const_data_ptr<scalar_t>(),
        static_cast<scalar_t>(spatial_scale), N, C, H, W, D, P, group_size, out.mutable_data_ptr<scalar_t>(),
        mapping.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, mapping};
}

at::Tensor psroi_pool_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& rois_in,
                                    const at::Tensor& mapping_in, double spatial_scale, int64_t pooled_size,
                                    c10::IntArrayRef data_size) {
  check_psroi_backward(grad_out_in, rois_in, mapping_in, pooled_size, data_size);
  c10::cuda::CUDAGuard guard(grad_out_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor rois = rois_in.contiguous();
  const at::Tensor mapping = mapping_in.contiguous();
  const int64_t N = data_size[0], C = data_size[1], H = data_size[2], W = data_size[3];
  at::Tensor grad_data = at::zeros({N, C, H, W}, grad_out.options());
  const int64_t count = grad_out.numel();
  if (count == 0) return grad_data;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "psroi_pool_backward_cuda", [&] {
    psroi_backward_kernel<scalar_t><<<num_blocks(count), kThreads, 0, stream>>>(
        count, grad_out.const_data_ptr<scalar_t>(), rois.const_data_ptr<scalar_t>(),
        mapping.const_data_ptr<int32_t>(), static_cast<scalar_t>(spatial_scale), N, C, H, W, grad_out.size(1),
        pooled_size, grad_data.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_data;
}

}  // namespace
}  // namespace dff

TORCH_LIBRARY_IMPL(dff, CUDA, m) {
  m.impl("psroi_pool_forward", &dff::psroi_pool_forward_cuda);
  m.impl("psroi_pool_backward", &dff::psroi_pool_backward_cuda);
}
