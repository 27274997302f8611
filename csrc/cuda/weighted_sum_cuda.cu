#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"

namespace ackd_fast {
namespace {

// Source pointers travel by value in the launch arguments: no device-side pointer table to allocate.
template <typename scalar_t>
struct Sources {
  const scalar_t* ptr[kMaxSources];
};

template <typename scalar_t>
__global__ void weighted_sum_kernel(Sources<scalar_t> src, const scalar_t* __restrict__ weights, int n,
                                    scalar_t* __restrict__ out, int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;  // fp32 accumulation for fp16/bf16
  acc_t w[kMaxSources];
  for (int j = 0; j < n; ++j) w[j] = static_cast<acc_t>(weights[j]);
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel; i += stride) {
    acc_t acc = 0;
    for (int j = 0; j < n; ++j) acc += w[j] * static_cast<acc_t>(src.ptr[j][i]);
    out[i] = static_cast<scalar_t>(acc);
  }
}

at::Tensor weighted_sum_cuda(at::TensorList inputs, const at::Tensor& weights) {
  check_weighted_sum_args(inputs, weights);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  const auto format = output_format(inputs[0]);
  std::vector<at::Tensor> dense;
  for (const auto& t : inputs) dense.push_back(t.contiguous(format));
  auto w = weights.contiguous();
  auto out = at::empty(inputs[0].sizes(), inputs[0].options().memory_format(format));
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  constexpr int threads = 256;
  const int64_t max_blocks = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 8;
  const int blocks = static_cast<int>(std::min((numel + threads - 1) / threads, max_blocks));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cuda", [&] {
    Sources<scalar_t> src{};
    for (size_t j = 0; j < dense.size(); ++j) src.ptr[j] = dense[j].const_data_ptr<scalar_t>();
    weighted_sum_kernel<scalar_t><<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        src, w.const_data_ptr<scalar_t>(), static_cast<int>(dense.size()), out.mutable_data_ptr<scalar_t>(),
        numel);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CUDA, m) { m.impl("weighted_sum", &weighted_sum_cuda); }

}  // namespace ackd_fast
