// Argument checks shared by the CPU and CUDA entry points (host only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace dff {

inline void check_psroi_forward(const at::Tensor& data, const at::Tensor& rois, int64_t group_size,
                                int64_t pooled_size, int64_t output_dim) {
  TORCH_CHECK(data.dim() == 4, "psroi_pool: data must be (N, C, H, W), got ", data.dim(), " dims");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5,
              "psroi_pool: rois must be (R, 5) [batch, x1, y1, x2, y2], got ", rois.sizes());
  TORCH_CHECK(data.scalar_type() == rois.scalar_type(), "psroi_pool: data (", data.scalar_type(),
              ") and rois (", rois.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(data.device() == rois.device(), "psroi_pool: data (", data.device(), ") and rois (",
              rois.device(), ") must be on the same device");
  TORCH_CHECK(group_size >= 1 && pooled_size >= 1 && output_dim >= 1,
              "psroi_pool: group_size, pooled_size and output_dim must be >= 1, got ", group_size, ", ",
              pooled_size, ", ", output_dim);
  TORCH_CHECK(data.size(1) == output_dim * group_size * group_size, "psroi_pool: data has ", data.size(1),
              " channels, expected output_dim*group_size^2 = ", output_dim * group_size * group_size);
}

inline void check_psroi_backward(const at::Tensor& grad_out, const at::Tensor& rois,
                                 const at::Tensor& mapping_channel, int64_t pooled_size,
                                 c10::IntArrayRef data_size) {
  TORCH_CHECK(data_size.size() == 4, "psroi_pool_backward: data_size must be (N, C, H, W)");
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == rois.size(0) && grad_out.size(2) == pooled_size &&
                  grad_out.size(3) == pooled_size,
              "psroi_pool_backward: grad_out must be (R, output_dim, P, P), got ", grad_out.sizes());
  TORCH_CHECK(mapping_channel.sizes() == grad_out.sizes() && mapping_channel.scalar_type() == at::kInt,
              "psroi_pool_backward: mapping_channel must be int32 with grad_out's shape");
  TORCH_CHECK(data_size[1] % grad_out.size(1) == 0,
              "psroi_pool_backward: data channels must be a multiple of output_dim");
  TORCH_CHECK(grad_out.scalar_type() == rois.scalar_type(), "psroi_pool_backward: grad_out and rois dtypes differ");
}

inline void check_warp(const at::Tensor& feat, const at::Tensor& flow, const c10::optional<at::Tensor>& scale) {
  TORCH_CHECK(feat.dim() == 4, "warp_scale: feat must be (N, C, H, W), got ", feat.dim(), " dims");
  TORCH_CHECK(flow.dim() == 4 && flow.size(0) == feat.size(0) && flow.size(1) == 2 &&
                  flow.size(2) == feat.size(2) && flow.size(3) == feat.size(3),
              "warp_scale: flow must be (N, 2, H, W) = (", feat.size(0), ", 2, ", feat.size(2), ", ",
              feat.size(3), "), got ", flow.sizes());
  TORCH_CHECK(flow.scalar_type() == feat.scalar_type(), "warp_scale: feat (", feat.scalar_type(),
              ") and flow (", flow.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(flow.device() == feat.device(), "warp_scale: feat and flow must be on the same device");
  if (scale.has_value() && scale->defined()) {
    TORCH_CHECK(scale->sizes() == feat.sizes(), "warp_scale: scale must have feat's sizes ", feat.sizes(),
                " (expand a broadcastable scale first), got ", scale->sizes());
    TORCH_CHECK(scale->scalar_type() == feat.scalar_type(), "warp_scale: scale dtype differs from feat");
    TORCH_CHECK(scale->device() == feat.device(), "warp_scale: scale must be on feat's device");
  }
}

// nms_fixed: boxes (n, 4) float; valid (n,) bool, labels (n,) int64, scores (n,) boxes' dtype, all optional.
inline void check_nms_fixed(const at::Tensor& boxes, const c10::optional<at::Tensor>& valid,
                            const c10::optional<at::Tensor>& labels, const c10::optional<at::Tensor>& scores,
                            int64_t max_keep, int64_t cap) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "nms_fixed: boxes must be (n, 4), got ", boxes.sizes());
  const int64_t n = boxes.size(0);
  TORCH_CHECK(max_keep >= 0, "nms_fixed: max_keep must be >= 0, got ", max_keep);
  if (valid.has_value() && valid->defined()) {
    TORCH_CHECK(valid->dim() == 1 && valid->size(0) == n && valid->scalar_type() == at::kBool,
                "nms_fixed: valid must be a bool (", n, ",) tensor, got ", valid->scalar_type(), " ", valid->sizes());
    TORCH_CHECK(valid->device() == boxes.device(), "nms_fixed: valid must be on the boxes' device");
  }
  if (labels.has_value() && labels->defined()) {
    TORCH_CHECK(labels->dim() == 1 && labels->size(0) == n && labels->scalar_type() == at::kLong,
                "nms_fixed: labels must be an int64 (", n, ",) tensor, got ", labels->scalar_type(), " ",
                labels->sizes());
    TORCH_CHECK(labels->device() == boxes.device(), "nms_fixed: labels must be on the boxes' device");
  }
  const bool has_scores = scores.has_value() && scores->defined();
  TORCH_CHECK(cap <= 0 || has_scores, "nms_fixed: cap > 0 needs scores");
  if (has_scores) {
    TORCH_CHECK(scores->dim() == 1 && scores->size(0) == n && scores->scalar_type() == boxes.scalar_type(),
                "nms_fixed: scores must be (", n, ",) with the boxes' dtype ", boxes.scalar_type(), ", got ",
                scores->scalar_type(), " ", scores->sizes());
    TORCH_CHECK(scores->device() == boxes.device(), "nms_fixed: scores must be on the boxes' device");
  }
}

// nms_fixed's inputs after the checks, contiguous; an undefined tensor for an absent option.
struct NmsInputs {
  at::Tensor boxes, valid, labels, scores;
};

inline NmsInputs nms_fixed_inputs(const at::Tensor& boxes, const c10::optional<at::Tensor>& valid,
                                  const c10::optional<at::Tensor>& labels, const c10::optional<at::Tensor>& scores,
                                  int64_t max_keep, int64_t cap) {
  check_nms_fixed(boxes, valid, labels, scores, max_keep, cap);
  auto given = [](const c10::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
  };
  return {boxes.contiguous(), given(valid), given(labels), given(scores)};
}

}  // namespace dff
