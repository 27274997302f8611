// instance_norm_act_residual on CUDA, forward and backward, in fp32 for fp16/bf16. Two layouts:
//  - planes (NCHW): one block per (sample, channel) plane, reading along W: a block reduction for the mean, one for
//    the squared deviations (two-pass), then one pass that writes act(x * scale + shift) + residual;
//  - pixels (channels_last, the training default): a warp reads 32 neighbouring channels of a pixel, so loads
//    coalesce along C. Blocks take (32 channels) x (a fixed chunk of pixels) of a sample and leave per-chunk
//    statistics (two-pass within the chunk); a small kernel combines the chunks in order (Chan's formula), and an
//    elementwise kernel in memory order writes the output. Chunks are fixed by the sizes, so results do not depend
//    on the device.
// Every tensor is read and written through its own strides. The backward reduces sum(gz) and sum(gz * xhat) per
// plane (pixels: per chunk, then in order), writes grad x, and leaves the per-plane sums for the weight and bias
// gradients, which ATen sums over the batch. No kernel synchronises with the host.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "../checks.h"
#include "launch.cuh"

namespace ackd_fast {
namespace {

// A (B, C, H, W) tensor's data and strides, as a kernel argument.
template <typename T>
struct Map {
  T* ptr;
  int64_t sb, sc, sh, sw;
  __device__ __forceinline__ T& at(int64_t b, int64_t c, int64_t i, int64_t W) const {
    return ptr[b * sb + c * sc + (i / W) * sh + (i % W) * sw];
  }
};

template <typename T>
Map<T> map_of(const at::Tensor& t) {
  return {const_cast<T*>(t.const_data_ptr<T>()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  using Reduce = cub::BlockReduce<acc_t, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ acc_t result;
  const acc_t total = Reduce(storage).Sum(v);
  if (threadIdx.x == 0) result = total;
  __syncthreads();
  const acc_t out = result;
  __syncthreads();  // storage and result are reused by the next call
  return out;
}

template <typename scalar_t, typename acc_t>
__global__ void norm_forward_kernel(Map<const scalar_t> x, Map<const scalar_t> res, bool has_res,
                                    const acc_t* __restrict__ weight, const acc_t* __restrict__ bias,
                                    Map<scalar_t> y, acc_t* __restrict__ mean, acc_t* __restrict__ rstd, int64_t C,
                                    int64_t W, int64_t N, acc_t eps, bool relu) {
  const int64_t bc = blockIdx.x, b = bc / C, c = bc % C;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) sum += static_cast<acc_t>(x.at(b, c, i, W));
  const acc_t mu = block_sum(sum) / N;
  acc_t sq = 0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) {
    const acc_t d = static_cast<acc_t>(x.at(b, c, i, W)) - mu;
    sq += d * d;
  }
  const acc_t r = rsqrt(block_sum(sq) / N + eps);
  if (threadIdx.x == 0) {
    mean[bc] = mu;
    rstd[bc] = r;
  }
  const acc_t scale = r * (weight ? weight[c] : acc_t(1));
  const acc_t shift = (bias ? bias[c] : acc_t(0)) - mu * scale;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) {
    acc_t v = static_cast<acc_t>(x.at(b, c, i, W)) * scale + shift;
    if (relu) v = v > acc_t(0) ? v : acc_t(0);
    if (has_res) v += static_cast<acc_t>(res.at(b, c, i, W));
    y.at(b, c, i, W) = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void norm_backward_kernel(Map<const scalar_t> grad, Map<const scalar_t> x, const acc_t* __restrict__ mean,
                                     const acc_t* __restrict__ rstd, const acc_t* __restrict__ weight,
                                     const acc_t* __restrict__ bias, Map<scalar_t> gx, acc_t* __restrict__ s1,
                                     acc_t* __restrict__ s2, int64_t C, int64_t W, int64_t N, bool relu) {
  const int64_t bc = blockIdx.x, b = bc / C, c = bc % C;
  const acc_t mu = mean[bc], r = rstd[bc];
  const acc_t wc = weight ? weight[c] : acc_t(1), bc_ = bias ? bias[c] : acc_t(0);
  auto terms = [&](int64_t i, acc_t& gz, acc_t& xhat) {
    xhat = (static_cast<acc_t>(x.at(b, c, i, W)) - mu) * r;
    gz = static_cast<acc_t>(grad.at(b, c, i, W));
    if (relu && xhat * wc + bc_ <= acc_t(0)) gz = 0;
  };
  acc_t sum_gz = 0, sum_gz_xhat = 0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) {
    acc_t gz, xhat;
    terms(i, gz, xhat);
    sum_gz += gz;
    sum_gz_xhat += gz * xhat;
  }
  sum_gz = block_sum(sum_gz);
  sum_gz_xhat = block_sum(sum_gz_xhat);
  if (threadIdx.x == 0) {
    s1[bc] = sum_gz;
    s2[bc] = sum_gz_xhat;
  }
  const acc_t k = r * wc, a = sum_gz / N, bb = sum_gz_xhat / N;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) {
    acc_t gz, xhat;
    terms(i, gz, xhat);
    gx.at(b, c, i, W) = static_cast<scalar_t>(k * (gz - a - xhat * bb));
  }
}

// ------------------------------------------------------------------------------------- pixels (channels_last)

constexpr int kChannelsPerBlock = 32;  // one warp along C
constexpr int kPixelRows = 8;          // warps per block, each on its own pixels
constexpr int64_t kPixelsPerChunk = 256;

// Sums v over threadIdx.y in a fixed order; every thread of column threadIdx.x gets the column's total.
template <typename acc_t>
__device__ __forceinline__ acc_t column_sum(acc_t v) {
  __shared__ acc_t partial[kPixelRows][kChannelsPerBlock];
  __shared__ acc_t total[kChannelsPerBlock];
  partial[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.y == 0) {
    acc_t t = 0;
    for (int r = 0; r < kPixelRows; ++r) t += partial[r][threadIdx.x];
    total[threadIdx.x] = t;
  }
  __syncthreads();
  const acc_t out = total[threadIdx.x];
  __syncthreads();  // partial and total are reused by the next call
  return out;
}

// Grid (channel blocks, chunks, batch). Writes the chunk's mean and sum of squared deviations per channel.
template <typename scalar_t, typename acc_t>
__global__ void norm_pixels_chunk_stats_kernel(Map<const scalar_t> x, acc_t* __restrict__ chunk_mean,
                                               acc_t* __restrict__ chunk_m2, int64_t C, int64_t W, int64_t N) {
  const int64_t b = blockIdx.z, chunk = blockIdx.y, chunks = gridDim.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kChannelsPerBlock + threadIdx.x;
  const int64_t p0 = chunk * kPixelsPerChunk, p1 = N < p0 + kPixelsPerChunk ? N : p0 + kPixelsPerChunk;
  const bool live = c < C;
  acc_t sum = 0;
  if (live)
    for (int64_t p = p0 + threadIdx.y; p < p1; p += kPixelRows) sum += static_cast<acc_t>(x.at(b, c, p, W));
  const acc_t mu = column_sum(sum) / static_cast<acc_t>(p1 - p0);
  acc_t sq = 0;
  if (live)
    for (int64_t p = p0 + threadIdx.y; p < p1; p += kPixelRows) {
      const acc_t d = static_cast<acc_t>(x.at(b, c, p, W)) - mu;
      sq += d * d;
    }
  const acc_t m2 = column_sum(sq);
  if (live && threadIdx.y == 0) {
    chunk_mean[(b * chunks + chunk) * C + c] = mu;
    chunk_m2[(b * chunks + chunk) * C + c] = m2;
  }
}

// One thread per (sample, channel): combines the chunks in order (Chan et al.) into mean and 1/std.
template <typename acc_t>
__global__ void norm_pixels_combine_stats_kernel(const acc_t* __restrict__ chunk_mean,
                                                 const acc_t* __restrict__ chunk_m2, acc_t* __restrict__ mean,
                                                 acc_t* __restrict__ rstd, int64_t BC, int64_t C, int64_t N,
                                                 int64_t chunks, acc_t eps) {
  const int64_t bc = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (bc >= BC) return;
  const int64_t b = bc / C, c = bc % C;
  acc_t n = 0, mu = 0, m2 = 0;
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t left = N - k * kPixelsPerChunk;
    const acc_t nk = static_cast<acc_t>(left < kPixelsPerChunk ? left : kPixelsPerChunk);
    const acc_t mk = chunk_mean[(b * chunks + k) * C + c], m2k = chunk_m2[(b * chunks + k) * C + c];
    const acc_t total = n + nk, delta = mk - mu;
    mu += delta * (nk / total);
    m2 += m2k + delta * delta * (n * nk / total);
    n = total;
  }
  mean[bc] = mu;
  rstd[bc] = rsqrt(m2 / static_cast<acc_t>(N) + eps);
}

