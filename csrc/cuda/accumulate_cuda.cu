// ack_accumulate on CUDA: acc = sum_j w_j * resize_j(A_j), and its backward.
//
// The kernels' bodies are accumulate_tiles.h (they also run on the CPU in the tests, through
// cpu/accumulate_emulated.cpp); their arguments and variants come from accumulate_plan.h. What is here: the
// __global__ wrappers, the launches, and the backward's reductions.
//  - Forward: one launch for all sources; a block per 2-D tile of the output, 128-bit stores (and loads, channels_last).
//  - Backward: one launch for all sources' gradients. Blocks walk the tiles of every source (grid-stride, a fixed
//    grid per device); each keeps one partial <g, A_j> per source, reduces it over the block, and the last block to
//    finish sums the blocks' partials in order into the weights' gradient, in the weights' dtype: no atomics on
//    values, deterministic for a device, no host synchronisation.
// The resize rows are computed in the kernels, so a CUDA graph can capture the ops at any size. fp16/bf16 accumulate
// in fp32 (at::opmath_type).
#include <algorithm>
#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "../checks.h"
#include "../accumulate_plan.h"
#include "../resample.h"

namespace ackd_fast {
namespace {

using namespace tiles;

template <int vec, typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    accumulate_forward_kernel(const ForwardArgs<scalar_t, acc_t, index_t> args) {
  accumulate_forward_thread<vec>(args, blockIdx.x, static_cast<int>(threadIdx.x));
}

template <int vec, typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    accumulate_backward_kernel(const BackwardArgs<scalar_t, acc_t, index_t> args, acc_t* __restrict__ partials,
                               unsigned int* __restrict__ blocks_done, void* __restrict__ grad_weights) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int t = static_cast<int>(threadIdx.x);
  acc_t part[kSources] = {};
  for (int64_t walk = blockIdx.x; walk < args.tile_begin[args.n]; walk += gridDim.x) {
    int64_t tile;
    const int j = source_of(args, walk, tile);
    const auto table = reader_table<acc_t, index_t>(smem, args.tiling[j]);
    backward_fill(args, j, tile, t, table);
    __syncthreads();
    const acc_t share = backward_thread<vec>(args, j, tile, t, table);
    ACKD_UNROLL
    for (int s = 0; s < kSources; ++s)  // constant indices: part stays in registers
      if (s == j) part[s] += share;
    __syncthreads();  // the next tile refills the table
  }
  using Reduce = cub::BlockReduce<acc_t, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ bool last;
  ACKD_UNROLL
  for (int j = 0; j < kSources; ++j) {
    if (j >= args.n) break;
    const acc_t total = Reduce(storage).Sum(part[j]);
    if (t == 0) partials[j * gridDim.x + blockIdx.x] = total;
    __syncthreads();
  }
  if (t == 0) {
    __threadfence();  // this block's partials are visible before it counts itself done
    last = atomicAdd(blocks_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int j = 0; j < args.n; ++j) {  // the last block: every block's partials, in a fixed order
    acc_t sum = 0;
    for (unsigned int i = t; i < gridDim.x; i += kThreads) sum += __ldcg(partials + j * gridDim.x + i);
    const acc_t total = Reduce(storage).Sum(sum);
    if (t == 0) store_param(grad_weights, args.weights_dtype, j, total);
    __syncthreads();
  }
}

template <int vec, typename scalar_t, typename acc_t, typename index_t>
void launch_forward(at::TensorList sources, const at::Tensor& weights, const at::Tensor& out, Resize mode) {
  const auto args = forward_args<scalar_t, acc_t, index_t>(sources, weights, out, mode, vec);
  accumulate_forward_kernel<vec><<<static_cast<unsigned>(args.tiling.tiles), kThreads, 0,
                                   at::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int vec, typename scalar_t, typename acc_t, typename index_t>
void launch_backward(const at::Tensor& grad, at::TensorList sources, const at::Tensor& weights,
                     const std::vector<at::Tensor>& grad_sources, const at::Tensor& grad_weights, Resize mode,
                     const BackwardPlan& plan) {
  const auto args = backward_args<scalar_t, acc_t, index_t>(grad, sources, weights, grad_sources, mode, plan);
  const auto kernel = accumulate_backward_kernel<vec, scalar_t, acc_t, index_t>;
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan.shared_bytes));
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) *
                      std::max(per_sm, 1);
  const auto blocks = static_cast<unsigned>(std::min(args.tile_begin[args.n], cap));
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  auto partials = at::empty({static_cast<int64_t>(blocks) * args.n}, grad.options().dtype(acc_dtype));
  auto done = at::zeros({1}, grad.options().dtype(at::kInt));
  kernel<<<blocks, kThreads, plan.shared_bytes, at::cuda::getCurrentCUDAStream()>>>(
      args, partials.template mutable_data_ptr<acc_t>(), reinterpret_cast<unsigned int*>(done.mutable_data_ptr<int>()),
      grad_weights.mutable_data_ptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor ack_accumulate_cuda(at::TensorList sources, const at::Tensor& weights, at::IntArrayRef size,
                               c10::string_view mode_name) {
  check_accumulate_args(sources, weights, size);
  const Resize mode = parse_resize(std::string(mode_name));
  const c10::cuda::CUDAGuard guard(sources[0].device());
  const int64_t B = sources[0].size(0), C = sources[0].size(1);
  auto out = new_output({B, C, size[0], size[1]}, sources[0].options(), output_format(sources[0]));
  const ForwardPlan plan = plan_forward(sources, out, false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "ack_accumulate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_variant<scalar_t>(plan.vec, plan.wide, [&](auto vec, auto index) {
      launch_forward<decltype(vec)::value, scalar_t, acc_t, typename decltype(index)::type>(sources, weights, out,
                                                                                           mode);
    });
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
  std::vector<at::Tensor> grad_sources;
  for (const auto& a : sources) grad_sources.push_back(new_output(a.sizes(), a.options(), output_format(a)));
  auto grad_weights = new_output({weights.size(0)}, weights.options(), at::MemoryFormat::Contiguous);
  const BackwardPlan plan = plan_backward(grad, sources, false, true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ack_accumulate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_variant<scalar_t>(plan.vec, plan.wide, [&](auto vec, auto index) {
      launch_backward<decltype(vec)::value, scalar_t, acc_t, typename decltype(index)::type>(
          grad, sources, weights, grad_sources, grad_weights, mode, plan);
    });
  });
  return {grad_sources, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CUDA, m) {
  m.impl("ack_accumulate", &ack_accumulate_cuda);
  m.impl("ack_accumulate_backward", &ack_accumulate_backward_cuda);
}

}  // namespace ackd_fast
