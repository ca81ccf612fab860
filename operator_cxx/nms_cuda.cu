// Fixed-size greedy NMS (dff::nms_fixed), CUDA kernels. Two launches and no host synchronisation, so
// the proposal NMS and the detections' NMS fit in a CUDA graph with the rest of the frame:
//  1. nms_mask_kernel: for every box i and 64-box column block, a 64-bit word of the later boxes of the
//     same label that i would suppress (torchvision's layout; only blocks at or right of the diagonal);
//  2. nms_scan_kernel: one thread block walks the 64-box blocks in order. Thread 0 decides the boxes of
//     a block one by one from the block's diagonal words (in shared memory); then every thread ORs the
//     rows of that block's keeps into its share of the `removed` words of the later blocks.
// The scan stops at max_keep keeps or at the cap rule, and writes the -1 padding and the count itself.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "dff_checks.h"
#include "dff_ops.h"

namespace dff {
namespace {

constexpr int kBlock = 64;        // boxes per mask word
constexpr int kScanThreads = 256;  // threads of the scan block
// removed[] lives in shared memory: 48 KiB of 64-bit words (n <= 393,216)
constexpr int64_t kMaxWords = 48 * 1024 / 8;

template <typename scalar_t>
__global__ void nms_mask_kernel(int64_t n, int64_t words, const scalar_t* __restrict__ boxes,
                                const int64_t* __restrict__ labels, double thresh,
                                unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;  // the scan reads only words at or right of the diagonal
  const int64_t row_size = min(n - row_block * kBlock, static_cast<int64_t>(kBlock));
  const int64_t col_size = min(n - col_block * kBlock, static_cast<int64_t>(kBlock));
  __shared__ scalar_t col_boxes[kBlock * 4];
  __shared__ int64_t col_labels[kBlock];
  const int t = threadIdx.x;
  if (t < col_size) {
    const int64_t j = col_block * kBlock + t;
    for (int k = 0; k < 4; ++k) col_boxes[t * 4 + k] = boxes[j * 4 + k];
    col_labels[t] = labels != nullptr ? labels[j] : 0;
  }
  __syncthreads();
  if (t >= row_size) return;
  const int64_t i = row_block * kBlock + t;
  scalar_t cur[4];
  for (int k = 0; k < 4; ++k) cur[k] = boxes[i * 4 + k];
  const int64_t label = labels != nullptr ? labels[i] : 0;
  unsigned long long bits = 0;
  for (int64_t j = row_block == col_block ? t + 1 : 0; j < col_size; ++j) {
    if (col_labels[j] == label && nms_suppresses(cur, col_boxes + j * 4, thresh)) bits |= 1ULL << j;
  }
  mask[i * words + col_block] = bits;
}

template <typename scalar_t>
__global__ void nms_scan_kernel(int64_t n, int64_t words, const unsigned long long* __restrict__ mask,
                                const bool* __restrict__ valid, const scalar_t* __restrict__ scores,
                                int64_t max_keep, int64_t cap, int64_t* __restrict__ keep,
                                int64_t* __restrict__ count) {
  extern __shared__ unsigned long long removed[];
  __shared__ unsigned long long diag[kBlock];
  __shared__ scalar_t block_scores[kBlock];
  __shared__ unsigned long long block_keeps;
  __shared__ int64_t s_kept;
  __shared__ bool s_done;
  __shared__ scalar_t s_cap_score;
  const int t = threadIdx.x;
  for (int64_t w = t; w < words; w += blockDim.x) {  // invalid boxes start out removed
    unsigned long long bits = 0;
    if (valid != nullptr) {
      for (int b = 0; b < kBlock; ++b) {
        const int64_t i = w * kBlock + b;
        if (i < n && !valid[i]) bits |= 1ULL << b;
      }
    }
    removed[w] = bits;
  }
  if (t == 0) {
    s_kept = 0;
    s_done = max_keep == 0;
    s_cap_score = scalar_t(0);
  }
  __syncthreads();
  for (int64_t blk = 0; blk < words && !s_done; ++blk) {
    const int64_t base = blk * kBlock;
    const int64_t size = min(n - base, static_cast<int64_t>(kBlock));
    if (t < size) {
      diag[t] = mask[(base + t) * words + blk];
      if (scores != nullptr) block_scores[t] = scores[base + t];
    }
    __syncthreads();
    if (t == 0) {
      unsigned long long rem = removed[blk], kept_bits = 0;
      int64_t kept = s_kept;
      bool done = false;
      scalar_t cap_score = s_cap_score;
      for (int b = 0; b < size; ++b) {
        if (rem & (1ULL << b)) continue;
        if (cap > 0 && kept >= cap && block_scores[b] < cap_score) {
          done = true;
          break;
        }
        keep[kept++] = base + b;
        kept_bits |= 1ULL << b;
        rem |= diag[b];
        if (cap > 0 && kept == cap) cap_score = block_scores[b];
        if (kept >= max_keep) {
          done = true;
          break;
        }
      }
      block_keeps = kept_bits;
      s_kept = kept;
      s_done = done;
      s_cap_score = cap_score;
    }
    __syncthreads();
    const unsigned long long kept_bits = block_keeps;
    if (!s_done && kept_bits != 0) {
      for (int64_t w = blk + 1 + t; w < words; w += blockDim.x) {
        unsigned long long bits = removed[w];
        unsigned long long todo = kept_bits;
        while (todo != 0) {
          const int b = __ffsll(static_cast<long long>(todo)) - 1;
          todo &= todo - 1;
          bits |= mask[(base + b) * words + w];
        }
        removed[w] = bits;
      }
    }
    __syncthreads();
  }
  const int64_t kept = s_kept;
  if (t == 0) *count = kept;
  for (int64_t k = kept + t; k < max_keep; k += blockDim.x) keep[k] = -1;
}

std::tuple<at::Tensor, at::Tensor> nms_fixed_cuda(const at::Tensor& boxes_in, const c10::optional<at::Tensor>& valid_in,
                                                  const c10::optional<at::Tensor>& labels_in,
                                                  const c10::optional<at::Tensor>& scores_in, double iou_threshold,
                                                  int64_t max_keep, int64_t cap) {
  c10::cuda::CUDAGuard guard(boxes_in.device());
  const NmsInputs in = nms_fixed_inputs(boxes_in, valid_in, labels_in, scores_in, max_keep, cap);
  const at::Tensor& boxes = in.boxes;
  const int64_t n = boxes.size(0);
  const int64_t words = (n + kBlock - 1) / kBlock;
  TORCH_CHECK(words <= kMaxWords, "nms_fixed (CUDA): at most ", kMaxWords * kBlock, " boxes, got ", n);
  TORCH_CHECK(words <= 65535, "nms_fixed (CUDA): too many boxes for the mask grid: ", n);
  at::Tensor keep = at::empty({max_keep}, boxes.options().dtype(at::kLong));
  at::Tensor count = at::empty({1}, boxes.options().dtype(at::kLong));
  at::Tensor mask = at::empty({std::max<int64_t>(n * words, 1)}, boxes.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto* mask_p = reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_fixed_cuda", [&] {
    if (n > 0) {
      const dim3 grid(static_cast<unsigned int>(words), static_cast<unsigned int>(words));
      nms_mask_kernel<scalar_t><<<grid, kBlock, 0, stream>>>(
          n, words, boxes.const_data_ptr<scalar_t>(), in.labels.defined() ? in.labels.const_data_ptr<int64_t>() : nullptr,
          iou_threshold, mask_p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    nms_scan_kernel<scalar_t><<<1, kScanThreads, words * sizeof(unsigned long long), stream>>>(
        n, words, mask_p, in.valid.defined() ? in.valid.const_data_ptr<bool>() : nullptr,
        in.scores.defined() ? in.scores.const_data_ptr<scalar_t>() : nullptr, max_keep, cap, keep.mutable_data_ptr<int64_t>(),
        count.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {keep, count};
}

}  // namespace
}  // namespace dff

TORCH_LIBRARY_IMPL(dff, CUDA, m) { m.impl("nms_fixed", &dff::nms_fixed_cuda); }
