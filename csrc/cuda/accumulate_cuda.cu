// ack_accumulate on CUDA: acc = sum_j w_j * resize_j(A_j), and its backward.
//
// Forward: one thread per output element, in the output's memory order so stores coalesce; each source is read
// through its own strides (channels_last and sliced views need no copy) at the taps of its resize rows.
// Backward: one thread per source element gathers grad from the outputs that read it (no atomics); the weight
// gradient <g_j, A_j> is reduced per block, then the block partials are summed: deterministic for a device.
// The resize rows are computed in the kernels (resample.h), so no op copies a table from the host or synchronises
// with it, and a CUDA graph can capture the ops at any size. fp16/bf16 accumulate in fp32 (at::opmath_type).
#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "../checks.h"
#include "../resample.h"
#include "launch.cuh"

namespace ackd_fast {
namespace {

// One source as a kernel argument: data, strides, and its size (its resize rows are computed where needed).
template <typename scalar_t>
struct DeviceSource {
  const scalar_t* ptr;
  int64_t sb, sc, sh, sw, h, w;
};

template <typename scalar_t>
struct DeviceSources {
  DeviceSource<scalar_t> s[kMaxSources];
};

// (b, c, y, x) of element `idx` of a dense (B, C, H, W) tensor stored NCHW or NHWC.
struct Coord {
  int64_t b, c, y, x;
};

__device__ __forceinline__ Coord decode(int64_t idx, int64_t C, int64_t H, int64_t W, bool channels_last) {
  Coord k;
  if (channels_last) {
    k.c = idx % C;
    idx /= C;
    k.x = idx % W;
    idx /= W;
    k.y = idx % H;
    k.b = idx / H;
  } else {
    k.x = idx % W;
    idx /= W;
    k.y = idx % H;
    idx /= H;
    k.c = idx % C;
    k.b = idx / C;
  }
  return k;
}

// Forward: sum over the taps of output (y, x) of weight * base[iy * sh + ix * sw], for a source of size h x w.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t gather_forward(const scalar_t* base, int64_t sh, int64_t sw, int64_t h, int64_t w,
                                                int64_t H, int64_t W, Resize mode, int64_t y, int64_t x) {
  const ResizeRow ry = resize_row(h, H, mode, y), rx = resize_row(w, W, mode, x);
  acc_t v = 0;
  for (int64_t ky = 0; ky < ry.count; ++ky) {
    const scalar_t* line = base + (ry.first + ky) * sh;
    acc_t vx = 0;
    for (int64_t kx = 0; kx < rx.count; ++kx)
      vx += static_cast<acc_t>(kx == 0 ? rx.w_first : rx.w_rest) * static_cast<acc_t>(line[(rx.first + kx) * sw]);
    v += static_cast<acc_t>(ky == 0 ? ry.w_first : ry.w_rest) * vx;
  }
  return v;
}

// Backward: sum over the outputs (oy, ox) that read source element (sy, sx) of weight * grad[oy * gsh + ox * gsw]:
// the transposed resize as a gather over the candidate readers (readers_of), no atomics.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t gather_backward(const scalar_t* grad, int64_t gsh, int64_t gsw, int64_t h, int64_t w,
                                                 int64_t H, int64_t W, Resize mode, int64_t sy, int64_t sx) {
  int64_t y0, y1, x0, x1;
  readers_of(h, H, sy, y0, y1);
  readers_of(w, W, sx, x0, x1);
  acc_t v = 0;
  for (int64_t oy = y0; oy <= y1; ++oy) {
    const double wy = resize_row(h, H, mode, oy).weight(sy);
    if (wy == 0.0) continue;
    acc_t vx = 0;
    for (int64_t ox = x0; ox <= x1; ++ox) {
      const double wx = resize_row(w, W, mode, ox).weight(sx);
      if (wx != 0.0) vx += static_cast<acc_t>(wx) * static_cast<acc_t>(grad[oy * gsh + ox * gsw]);
    }
    v += static_cast<acc_t>(wy) * vx;
  }
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void accumulate_forward_kernel(DeviceSources<scalar_t> src, int n, const acc_t* __restrict__ w,
                                          scalar_t* __restrict__ out, int64_t C, int64_t H, int64_t W, int64_t numel,
                                          bool channels_last, Resize mode) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < numel;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const Coord k = decode(idx, C, H, W, channels_last);
    acc_t acc = 0;
    for (int j = 0; j < n; ++j) {
      const auto& s = src.s[j];
      acc += w[j] * gather_forward<scalar_t, acc_t>(s.ptr + k.b * s.sb + k.c * s.sc, s.sh, s.sw, s.h, s.w, H, W, mode,
                                                    k.y, k.x);
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void accumulate_backward_kernel(DeviceSource<scalar_t> s, const scalar_t* __restrict__ grad, int64_t gsb,
                                           int64_t gsc, int64_t gsh, int64_t gsw, const acc_t* __restrict__ weight,
                                           scalar_t* __restrict__ grad_src, acc_t* __restrict__ partials, int64_t C,
                                           int64_t H, int64_t W, int64_t numel, bool channels_last, Resize mode) {
  const acc_t w = *weight;
  acc_t local = 0;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < numel;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const Coord k = decode(idx, C, s.h, s.w, channels_last);
    const acc_t g = gather_backward<scalar_t, acc_t>(grad + k.b * gsb + k.c * gsc, gsh, gsw, s.h, s.w, H, W, mode,
                                                     k.y, k.x);
    grad_src[idx] = static_cast<scalar_t>(w * g);
    local += g * static_cast<acc_t>(s.ptr[k.b * s.sb + k.c * s.sc + k.y * s.sh + k.x * s.sw]);
  }
  using Reduce = cub::BlockReduce<acc_t, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const acc_t total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

template <typename scalar_t>
DeviceSource<scalar_t> device_source(const at::Tensor& a) {
  return {a.const_data_ptr<scalar_t>(), a.stride(0), a.stride(1), a.stride(2), a.stride(3), a.size(2), a.size(3)};
}

at::Tensor ack_accumulate_cuda(at::TensorList sources, const at::Tensor& weights, at::IntArrayRef size,
                               c10::string_view mode_name) {
  check_accumulate_args(sources, weights, size);
  const Resize mode = parse_resize(std::string(mode_name));
  const c10::cuda::CUDAGuard guard(sources[0].device());
  const auto format = output_format(sources[0]);
  const int64_t B = sources[0].size(0), C = sources[0].size(1), H = size[0], W = size[1];
  auto out = new_output({B, C, H, W}, sources[0].options(), format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "ack_accumulate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    DeviceSources<scalar_t> src{};
    for (size_t j = 0; j < sources.size(); ++j) src.s[j] = device_source<scalar_t>(sources[j]);
    const auto w = weights.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const int64_t numel = out.numel();
    accumulate_forward_kernel<scalar_t, acc_t><<<blocks_for(numel), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        src, static_cast<int>(sources.size()), w.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), C, H, W,
        numel, format == at::MemoryFormat::ChannelsLast, mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> ack_accumulate_backward_cuda(const at::Tensor& grad,
                                                                             at::TensorList sources,
                                                                             const at::Tensor& weights,
                                                                             c10::string_view mode_name) {
  check_accumulate_backward_args(grad, sources, weights);
  const Resize mode = parse_resize(std::string(mode_name));
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t C = grad.size(1), H = grad.size(2), W = grad.size(3);
  std::vector<at::Tensor> grad_sources;
  std::vector<at::Tensor> grad_weights;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ack_accumulate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const auto w = weights.to(acc_dtype).contiguous();
    for (size_t j = 0; j < sources.size(); ++j) {
      const auto& a = sources[j];
      const auto format = output_format(a);
      auto gsrc = new_output(a.sizes(), a.options(), format);
      const int64_t numel = a.numel();
      const int blocks = blocks_for(numel);
      auto partials = at::empty({blocks}, a.options().dtype(acc_dtype));
      accumulate_backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          device_source<scalar_t>(a), grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2),
          grad.stride(3), w.const_data_ptr<acc_t>() + j, gsrc.mutable_data_ptr<scalar_t>(),
          partials.mutable_data_ptr<acc_t>(), C, H, W, numel, format == at::MemoryFormat::ChannelsLast, mode);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_sources.push_back(gsrc);
      grad_weights.push_back(partials.sum());
    }
  });
  return {grad_sources, at::stack(grad_weights).to(weights.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CUDA, m) {
  m.impl("ack_accumulate", &ack_accumulate_cuda);
  m.impl("ack_accumulate_backward", &ack_accumulate_backward_cuda);
}

}  // namespace ackd_fast
