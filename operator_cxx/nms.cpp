// Fixed-size greedy NMS (dff::nms_fixed), CPU kernel: the scan of the CUDA kernel, one box at a time,
// each tested against the boxes kept so far (O(n * keeps), and the scan stops early, so the 6000 ->
// 300 proposal NMS tests far fewer pairs than the full n x n matrix).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "dff_checks.h"
#include "dff_ops.h"

namespace dff {
namespace {

std::tuple<at::Tensor, at::Tensor> nms_fixed_cpu(const at::Tensor& boxes_in, const c10::optional<at::Tensor>& valid_in,
                                                 const c10::optional<at::Tensor>& labels_in,
                                                 const c10::optional<at::Tensor>& scores_in, double iou_threshold,
                                                 int64_t max_keep, int64_t cap) {
  const NmsInputs in = nms_fixed_inputs(boxes_in, valid_in, labels_in, scores_in, max_keep, cap);
  const at::Tensor& boxes = in.boxes;
  at::Tensor keep = at::full({max_keep}, -1, boxes.options().dtype(at::kLong));
  at::Tensor count = at::zeros({1}, boxes.options().dtype(at::kLong));
  const int64_t n = boxes.size(0);
  if (n == 0 || max_keep == 0) return {keep, count};
  int64_t* keep_p = keep.mutable_data_ptr<int64_t>();
  const bool* valid_p = in.valid.defined() ? in.valid.const_data_ptr<bool>() : nullptr;
  const int64_t* label_p = in.labels.defined() ? in.labels.const_data_ptr<int64_t>() : nullptr;
  int64_t kept = 0;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_fixed_cpu", [&] {
    const scalar_t* box_p = boxes.const_data_ptr<scalar_t>();
    const scalar_t* score_p = in.scores.defined() ? in.scores.const_data_ptr<scalar_t>() : nullptr;
    scalar_t cap_score = scalar_t(0);
    for (int64_t i = 0; i < n && kept < max_keep; ++i) {
      if (valid_p != nullptr && !valid_p[i]) continue;
      bool suppressed = false;
      for (int64_t k = 0; k < kept && !suppressed; ++k) {
        const int64_t j = keep_p[k];
        if (label_p != nullptr && label_p[j] != label_p[i]) continue;
        suppressed = nms_suppresses(box_p + 4 * j, box_p + 4 * i, iou_threshold);
      }
      if (suppressed) continue;
      if (cap > 0 && kept >= cap && score_p[i] < cap_score) break;
      keep_p[kept++] = i;
      if (cap > 0 && kept == cap) cap_score = score_p[i];
    }
  });
  count.fill_(kept);
  return {keep, count};
}

}  // namespace
}  // namespace dff

TORCH_LIBRARY_IMPL(dff, CPU, m) { m.impl("nms_fixed", &dff::nms_fixed_cpu); }
