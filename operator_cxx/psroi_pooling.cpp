// PSROIPooling, CPU kernels: a port of the original psroi_pooling.cu (and of MXNet 1.9.1's contrib
// CPU kernel, which the fixtures were made with): same rounding, bins, clipping and bin average.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "dff_checks.h"
#include "dff_ops.h"

namespace dff {
namespace {

template <typename scalar_t>
void check_batch_indices(const scalar_t* rois, int64_t num_rois, int64_t batch) {
  for (int64_t r = 0; r < num_rois; ++r) {
    const scalar_t b = rois[r * 5];
    // the reference casts the float batch index to int (truncation); it must name an image
    TORCH_CHECK(std::isfinite(static_cast<double>(b)) && static_cast<int64_t>(b) >= 0 &&
                    static_cast<int64_t>(b) < batch,
                "psroi_pool: rois[", r, ", 0] = ", static_cast<double>(b), " is not a batch index in [0, ",
                batch, ")");
  }
}

// One output bin: the mean of plane[hstart:hend, wstart:wend] (0 for an empty bin), summed row by row
// as the reference; the input channel goes to the mapping for the backward pass.
template <typename scalar_t>
inline void average_bin(const scalar_t* plane, int64_t W, int64_t hstart, int64_t hend, int64_t wstart, int64_t wend,
                        int64_t o, int64_t c, scalar_t* out_p, int32_t* map_p) {
  scalar_t sum = 0;
  for (int64_t h = hstart; h < hend; ++h)
    for (int64_t w = wstart; w < wend; ++w) sum += plane[h * W + w];
  const bool empty = hend <= hstart || wend <= wstart;
  const scalar_t area = static_cast<scalar_t>((hend - hstart) * (wend - wstart));
  out_p[o] = empty ? scalar_t(0) : sum / area;
  map_p[o] = static_cast<int32_t>(c);
}

std::tuple<at::Tensor, at::Tensor> psroi_pool_forward_cpu(const at::Tensor& data_in, const at::Tensor& rois_in,
                                                          double spatial_scale, int64_t group_size,
                                                          int64_t pooled_size, int64_t output_dim) {
  check_psroi_forward(data_in, rois_in, group_size, pooled_size, output_dim);
  const at::Tensor data = data_in.contiguous();
  const at::Tensor rois = rois_in.contiguous();
  const int64_t N = data.size(0), C = data.size(1), H = data.size(2), W = data.size(3);
  const int64_t R = rois.size(0), D = output_dim, P = pooled_size, G = group_size;
  at::Tensor out = at::empty({R, D, P, P}, data.options());
  at::Tensor mapping = at::empty({R, D, P, P}, data.options().dtype(at::kInt));
  if (R == 0) return {out, mapping};

  AT_DISPATCH_FLOATING_TYPES(data.scalar_type(), "psroi_pool_forward_cpu", [&] {
    const scalar_t* data_p = data.const_data_ptr<scalar_t>();
    const scalar_t* rois_p = rois.const_data_ptr<scalar_t>();
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    int32_t* map_p = mapping.mutable_data_ptr<int32_t>();
    check_batch_indices(rois_p, R, N);
    const scalar_t scale = static_cast<scalar_t>(spatial_scale);
    if (G == P) {
      // R-FCN's case: input channel c = (ctop, gh, gw) feeds exactly bin (gh, gw) of output channel ctop
      // of every roi. One task = one input plane for all rois, so the plane stays in cache instead of
      // 49 planes per (roi, ctop) task; each bin sums the same elements in the same order as below,
      // so the result is the same bit for bit.
      std::vector<int64_t> bins(static_cast<size_t>(R * P * 4));  // per roi: hstart, hend, wstart, wend
      for (int64_t n = 0; n < R; ++n) {
        const PsroiRoi<scalar_t> roi(rois_p + n * 5, scale, P);
        for (int64_t p = 0; p < P; ++p) {
          int64_t* e = &bins[static_cast<size_t>((n * P + p) * 4)];
          roi.bin_h_range(p, H, e[0], e[1]);
          roi.bin_w_range(p, W, e[2], e[3]);
        }
      }
      at::parallel_for(0, C, std::max<int64_t>(1, 1024 / std::max<int64_t>(1, R)), [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          const int64_t ctop = c / (P * P), ph = (c / P) % P, pw = c % P;
          for (int64_t n = 0; n < R; ++n) {
            const int64_t b = static_cast<int64_t>(rois_p[n * 5]);
            const int64_t hstart = bins[static_cast<size_t>((n * P + ph) * 4)];
            const int64_t hend = bins[static_cast<size_t>((n * P + ph) * 4 + 1)];
            const int64_t wstart = bins[static_cast<size_t>((n * P + pw) * 4 + 2)];
            const int64_t wend = bins[static_cast<size_t>((n * P + pw) * 4 + 3)];
            average_bin(data_p + (b * C + c) * H * W, W, hstart, hend, wstart, wend,
                        ((n * D + ctop) * P + ph) * P + pw, c, out_p, map_p);
          }
        }
      });
      return;
    }
    // one task = one (roi, output channel): P*P bins, each a small box sum; chunks of >= ~1024 bins so
    // that small inputs run inline
    at::parallel_for(0, R * D, std::max<int64_t>(1, 1024 / (P * P)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / D, ctop = i % D;
        const scalar_t* roi_p = rois_p + n * 5;
        const int64_t b = static_cast<int64_t>(roi_p[0]);
        const PsroiRoi<scalar_t> roi(roi_p, scale, P);
        for (int64_t ph = 0; ph < P; ++ph) {
          int64_t hstart, hend;
          roi.bin_h_range(ph, H, hstart, hend);
          for (int64_t pw = 0; pw < P; ++pw) {
            int64_t wstart, wend;
            roi.bin_w_range(pw, W, wstart, wend);
            const int64_t c = psroi_channel(ctop, ph, pw, G, P);
            average_bin(data_p + (b * C + c) * H * W, W, hstart, hend, wstart, wend, (i * P + ph) * P + pw, c,
                        out_p, map_p);
          }
        }
      }
    });
  });
  return {out, mapping};
}

