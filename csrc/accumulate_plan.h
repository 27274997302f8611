// The host side of ack_accumulate's CUDA kernels (accumulate_tiles.h): from the op's tensors to the kernels'
// arguments, the choices among their variants, and the launch sizes. The CUDA launcher (cuda/accumulate_cuda.cu)
// and the CPU emulation (cpu/accumulate_emulated.cpp) both build their arguments here, so the emulated kernels run
// exactly the variants a GPU would.
#pragma once

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "accumulate_tiles.h"
#include "checks.h"
#include "resample.h"

namespace ackd_fast::tiles {

static_assert(kSources == kMaxSources, "accumulate_tiles.h and checks.h disagree on the number of sources");

// Shared memory a block may use without opting in on any GPU since sm_70; beyond it the tables drop their weights.
constexpr size_t kMaxTableBytes = 48 * 1024;

inline Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::F32;
    case at::kDouble: return Dtype::F64;
    case at::kHalf: return Dtype::F16;
    case at::kBFloat16: return Dtype::BF16;
    default: TORCH_CHECK_TYPE(false, "ack_accumulate: weights must be float16, bfloat16, float32 or float64, got ",
                              t.scalar_type());
  }
}

// Elements in one 16-byte vector of the dtype.
inline int full_vec(const at::Tensor& t) { return static_cast<int>(16 / t.element_size()); }