// Elementwise in channels_last order (c fastest): y = act(x * scale + shift) + residual.
template <typename scalar_t, typename acc_t>
__global__ void norm_pixels_apply_kernel(Map<const scalar_t> x, Map<const scalar_t> res, bool has_res,
                                         const acc_t* __restrict__ weight, const acc_t* __restrict__ bias,
                                         const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                         Map<scalar_t> y, int64_t C, int64_t W, int64_t N, int64_t numel,
                                         bool relu) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < numel;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t c = idx % C, p = (idx / C) % N, b = idx / (C * N), bc = b * C + c;
    const acc_t scale = rstd[bc] * (weight ? weight[c] : acc_t(1));
    const acc_t shift = (bias ? bias[c] : acc_t(0)) - mean[bc] * scale;
    acc_t v = static_cast<acc_t>(x.at(b, c, p, W)) * scale + shift;
    if (relu) v = v > acc_t(0) ? v : acc_t(0);
    if (has_res) v += static_cast<acc_t>(res.at(b, c, p, W));
    y.at(b, c, p, W) = static_cast<scalar_t>(v);
  }
}

// gz = grad * act'(z) and xhat of one element (z = xhat * weight + bias).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void grad_terms(const Map<const scalar_t>& grad, const Map<const scalar_t>& x, int64_t b,
                                           int64_t c, int64_t p, int64_t W, acc_t mu, acc_t r, acc_t wc, acc_t bc,
                                           bool relu, acc_t& gz, acc_t& xhat) {
  xhat = (static_cast<acc_t>(x.at(b, c, p, W)) - mu) * r;
  gz = static_cast<acc_t>(grad.at(b, c, p, W));
  if (relu && xhat * wc + bc <= acc_t(0)) gz = 0;
}

