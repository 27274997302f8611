// Launch geometry shared by the CUDA kernels.
#pragma once
#include <algorithm>

#include <ATen/cuda/CUDAContext.h>

namespace ackd_fast {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `numel` elements: enough to fill the device, never more than the work.
inline int blocks_for(int64_t numel) {
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min((numel + kThreads - 1) / kThreads, cap)));
}

}  // namespace ackd_fast
