// instance_norm_act_residual on CUDA, forward and backward, in fp32 for fp16/bf16. The kernels' bodies are
// norm_tiles.h (which says how the work is laid out; the tests also run them on the CPU through
// cpu/norm_emulated.cpp), their arguments and variants come from norm_plan.h. What is here: the __global__ wrappers,
// the block-wide sums between the bodies' phases, and the launches. No kernel synchronises with the host.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "../checks.h"
#include "../norm_plan.h"

namespace ackd_fast {
namespace {

using namespace tiles;

// The sum of v over the block; every thread gets it.
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

// Sums v over the kRows threads of each lane (a chunk block's column), in row order; every thread gets its lane's.
template <int vec, typename acc_t>
__device__ __forceinline__ void column_sum(acc_t (&v)[vec]) {
  __shared__ acc_t partial[kRows][kLanes * vec];
  const int lane = threadIdx.x % kLanes, row = threadIdx.x / kLanes;
  for (int e = 0; e < vec; ++e) partial[row][lane * vec + e] = v[e];
  __syncthreads();
  for (int e = 0; e < vec; ++e) {
    acc_t total = 0;
    for (int r = 0; r < kRows; ++r) total += partial[r][lane * vec + e];
    v[e] = total;
  }
  __syncthreads();  // partial is reused by the next call
}

template <int vec, bool cached, typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) norm_planes_forward_kernel(const NormArgs<scalar_t, acc_t, index_t> a) {
  const int t = static_cast<int>(threadIdx.x);
  PlaneState<vec, cached, acc_t> s;
  const acc_t mean = block_sum(plane_sum<vec, cached>(a, blockIdx.x, t, s)) / static_cast<acc_t>(a.N);
  const acc_t m2 = block_sum(plane_m2<vec, cached>(a, blockIdx.x, t, s, mean));
  plane_write<vec, cached>(a, blockIdx.x, t, s, mean, inv_sqrt(m2 / static_cast<acc_t>(a.N) + a.eps));
}

template <int vec, bool cached, typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) norm_planes_backward_kernel(const NormArgs<scalar_t, acc_t, index_t> a) {
  const int t = static_cast<int>(threadIdx.x);
  PlaneGradState<vec, cached, acc_t> s;
  acc_t sum_gz, sum_gz_xhat;
  plane_grad_sums<vec, cached>(a, blockIdx.x, t, s, sum_gz, sum_gz_xhat);
  sum_gz = block_sum(sum_gz);
  sum_gz_xhat = block_sum(sum_gz_xhat);
  plane_grad_write<vec, cached>(a, blockIdx.x, t, s, sum_gz, sum_gz_xhat);
}

// Grid (channel blocks, chunks, batch): the chunk's mean and squared deviations per channel.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) norm_chunk_stats_kernel(const NormArgs<scalar_t, acc_t, index_t> a) {
  const ChunkBlock k = chunk_block<vec>(a, blockIdx.x, blockIdx.y, blockIdx.z, static_cast<int>(threadIdx.x));
  acc_t mean[vec], m2[vec];
  chunk_sum<vec>(a, k, mean);
  column_sum<vec>(mean);
  for (int e = 0; e < vec; ++e) mean[e] /= static_cast<acc_t>(k.p1 - k.p0);
  chunk_m2<vec>(a, k, mean, m2);
  column_sum<vec>(m2);
  chunk_store<vec>(a, k, mean, m2);
}

template <int vec, typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) norm_chunk_grad_kernel(const NormArgs<scalar_t, acc_t, index_t> a) {
  const ChunkBlock k = chunk_block<vec>(a, blockIdx.x, blockIdx.y, blockIdx.z, static_cast<int>(threadIdx.x));
  acc_t s1[vec], s2[vec];
  chunk_grad_sums<vec>(a, k, s1, s2);
  column_sum<vec>(s1);
  column_sum<vec>(s2);
  chunk_store<vec>(a, k, s1, s2);
}

template <bool grad, typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) norm_combine_kernel(const NormArgs<scalar_t, acc_t, index_t> a,
                                                                int64_t planes) {
  const int64_t bc = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (bc >= planes) return;
  if (grad)
    combine_grad(a, bc);
  else
    combine_stats(a, bc);
}