// Whether t's packs of `vec` along dimension `unit_dim` (3: W, 1: C) load as whole 16-byte vectors: that dimension
// has unit stride, the others are multiples of vec, and the first element is 16-byte aligned.
inline bool packs_load_whole(const at::Tensor& t, int vec, int unit_dim) {
  if (vec == 1) return false;
  if (t.stride(unit_dim) != 1) return false;
  for (int d = 0; d < 4; ++d)
    if (d != unit_dim && t.stride(d) % vec != 0) return false;
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

// Whether in-plane offsets of t (y * stride_h + x * stride_w, plus a pack's channels) fit in int32.
inline bool plane_fits_int32(const at::Tensor& t, int vec) {
  const int64_t extent = (t.size(2) - 1) * t.stride(2) + (t.size(3) - 1) * t.stride(3) + vec * t.stride(1);
  return extent < (int64_t{1} << 31);
}

template <typename T, typename index_t>
Map<T, index_t> map_of(const at::Tensor& t) {
  return {static_cast<T*>(const_cast<void*>(t.const_data_ptr())), t.stride(0), t.stride(1),
          static_cast<index_t>(t.stride(2)), static_cast<index_t>(t.stride(3)), static_cast<index_t>(t.size(2)),
          static_cast<index_t>(t.size(3))};
}

inline Tiling tiling_of(const at::Tensor& t, int vec) {
  const bool pixels = output_format(t) == at::MemoryFormat::ChannelsLast;
  const Tiling tl = tiling(pixels, vec, t.size(0), t.size(1), t.size(2), t.size(3));
  TORCH_CHECK_VALUE(tl.tiles < (int64_t{1} << 31) && t.size(0) * std::max(t.size(1), t.size(2)) < (int64_t{1} << 31),
                    "ack_accumulate: a map of shape ", t.sizes(), " is too large for the CUDA kernels' tiles");
  return tl;
}

// The settings of one forward call: which instantiation runs (vec, wide index) and its arguments.
struct ForwardPlan {
  int vec = 1;
  bool wide = false;  // int64 in-plane offsets
};

inline ForwardPlan plan_forward(at::TensorList sources, const at::Tensor& out, bool force_wide) {
  ForwardPlan p;
  const bool pixels = output_format(out) == at::MemoryFormat::ChannelsLast;
  const int v = full_vec(out);
  p.vec = (pixels ? out.size(1) : out.size(3)) % v == 0 ? v : 1;
  p.wide = force_wide || !plane_fits_int32(out, p.vec);
  for (const auto& a : sources)
    p.wide = p.wide || !plane_fits_int32(a, p.vec) || !fits_int32(a.size(2), out.size(2)) ||
             !fits_int32(a.size(3), out.size(3));
  return p;
}

template <typename scalar_t, typename acc_t, typename index_t>
ForwardArgs<scalar_t, acc_t, index_t> forward_args(at::TensorList sources, const at::Tensor& weights,
                                                   const at::Tensor& out, Resize mode, int vec) {
  ForwardArgs<scalar_t, acc_t, index_t> a{};
  a.n = static_cast<int>(sources.size());
  a.tiling = tiling_of(out, vec);
  for (int j = 0; j < a.n; ++j) {
    const auto& s = sources[j];
    a.src[j] = map_of<const scalar_t, index_t>(s);
    a.ry[j] = resize_axis<acc_t, index_t>(s.size(2), out.size(2), mode);
    a.rx[j] = resize_axis<acc_t, index_t>(s.size(3), out.size(3), mode);
    a.src_vec[j] = a.tiling.pixels && packs_load_whole(s, vec, 1);
  }
  a.weights = weights.const_data_ptr();
  a.weights_stride = weights.stride(0);
  a.weights_dtype = dtype_of(weights);
  a.out = map_of<scalar_t, index_t>(out);
  return a;
}

struct BackwardPlan {
  int vec = 1;
  bool wide = false;
  bool weight_table = true;
  size_t shared_bytes = 0;
};

// Widest range of outputs that read one input along an axis from `in` to `out` (ResizeAxis::readers' bound).
inline int64_t readers_width(int64_t in, int64_t out) { return (3 * out + in - 1) / in + 5; }

inline BackwardPlan plan_backward(const at::Tensor& grad, at::TensorList sources, bool force_wide,
                                  bool allow_weight_table) {
  BackwardPlan p;
  const int v = full_vec(grad);
  bool all = true;
  for (const auto& a : sources) {
    const bool pixels = output_format(a) == at::MemoryFormat::ChannelsLast;
    all = all && (pixels ? a.size(1) : a.size(3)) % v == 0;
  }
  p.vec = all ? v : 1;
  p.wide = force_wide || !plane_fits_int32(grad, p.vec);
  for (const auto& a : sources)
    p.wide = p.wide || !plane_fits_int32(a, p.vec) || !fits_int32(a.size(2), grad.size(2)) ||
             !fits_int32(a.size(3), grad.size(3));
  const size_t index_bytes = p.wide ? sizeof(int64_t) : sizeof(int32_t);
  const size_t real_bytes = at::toOpMathType(grad.scalar_type()) == at::kDouble ? sizeof(double) : sizeof(float);
  size_t with_weights = 0, without = 0;
  for (const auto& a : sources) {
    const bool pixels = output_format(a) == at::MemoryFormat::ChannelsLast;
    const int rows = pixels ? 1 : kRows, cols = pixels ? kRows : kLanes * p.vec;
    const size_t lines = static_cast<size_t>(rows + cols) * 2 * index_bytes + real_bytes;  // + alignment slack
    const size_t weights = (rows * readers_width(a.size(2), grad.size(2)) +
                            cols * readers_width(a.size(3), grad.size(3))) * real_bytes;
    with_weights = std::max(with_weights, lines + weights);
    without = std::max(without, lines);
  }
  p.weight_table = allow_weight_table && with_weights <= kMaxTableBytes;
  p.shared_bytes = p.weight_table ? with_weights : without;
  return p;
}

template <typename scalar_t, typename acc_t, typename index_t>
BackwardArgs<scalar_t, acc_t, index_t> backward_args(const at::Tensor& grad, at::TensorList sources,
                                                     const at::Tensor& weights,
                                                     const std::vector<at::Tensor>& grad_sources, Resize mode,
                                                     const BackwardPlan& p) {
  BackwardArgs<scalar_t, acc_t, index_t> a{};
  a.n = static_cast<int>(sources.size());
  a.grad = map_of<const scalar_t, index_t>(grad);
  a.grad_vec = packs_load_whole(grad, p.vec, 1);
  a.tile_begin[0] = 0;
  for (int j = 0; j < a.n; ++j) {
    const auto& s = sources[j];
    a.src[j] = map_of<const scalar_t, index_t>(s);
    a.grad_src[j] = map_of<scalar_t, index_t>(grad_sources[j]);
    a.tiling[j] = tiling_of(grad_sources[j], p.vec);
    a.src_vec[j] = packs_load_whole(s, p.vec, a.tiling[j].pixels ? 1 : 3);
    a.tile_begin[j + 1] = a.tile_begin[j] + a.tiling[j].tiles;
    a.ry[j] = resize_axis<acc_t, index_t>(s.size(2), grad.size(2), mode);
    a.rx[j] = resize_axis<acc_t, index_t>(s.size(3), grad.size(3), mode);
    a.readers_y[j] = static_cast<index_t>(readers_width(s.size(2), grad.size(2)));
    a.readers_x[j] = static_cast<index_t>(readers_width(s.size(3), grad.size(3)));
  }
  TORCH_CHECK_VALUE(a.tile_begin[a.n] < (int64_t{1} << 31), "ack_accumulate_backward: the sources are too large for "
                    "the CUDA kernels' tiles (", a.tile_begin[a.n], " tiles)");
  a.weight_table = p.weight_table;
  a.weights = weights.const_data_ptr();
  a.weights_stride = weights.stride(0);
  a.weights_dtype = dtype_of(weights);
  return a;
}

template <typename T>
struct Type {
  using type = T;
};

// Calls f(std::integral_constant<int, vec>{}, Type<index_t>{}) for the instantiation a plan picked: vec 1 or a
// whole 16-byte vector of scalar_t, int32 or int64 (wide) in-plane offsets.
template <typename scalar_t, typename F>
void with_variant(int vec, bool wide, F&& f) {
  constexpr int full = 16 / sizeof(scalar_t);
  TORCH_INTERNAL_ASSERT(vec == 1 || vec == full, "ack_accumulate: no kernel for vec ", vec);
  if (vec == 1) {
    if (wide) f(std::integral_constant<int, 1>{}, Type<int64_t>{});
    else f(std::integral_constant<int, 1>{}, Type<int32_t>{});
  } else {
    if (wide) f(std::integral_constant<int, full>{}, Type<int64_t>{});
    else f(std::integral_constant<int, full>{}, Type<int32_t>{});
  }
}

}  // namespace ackd_fast::tiles
