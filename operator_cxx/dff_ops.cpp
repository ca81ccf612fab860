// Operator schemas of the `dff` namespace. The kernels are registered per device in
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
}
