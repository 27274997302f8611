// The host side of instance_norm_act_residual's CUDA kernels (norm_tiles.h): the variant a call runs and the
// kernels' arguments, for the CUDA launcher and the CPU emulation alike (tiles_host.h).
#pragma once

#include <optional>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "checks.h"
#include "norm_tiles.h"
#include "tiles_host.h"

namespace ackd_fast::tiles {

struct NormPlan {
  bool pixels = false;  // channels_last output: chunked statistics and 2-D tiles; else one block per plane
  int vec = 1;
  bool wide = false;    // int64 in-plane offsets (pixels only: a plane of an NCHW map always fits int32)
  bool cached = false;  // planes: each thread keeps its elements in registers
  int64_t chunks = 0;   // pixels: chunks of statistics per plane
};

// A plane of t whose elements lie back to back (unit stride along W, rows one after another).
inline bool flat_planes(const at::Tensor& t) { return t.stride(3) == 1 && (t.size(2) == 1 || t.stride(2) == t.size(3)); }

// Whether t's planes can be read in 16-byte packs of `vec` from index 0 on.
inline bool planes_pack(const at::Tensor& t, int vec) {
  return flat_planes(t) && t.stride(0) % vec == 0 && t.stride(1) % vec == 0 &&
         reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

// maps: x and, when given, the residual (forward) or grad (backward).
inline NormPlan plan_norm(const at::Tensor& x, const std::vector<at::Tensor>& maps, bool force_wide, const char* op) {
  NormPlan p;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), N = H * W;
  TORCH_CHECK_VALUE(B * C < (int64_t{1} << 31) && N < (int64_t{1} << 31), op, ": x of shape ", x.sizes(),
                    " is too large for the CUDA kernels");
  p.pixels = output_format(x) == at::MemoryFormat::ChannelsLast;
  const int full = full_vec(x);
  if (p.pixels) {
    p.vec = C % full == 0 ? full : 1;
    p.wide = force_wide;
    for (const auto& m : maps) p.wide = p.wide || !plane_fits_int32(m, p.vec);
    p.chunks = (N + kPixelsPerChunk - 1) / kPixelsPerChunk;
    constexpr int64_t kMaxGridYZ = 65535;  // CUDA's limit on grid y and z (chunks, batch)
    TORCH_CHECK_VALUE(p.chunks <= kMaxGridYZ, op, ": x (channels_last) has ", N, " pixels per image; the CUDA "
                      "kernels take at most ", kMaxGridYZ * kPixelsPerChunk, " (pass it NCHW-contiguous, or smaller images)");
    TORCH_CHECK_VALUE(B <= kMaxGridYZ, op, ": x (channels_last) has batch ", B, "; the CUDA kernels take at most ",
                      kMaxGridYZ, " (split the batch)");
    return p;
  }
  bool packs = N % full == 0;
  for (const auto& m : maps) packs = packs && planes_pack(m, full);
  p.vec = packs ? full : 1;
  for (const auto& m : maps)
    TORCH_CHECK_VALUE(plane_fits_int32(m, 1), op, ": a map of shape ", m.sizes(), " and strides ", m.strides(),
                      " spans too much memory per plane for the CUDA kernels");
  p.cached = N <= static_cast<int64_t>(kThreads) * kCached;
  return p;
}

// The tensors of one call. residual, grad, s1 and s2 may be undefined; out: y (forward) or grad x (backward).
struct NormTensors {
  at::Tensor x;
  std::optional<at::Tensor> weight, bias;
  at::Tensor residual, grad, out, mean, rstd, s1, s2;
  bool relu;
  double eps;
};

template <typename acc_t>
acc_t* acc_ptr(const at::Tensor& t) {
  return t.defined() ? static_cast<acc_t*>(const_cast<void*>(t.const_data_ptr())) : nullptr;
}

// The kernels' arguments for the tensors of a call.
template <typename scalar_t, typename acc_t, typename index_t>
NormArgs<scalar_t, acc_t, index_t> norm_args(const NormTensors& t, const NormPlan& p) {
  NormArgs<scalar_t, acc_t, index_t> a{};
  const auto packs = [&](const at::Tensor& m) {
    return m.defined() && (p.pixels ? packs_load_whole(m, p.vec, 1) : planes_pack(m, p.vec) && p.vec > 1);
  };
  a.x = map_of<const scalar_t, index_t>(t.x);
  if (t.residual.defined()) a.res = map_of<const scalar_t, index_t>(t.residual);
  if (t.grad.defined()) a.grad = map_of<const scalar_t, index_t>(t.grad);
  a.out = map_of<scalar_t, index_t>(t.out);
  a.x_packs = packs(t.x);
  a.res_packs = packs(t.residual);
  a.grad_packs = packs(t.grad);
  a.x_flat = flat_planes(t.x);
  a.res_flat = t.residual.defined() && flat_planes(t.residual);
  a.grad_flat = t.grad.defined() && flat_planes(t.grad);
  if (t.weight) {
    a.weight = t.weight->const_data_ptr();
    a.weight_stride = t.weight->stride(0);
    a.weight_dtype = dtype_of(*t.weight);
  }
  if (t.bias) {
    a.bias = t.bias->const_data_ptr();
    a.bias_stride = t.bias->stride(0);
    a.bias_dtype = dtype_of(*t.bias);
  }
  a.mean = acc_ptr<acc_t>(t.mean);
  a.rstd = acc_ptr<acc_t>(t.rstd);
  a.s1 = acc_ptr<acc_t>(t.s1);
  a.s2 = acc_ptr<acc_t>(t.s2);
  a.chunks = static_cast<int32_t>(p.chunks);
  a.relu = t.relu;
  a.eps = static_cast<acc_t>(t.eps);
  a.C = static_cast<int32_t>(t.x.size(1));
  a.H = static_cast<int32_t>(t.x.size(2));
  a.W = static_cast<int32_t>(t.x.size(3));
  a.N = t.x.size(2) * t.x.size(3);
  if (p.pixels) a.tiling = tiling_of(t.out, p.vec, "instance_norm_act_residual");
  return a;
}

// Builds the arguments of the plan's variant and calls planes(args, vec, cached) (one block per plane) or
// pixels(args, vec) (channels_last), vec and cached as std::integral_constant.
template <typename scalar_t, typename Planes, typename Pixels>
void with_norm_args(const NormTensors& t, const NormPlan& p, Planes&& planes, Pixels&& pixels) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int full = 16 / sizeof(scalar_t);
  if (!p.pixels) {
    const auto a = norm_args<scalar_t, acc_t, int32_t>(t, p);
    if (p.vec == 1) {
      if (p.cached) planes(a, std::integral_constant<int, 1>{}, std::true_type{});
      else planes(a, std::integral_constant<int, 1>{}, std::false_type{});
    } else {
      if (p.cached) planes(a, std::integral_constant<int, full>{}, std::true_type{});
      else planes(a, std::integral_constant<int, full>{}, std::false_type{});
    }
    return;
  }
  with_variant<scalar_t>(p.vec, p.wide, [&](auto vec, auto index) {
    pixels(norm_args<scalar_t, acc_t, typename decltype(index)::type>(t, p), vec);
  });
}

}  // namespace ackd_fast::tiles