// Grid (channel blocks, chunks, batch). Writes the chunk's sums of gz and gz * xhat per channel.
template <typename scalar_t, typename acc_t>
__global__ void norm_pixels_chunk_grad_kernel(Map<const scalar_t> grad, Map<const scalar_t> x,
                                              const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                              const acc_t* __restrict__ weight, const acc_t* __restrict__ bias,
                                              acc_t* __restrict__ chunk_s1, acc_t* __restrict__ chunk_s2, int64_t C,
                                              int64_t W, int64_t N, bool relu) {
  const int64_t b = blockIdx.z, chunk = blockIdx.y, chunks = gridDim.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kChannelsPerBlock + threadIdx.x;
  const int64_t p0 = chunk * kPixelsPerChunk, p1 = N < p0 + kPixelsPerChunk ? N : p0 + kPixelsPerChunk;
  acc_t s1 = 0, s2 = 0;
  if (c < C) {
    const acc_t mu = mean[b * C + c], r = rstd[b * C + c];
    const acc_t wc = weight ? weight[c] : acc_t(1), bc = bias ? bias[c] : acc_t(0);
    for (int64_t p = p0 + threadIdx.y; p < p1; p += kPixelRows) {
      acc_t gz, xhat;
      grad_terms(grad, x, b, c, p, W, mu, r, wc, bc, relu, gz, xhat);
      s1 += gz;
      s2 += gz * xhat;
    }
  }
  s1 = column_sum(s1);
  s2 = column_sum(s2);
  if (c < C && threadIdx.y == 0) {
    chunk_s1[(b * chunks + chunk) * C + c] = s1;
    chunk_s2[(b * chunks + chunk) * C + c] = s2;
  }
}

// One thread per (sample, channel): the chunk sums added in order.
template <typename acc_t>
__global__ void norm_pixels_combine_grad_kernel(const acc_t* __restrict__ chunk_s1, const acc_t* __restrict__ chunk_s2,
                                                acc_t* __restrict__ s1, acc_t* __restrict__ s2, int64_t BC, int64_t C,
                                                int64_t chunks) {
  const int64_t bc = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (bc >= BC) return;
  const int64_t b = bc / C, c = bc % C;
  acc_t t1 = 0, t2 = 0;
  for (int64_t k = 0; k < chunks; ++k) {
    t1 += chunk_s1[(b * chunks + k) * C + c];
    t2 += chunk_s2[(b * chunks + k) * C + c];
  }
  s1[bc] = t1;
  s2[bc] = t2;
}

