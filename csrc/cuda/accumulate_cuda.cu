// ack_accumulate on CUDA: acc = sum_j w_j * resize_j(A_j), and its backward.
//
// Forward: one thread per output element, in the output's memory order so stores coalesce; each source is read
// through its own strides (channels_last and sliced views need no copy) at the taps of its resize tables.
// Backward: one thread per source element gathers grad through the transposed tables (no atomics); the weight
// gradient <g_j, A_j> is reduced per block, then the block partials are summed: deterministic for a device.
// fp16/bf16 accumulate in fp32 (at::opmath_type).
#include <map>
#include <mutex>
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

namespace ackd_fast {
namespace {

constexpr int kThreads = 256;

// Resize tables live on the device, built once per (sizes, mode, direction, dtype, device) and kept for the
// process: they are a few KB, and rebuilding them would cost a host-to-device copy per call. The map is never
// freed on purpose, so no CUDA memory is released after the runtime has shut down at exit.
template <typename acc_t>
TapView<acc_t> device_table(int64_t in, int64_t out, Resize mode, bool transposed, const at::Device& device) {
  using Key = std::tuple<int64_t, int64_t, int, bool, int, int>;
  static auto* cache = new std::map<Key, std::pair<at::Tensor, at::Tensor>>();
  static std::mutex mutex;
  const auto dtype = c10::CppTypeToScalarType<acc_t>::value;
  const Key key{in, out, static_cast<int>(mode), transposed, static_cast<int>(dtype), device.index()};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) {
    Taps t = resize_taps(in, out, mode);
    if (transposed) t = transpose(t, in);
    std::vector<int32_t> ints(t.offsets);
    ints.insert(ints.end(), t.index.begin(), t.index.end());
    auto int_table = at::tensor(ints, at::kInt).to(device);
    auto weight_table = at::tensor(t.weight, at::kDouble).to(dtype).to(device);
    it = cache->emplace(key, std::make_pair(int_table, weight_table)).first;
  }
  const auto& [ints, weights] = it->second;
  const int64_t rows = transposed ? in : out;
  return {ints.const_data_ptr<int32_t>(), ints.const_data_ptr<int32_t>() + rows + 1, weights.const_data_ptr<acc_t>()};
}

template <typename scalar_t, typename acc_t>
struct DeviceSource {
  const scalar_t* ptr;
  int64_t sb, sc, sh, sw;
  TapView<acc_t> y, x;
};

template <typename scalar_t, typename acc_t>
struct DeviceSources {
  DeviceSource<scalar_t, acc_t> s[kMaxSources];
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

// sum over the 2-D taps (row r of ty) x (row q of tx) of weight * base[index_y * sh + index_x * sw]
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t taps2d(const scalar_t* base, int64_t sh, int64_t sw, const TapView<acc_t>& ty,
                                        int64_t r, const TapView<acc_t>& tx, int64_t q) {
  acc_t v = 0;
  for (int32_t ky = ty.offsets[r]; ky < ty.offsets[r + 1]; ++ky) {
    const scalar_t* line = base + ty.index[ky] * sh;
    acc_t vx = 0;
    for (int32_t kx = tx.offsets[q]; kx < tx.offsets[q + 1]; ++kx)
      vx += tx.weight[kx] * static_cast<acc_t>(line[tx.index[kx] * sw]);
    v += ty.weight[ky] * vx;
  }
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void accumulate_forward_kernel(DeviceSources<scalar_t, acc_t> src, int n, const acc_t* __restrict__ w,
                                          scalar_t* __restrict__ out, int64_t C, int64_t H, int64_t W, int64_t numel,
                                          bool channels_last) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < numel;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const Coord k = decode(idx, C, H, W, channels_last);
    acc_t acc = 0;
    for (int j = 0; j < n; ++j) {
      const auto& s = src.s[j];
      acc += w[j] * taps2d(s.ptr + k.b * s.sb + k.c * s.sc, s.sh, s.sw, s.y, k.y, s.x, k.x);
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void accumulate_backward_kernel(DeviceSource<scalar_t, acc_t> s, const scalar_t* __restrict__ grad,
                                           int64_t gsb, int64_t gsc, int64_t gsh, int64_t gsw,
                                           const acc_t* __restrict__ weight,
                                           scalar_t* __restrict__ grad_src, acc_t* __restrict__ partials, int64_t C,
                                           int64_t h, int64_t wd, int64_t numel, bool channels_last) {
  const acc_t w = *weight;
  acc_t local = 0;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < numel;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const Coord k = decode(idx, C, h, wd, channels_last);
    const acc_t g = taps2d(grad + k.b * gsb + k.c * gsc, gsh, gsw, s.y, k.y, s.x, k.x);
    grad_src[idx] = static_cast<scalar_t>(w * g);
    local += g * static_cast<acc_t>(s.ptr[k.b * s.sb + k.c * s.sc + k.y * s.sh + k.x * s.sw]);
  }
  using Reduce = cub::BlockReduce<acc_t, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const acc_t total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

int blocks_for(int64_t numel) {
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min((numel + kThreads - 1) / kThreads, cap)));
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
    DeviceSources<scalar_t, acc_t> src{};
    for (size_t j = 0; j < sources.size(); ++j) {
      const auto& a = sources[j];
      src.s[j] = {a.const_data_ptr<scalar_t>(),
                  a.stride(0),
                  a.stride(1),
                  a.stride(2),
                  a.stride(3),
                  device_table<acc_t>(a.size(2), H, mode, false, a.device()),
                  device_table<acc_t>(a.size(3), W, mode, false, a.device())};
    }
    const auto w = weights.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const int64_t numel = out.numel();
    accumulate_forward_kernel<scalar_t, acc_t><<<blocks_for(numel), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        src, static_cast<int>(sources.size()), w.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), C, H, W,
        numel, format == at::MemoryFormat::ChannelsLast);
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
      const DeviceSource<scalar_t, acc_t> s{a.const_data_ptr<scalar_t>(),
                                            a.stride(0),
                                            a.stride(1),
                                            a.stride(2),
                                            a.stride(3),
                                            device_table<acc_t>(a.size(2), H, mode, true, a.device()),
                                            device_table<acc_t>(a.size(3), W, mode, true, a.device())};
      accumulate_backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          s, grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3),
          w.const_data_ptr<acc_t>() + j, gsrc.mutable_data_ptr<scalar_t>(),
          partials.mutable_data_ptr<acc_t>(), C, a.size(2), a.size(3), numel,
          format == at::MemoryFormat::ChannelsLast);
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