template <bool grad, int vec, typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads) norm_pixels_kernel(const NormArgs<scalar_t, acc_t, index_t> a) {
  if (grad)
    pixels_grad_x<vec>(a, blockIdx.x, static_cast<int>(threadIdx.x));
  else
    pixels_apply<vec>(a, blockIdx.x, static_cast<int>(threadIdx.x));
}

// The pixels path: chunk statistics (or sums), their combination per plane, the elementwise pass.
template <bool grad, int vec, typename scalar_t, typename acc_t, typename index_t>
void launch_pixels(NormArgs<scalar_t, acc_t, index_t> a, const NormPlan& p, const at::Tensor& x) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = x.size(0);
  auto chunk_a = at::empty({B, p.chunks, a.C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  auto chunk_b = at::empty_like(chunk_a);
  a.chunk_a = chunk_a.template mutable_data_ptr<acc_t>();
  a.chunk_b = chunk_b.template mutable_data_ptr<acc_t>();
  const dim3 grid(static_cast<unsigned>((a.C + kLanes * vec - 1) / (kLanes * vec)), static_cast<unsigned>(p.chunks),
                  static_cast<unsigned>(B));
  if (grad)
    norm_chunk_grad_kernel<vec><<<grid, kThreads, 0, stream>>>(a);
  else
    norm_chunk_stats_kernel<vec><<<grid, kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t planes = B * a.C;
  norm_combine_kernel<grad><<<static_cast<unsigned>((planes + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      a, planes);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  norm_pixels_kernel<grad, vec><<<static_cast<unsigned>(a.tiling.tiles), kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool grad, typename scalar_t>
void launch_norm(const NormTensors& t, const NormPlan& p) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto blocks = static_cast<unsigned>(t.x.size(0) * t.x.size(1));
  with_norm_args<scalar_t>(
      t, p,
      [&](const auto& a, auto vec, auto cached) {
        if (grad)
          norm_planes_backward_kernel<decltype(vec)::value, decltype(cached)::value><<<blocks, kThreads, 0, stream>>>(a);
        else
          norm_planes_forward_kernel<decltype(vec)::value, decltype(cached)::value><<<blocks, kThreads, 0, stream>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      },
      [&](const auto& a, auto vec) { launch_pixels<grad, decltype(vec)::value>(a, p, t.x); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, c10::string_view act_name, double eps) {
  check_norm_args(x, weight, bias, residual);
  const Act act = parse_act(std::string(act_name));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1);
  auto y = new_output(x.sizes(), x.options(), output_format(x));
  const auto acc_dtype = at::toOpMathType(x.scalar_type());
  auto mean = new_output({B, C}, x.options().dtype(acc_dtype), at::MemoryFormat::Contiguous);
  auto rstd = new_output({B, C}, x.options().dtype(acc_dtype), at::MemoryFormat::Contiguous);
  const at::Tensor res = residual ? *residual : at::Tensor();
  std::vector<at::Tensor> maps{x};
  if (res.defined()) maps.push_back(res);
  const NormPlan plan = plan_norm(x, maps, false, "instance_norm_act_residual");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_act_residual_cuda", [&] {
    launch_norm<false, scalar_t>({x, weight, bias, res, {}, y, mean, rstd, {}, {}, act == Act::Relu, eps}, plan);
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, c10::string_view act_name) {
  check_norm_backward_args(grad, x, mean, rstd, weight, bias);
  const Act act = parse_act(std::string(act_name));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1);
  auto gx = new_output(x.sizes(), x.options(), output_format(x));
  const auto acc_dtype = at::toOpMathType(x.scalar_type());
  auto s1 = at::empty({B, C}, x.options().dtype(acc_dtype));
  auto s2 = at::empty({B, C}, x.options().dtype(acc_dtype));
  const auto m = mean.contiguous(), rs = rstd.contiguous();  // (B, C) of the forward: already so, no copy
  const NormPlan plan = plan_norm(x, {x, grad}, false, "instance_norm_act_residual_backward");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_backward_cuda", [&] {
    launch_norm<true, scalar_t>({x, weight, bias, {}, grad, gx, m, rs, s1, s2, act == Act::Relu, 0.0}, plan);
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