// Elementwise in channels_last order: grad x = rstd * weight * (gz - mean(gz) - xhat * mean(gz * xhat)).
template <typename scalar_t, typename acc_t>
__global__ void norm_pixels_grad_x_kernel(Map<const scalar_t> grad, Map<const scalar_t> x,
                                          const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                          const acc_t* __restrict__ weight, const acc_t* __restrict__ bias,
                                          const acc_t* __restrict__ s1, const acc_t* __restrict__ s2, Map<scalar_t> gx,
                                          int64_t C, int64_t W, int64_t N, int64_t numel, bool relu) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < numel;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t c = idx % C, p = (idx / C) % N, b = idx / (C * N), bc = b * C + c;
    const acc_t r = rstd[bc], wc = weight ? weight[c] : acc_t(1), bi = bias ? bias[c] : acc_t(0);
    acc_t gz, xhat;
    grad_terms(grad, x, b, c, p, W, mean[bc], r, wc, bi, relu, gz, xhat);
    const acc_t n = static_cast<acc_t>(N);
    gx.at(b, c, p, W) = static_cast<scalar_t>(r * wc * (gz - s1[bc] / n - xhat * (s2[bc] / n)));
  }
}

// The channels_last kernels' grid: (channel blocks, pixel chunks, batch). CUDA caps grid y and z at 65,535, so a map
// with more pixel chunks or a larger batch is refused with a ValueError before any launch.
dim3 chunk_grid(int64_t B, int64_t C, int64_t N) {
  constexpr int64_t kMaxGridYZ = 65535;
  TORCH_CHECK_VALUE((N + kPixelsPerChunk - 1) / kPixelsPerChunk <= kMaxGridYZ,
                    "instance_norm_act_residual: x (channels_last) has ", N, " pixels per image; the CUDA kernels take at "
                    "most ", kMaxGridYZ * kPixelsPerChunk, " (pass it NCHW-contiguous, or smaller images)");
  TORCH_CHECK_VALUE(B <= kMaxGridYZ, "instance_norm_act_residual: x (channels_last) has batch ", B,
                    "; the CUDA kernels take at most ", kMaxGridYZ, " (split the batch)");
  return dim3(static_cast<unsigned>((C + kChannelsPerBlock - 1) / kChannelsPerBlock),
              static_cast<unsigned>((N + kPixelsPerChunk - 1) / kPixelsPerChunk), static_cast<unsigned>(B));
}

// --------------------------------------------------------------------------------------------- host side

template <typename acc_t>
at::Tensor param_as(const std::optional<at::Tensor>& p) {
  return p ? p->to(c10::CppTypeToScalarType<acc_t>::value).contiguous() : at::Tensor();
}

