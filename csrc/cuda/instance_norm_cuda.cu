// instance_norm_act_residual on CUDA, forward and backward.
//
// One block per (sample, channel) plane: a block reduction for the mean, one for the squared deviations (two-pass,
// in fp32 for fp16/bf16), then one pass that writes act(x * scale + shift) + residual. Every tensor is read and
// written through its own strides. The backward reduces sum(gz) and sum(gz * xhat) per plane, writes grad x, and
// leaves the per-plane sums for the weight and bias gradients, which ATen sums over the batch.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "../checks.h"

namespace ackd_fast {
namespace {

constexpr int kThreads = 256;

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
  auto y = new_output(x.sizes(), x.options(), output_format(x));
  const auto acc_dtype = at::toOpMathType(x.scalar_type());
  auto mean = new_output({B, C}, x.options().dtype(acc_dtype), at::MemoryFormat::Contiguous);
  auto rstd = new_output({B, C}, x.options().dtype(acc_dtype), at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_residual_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = param_as<acc_t>(weight), bi = param_as<acc_t>(bias);
    const auto res = residual ? map_of<const scalar_t>(*residual) : Map<const scalar_t>{nullptr, 0, 0, 0, 0};
    norm_forward_kernel<scalar_t, acc_t><<<B * C, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        map_of<const scalar_t>(x), res, residual.has_value(), ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(bi),
        map_of<scalar_t>(y), mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(), C, W, N,
        static_cast<acc_t>(eps), act == Act::Relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, c10::string_view act_name) {
  check_norm_backward_args(grad, x, weight, bias);
  const Act act = parse_act(std::string(act_name));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), W = x.size(3), N = x.size(2) * W;
  auto gx = new_output(x.sizes(), x.options(), output_format(x));
  const auto acc_dtype = at::toOpMathType(x.scalar_type());
  auto s1 = at::empty({B, C}, x.options().dtype(acc_dtype));
  auto s2 = at::empty({B, C}, x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = param_as<acc_t>(weight), bi = param_as<acc_t>(bias);
    const auto m = mean.to(acc_dtype).contiguous(), rs = rstd.to(acc_dtype).contiguous();
    norm_backward_kernel<scalar_t, acc_t><<<B * C, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        map_of<const scalar_t>(grad), map_of<const scalar_t>(x), m.const_data_ptr<acc_t>(), rs.const_data_ptr<acc_t>(),
        ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(bi), map_of<scalar_t>(gx), s1.mutable_data_ptr<acc_t>(),
        s2.mutable_data_ptr<acc_t>(), C, W, N, act == Act::Relu);
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
