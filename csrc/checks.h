// Input checks shared by the CPU and CUDA kernels, so both reject bad input with the same message.
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.
#pragma once
#include <ATen/ATen.h>

namespace ackd_fast {

constexpr int64_t kMaxSources = 4;  // DESIGN.md: 1 to 4 accumulated sources

inline void check_weighted_sum_args(at::TensorList inputs, const at::Tensor& weights) {
  const auto n = static_cast<int64_t>(inputs.size());
  TORCH_CHECK_VALUE(n >= 1 && n <= kMaxSources, "weighted_sum: inputs must hold 1 to ", kMaxSources,
                    " tensors, got ", n);
  const auto& first = inputs[0];
  TORCH_CHECK_TYPE(at::isFloatingType(first.scalar_type()),
                   "weighted_sum: inputs must be floating point, got ", first.scalar_type());
  for (int64_t j = 1; j < n; ++j) {
    TORCH_CHECK_VALUE(inputs[j].sizes() == first.sizes(), "weighted_sum: inputs[", j, "] has shape ",
                      inputs[j].sizes(), ", expected ", first.sizes(), " like inputs[0]");
    TORCH_CHECK_TYPE(inputs[j].scalar_type() == first.scalar_type(), "weighted_sum: inputs[", j,
                     "] has dtype ", inputs[j].scalar_type(), ", expected ", first.scalar_type());
    TORCH_CHECK_VALUE(inputs[j].device() == first.device(), "weighted_sum: inputs[", j, "] is on ",
                      inputs[j].device(), ", expected ", first.device());
  }
  TORCH_CHECK_VALUE(weights.dim() == 1 && weights.size(0) == n, "weighted_sum: weights has shape ",
                    weights.sizes(), ", expected (", n, ",), one weight per input");
  TORCH_CHECK_TYPE(weights.scalar_type() == first.scalar_type(), "weighted_sum: weights has dtype ",
                   weights.scalar_type(), ", expected ", first.scalar_type(), " like the inputs");
  TORCH_CHECK_VALUE(weights.device() == first.device(), "weighted_sum: weights is on ", weights.device(),
                    ", expected ", first.device(), " like the inputs");
}

// The layout the output takes: channels_last when the first input is laid out so (and not also plain
// contiguous, as when C == 1), else contiguous. ackd_fast/ops.py states the same rule for the fake kernel.
inline at::MemoryFormat output_format(const at::Tensor& t) {
  const bool channels_last =
      t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace ackd_fast