template <typename acc_t>
const acc_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, c10::string_view act_name, double eps) {
  check_norm_args(x, weight, bias, residual);
  const Act act = parse_act(std::string(act_name));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), W = x.size(3), N = x.size(2) * W;
  const auto format = output_format(x);
  const bool pixels = format == at::MemoryFormat::ChannelsLast;
  auto y = new_output(x.sizes(), x.options(), format);
  const auto acc_dtype = at::toOpMathType(x.scalar_type());
  auto mean = new_output({B, C}, x.options().dtype(acc_dtype), at::MemoryFormat::Contiguous);
  auto rstd = new_output({B, C}, x.options().dtype(acc_dtype), at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_residual_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = param_as<acc_t>(weight), bi = param_as<acc_t>(bias);
    const auto res = residual ? map_of<const scalar_t>(*residual) : Map<const scalar_t>{nullptr, 0, 0, 0, 0};
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (!pixels) {
      norm_forward_kernel<scalar_t, acc_t><<<B * C, kThreads, 0, stream>>>(
          map_of<const scalar_t>(x), res, residual.has_value(), ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(bi),
          map_of<scalar_t>(y), mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(), C, W, N,
          static_cast<acc_t>(eps), act == Act::Relu);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const dim3 grid = chunk_grid(B, C, N);
    auto chunk_mean = at::empty({B, grid.y, C}, x.options().dtype(acc_dtype));
    auto chunk_m2 = at::empty_like(chunk_mean);
    norm_pixels_chunk_stats_kernel<scalar_t, acc_t><<<grid, dim3(kChannelsPerBlock, kPixelRows), 0, stream>>>(
        map_of<const scalar_t>(x), chunk_mean.mutable_data_ptr<acc_t>(), chunk_m2.mutable_data_ptr<acc_t>(), C, W, N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    norm_pixels_combine_stats_kernel<acc_t><<<(B * C + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        chunk_mean.const_data_ptr<acc_t>(), chunk_m2.const_data_ptr<acc_t>(), mean.mutable_data_ptr<acc_t>(),
        rstd.mutable_data_ptr<acc_t>(), B * C, C, N, grid.y, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    norm_pixels_apply_kernel<scalar_t, acc_t><<<blocks_for(x.numel()), kThreads, 0, stream>>>(
        map_of<const scalar_t>(x), res, residual.has_value(), ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(bi),
        mean.const_data_ptr<acc_t>(), rstd.const_data_ptr<acc_t>(), map_of<scalar_t>(y), C, W, N, x.numel(),
        act == Act::Relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, c10::string_view act_name) {
  check_norm_backward_args(grad, x, mean, rstd, weight, bias);
  const Act act = parse_act(std::string(act_name));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), W = x.size(3), N = x.size(2) * W;
  const auto format = output_format(x);
  const bool pixels = format == at::MemoryFormat::ChannelsLast;
  auto gx = new_output(x.sizes(), x.options(), format);
  const auto acc_dtype = at::toOpMathType(x.scalar_type());
  auto s1 = at::empty({B, C}, x.options().dtype(acc_dtype));
  auto s2 = at::empty({B, C}, x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = param_as<acc_t>(weight), bi = param_as<acc_t>(bias);
    const auto m = mean.to(acc_dtype).contiguous(), rs = rstd.to(acc_dtype).contiguous();
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (!pixels) {
      norm_backward_kernel<scalar_t, acc_t><<<B * C, kThreads, 0, stream>>>(
          map_of<const scalar_t>(grad), map_of<const scalar_t>(x), m.const_data_ptr<acc_t>(),
          rs.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(bi), map_of<scalar_t>(gx),
          s1.mutable_data_ptr<acc_t>(), s2.mutable_data_ptr<acc_t>(), C, W, N, act == Act::Relu);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const dim3 grid = chunk_grid(B, C, N);
    auto chunk_s1 = at::empty({B, grid.y, C}, x.options().dtype(acc_dtype));
    auto chunk_s2 = at::empty_like(chunk_s1);
    norm_pixels_chunk_grad_kernel<scalar_t, acc_t><<<grid, dim3(kChannelsPerBlock, kPixelRows), 0, stream>>>(
        map_of<const scalar_t>(grad), map_of<const scalar_t>(x), m.const_data_ptr<acc_t>(), rs.const_data_ptr<acc_t>(),
        ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(bi), chunk_s1.mutable_data_ptr<acc_t>(),
        chunk_s2.mutable_data_ptr<acc_t>(), C, W, N, act == Act::Relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    norm_pixels_combine_grad_kernel<acc_t><<<(B * C + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        chunk_s1.const_data_ptr<acc_t>(), chunk_s2.const_data_ptr<acc_t>(), s1.mutable_data_ptr<acc_t>(),
        s2.mutable_data_ptr<acc_t>(), B * C, C, grid.y);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    norm_pixels_grad_x_kernel<scalar_t, acc_t><<<blocks_for(x.numel()), kThreads, 0, stream>>>(
        map_of<const scalar_t>(grad), map_of<const scalar_t>(x), m.const_data_ptr<acc_t>(), rs.const_data_ptr<acc_t>(),
        ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(bi), s1.const_data_ptr<acc_t>(), s2.const_data_ptr<acc_t>(),
        map_of<scalar_t>(gx), C, W, N, x.numel(), act == Act::Relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto param_dtype = weight ? weight->scalar_type() : (bias ? bias->scalar_type() : x.scalar_type());
  return {gx, s2.sum(0).to(param_dtype), s1.sum(0).to(param_dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CUDA, m) {
  m.impl("instance_norm_act_residual", &instance_norm_act_residual_cuda);
  m.impl("instance_norm_act_residual_backward", &instance_norm_act_residual_backward_cuda);
}

}  // namespace ackd_fast