at::Tensor psroi_pool_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& rois_in,
                                   const at::Tensor& mapping_in, double spatial_scale, int64_t pooled_size,
                                   c10::IntArrayRef data_size) {
  check_psroi_backward(grad_out_in, rois_in, mapping_in, pooled_size, data_size);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor rois = rois_in.contiguous();
  const at::Tensor mapping = mapping_in.contiguous();
  const int64_t N = data_size[0], C = data_size[1], H = data_size[2], W = data_size[3];
  const int64_t R = grad_out.size(0), D = grad_out.size(1), P = pooled_size;
  at::Tensor grad_data = at::zeros({N, C, H, W}, grad_out.options());
  if (R == 0) return grad_data;
  const int64_t channels_per_dim = C / D;

  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "psroi_pool_backward_cpu", [&] {
    const scalar_t* g_p = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* rois_p = rois.const_data_ptr<scalar_t>();
    const int32_t* map_p = mapping.const_data_ptr<int32_t>();
    scalar_t* gd_p = grad_data.mutable_data_ptr<scalar_t>();
    check_batch_indices(rois_p, R, N);
    const scalar_t scale = static_cast<scalar_t>(spatial_scale);
    // The reference scatters output element by output element in (roi, ctop, ph, pw) order. An output
    // channel ctop only ever writes its own group of G*G data channels, so splitting the work by ctop
    // is race free and keeps, for every data pixel, exactly the reference's accumulation order
    // (roi, then bin): the float sums are bit-identical to the sequential kernel for any thread count.
    at::parallel_for(0, D, std::max<int64_t>(1, 1024 / (R * P * P)), [&](int64_t begin, int64_t end) {
      for (int64_t ctop = begin; ctop < end; ++ctop) {
        for (int64_t n = 0; n < R; ++n) {
          const scalar_t* roi_p = rois_p + n * 5;
          const int64_t b = static_cast<int64_t>(roi_p[0]);
          const PsroiRoi<scalar_t> roi(roi_p, scale, P);
          for (int64_t ph = 0; ph < P; ++ph) {
            int64_t hstart, hend;
            roi.bin_h_range(ph, H, hstart, hend);
            for (int64_t pw = 0; pw < P; ++pw) {
              int64_t wstart, wend;
              roi.bin_w_range(pw, W, wstart, wend);
              if (hend <= hstart || wend <= wstart) continue;  // empty bin: no gradient
              const int64_t o = ((n * D + ctop) * P + ph) * P + pw;
              const int64_t c = map_p[o];
              TORCH_CHECK(c >= 0 && c < C && c / channels_per_dim == ctop,
                          "psroi_pool_backward: mapping_channel[", o, "] = ", c,
                          " is not a channel of output channel ", ctop);
              const scalar_t area = static_cast<scalar_t>((hend - hstart) * (wend - wstart));
              const scalar_t diff = g_p[o] / area;
              scalar_t* plane = gd_p + (b * C + c) * H * W;
              for (int64_t h = hstart; h < hend; ++h)
                for (int64_t w = wstart; w < wend; ++w) plane[h * W + w] += diff;
            }
          }
        }
      }
    });
  });
  return grad_data;
}

}  // namespace
}  // namespace dff

TORCH_LIBRARY_IMPL(dff, CPU, m) {
  m.impl("psroi_pool_forward", &dff::psroi_pool_forward_cpu);
  m.impl("psroi_pool_backward", &dff::psroi_pool_backward_cpu);
}
