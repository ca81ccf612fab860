// Operator schemas of the `dff` namespace. The kernels are registered per device in nms.cpp,
// psroi_pooling.cpp / warp_scale.cpp (CPU) and the matching *_cuda.cu files (CUDA).
// The fake (meta) kernels and the autograd formulas are registered from Python, in the module named
// by set_python_module (torch requires that link for C++ operators with Python fake kernels).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dff, m) {
  m.set_python_module("dff.ops._ext");
  // PSROIPooling (R-FCN). rois: (R, 5) [batch, x1, y1, x2, y2] in image pixels.
  // out: (R, output_dim, P, P); mapping_channel: int32, same shape, the source channel of each bin.
  m.def(
      "psroi_pool_forward(Tensor data, Tensor rois, float spatial_scale, int group_size, "
      "int pooled_size, int output_dim) -> (Tensor out, Tensor mapping_channel)");
  // Gradient w.r.t. data (rois get none, as in MXNet). data_size = (N, C, H, W) of data.
  m.def(
      "psroi_pool_backward(Tensor grad_out, Tensor rois, Tensor mapping_channel, float spatial_scale, "
      "int pooled_size, int[4] data_size) -> Tensor grad_data");
  // out[n,c,y,x] = bilinear(feat[n,c], x + flow[n,0,y,x], y + flow[n,1,y,x]) * scale[n,c,y,x],
  // zero outside the map. scale: None (plain warp) or feat's sizes (any strides, so an expanded
  // (broadcast) view costs no copy).
  m.def("warp_scale_forward(Tensor feat, Tensor flow, Tensor? scale) -> Tensor");
  // grad_scale is an empty tensor when scale is None.
  m.def(
      "warp_scale_backward(Tensor grad_out, Tensor feat, Tensor flow, Tensor? scale) -> "
      "(Tensor grad_feat, Tensor grad_flow, Tensor grad_scale)");
  // Greedy NMS of boxes (n, 4) already in priority order, with a fixed-size result and no host
  // synchronisation (so a CUDA graph can hold it). A box is kept iff it is valid and no earlier kept
  // box of the same label overlaps it by IoU > iou_threshold (+1 widths). The scan ends after max_keep
  // keeps, or (cap > 0) at the first box that would be kept after cap keeps with a score below the
  // cap-th kept score. keep: (max_keep,) int64, the kept rows in order, then -1; count: (1,) int64.
  m.def(
      "nms_fixed(Tensor boxes, Tensor? valid, Tensor? labels, Tensor? scores, float iou_threshold, "
      "int max_keep, int cap) -> (Tensor keep, Tensor count)");
}
