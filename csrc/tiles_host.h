// The host side the ACK-F CUDA kernels share (tiles.h): from tensors to the kernels' maps and tiles, and the choice
// among a kernel's instantiations. The CUDA launchers (cuda/) and the CPU emulation (cpu/*_emulated.cpp) both build
// their arguments here, so the emulated kernels run exactly the variants a GPU would.
#pragma once

#include <algorithm>
#include <type_traits>

#include <ATen/ATen.h>

#include "checks.h"
#include "tiles.h"

namespace ackd_fast::tiles {

inline Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::F32;
    case at::kDouble: return Dtype::F64;
    case at::kHalf: return Dtype::F16;
    case at::kBFloat16: return Dtype::BF16;
    default: TORCH_CHECK_TYPE(false, "expected float16, bfloat16, float32 or float64, got ", t.scalar_type());
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

// The tiles of a map laid out as output_format(t) says; `op` names the op in the error for a map too large.
inline Tiling tiling_of(const at::Tensor& t, int vec, const char* op) {
  const bool pixels = output_format(t) == at::MemoryFormat::ChannelsLast;
  const Tiling tl = tiling(pixels, vec, t.size(0), t.size(1), t.size(2), t.size(3));
  TORCH_CHECK_VALUE(tl.tiles < (int64_t{1} << 31) && t.size(0) * std::max(t.size(1), t.size(2)) < (int64_t{1} << 31),
                    op, ": a map of shape ", t.sizes(), " is too large for the CUDA kernels' tiles");
  return tl;
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
  TORCH_INTERNAL_ASSERT(vec == 1 || vec == full, "no kernel for vec ", vec);
  if (vec == 1) {
    if (wide) f(std::integral_constant<int, 1>{}, Type<int64_t>{});
    else f(std::integral_constant<int, 1>{}, Type<int32_t>{});
  } else {
    if (wide) f(std::integral_constant<int, full>{}, Type<int64_t>{});
    else f(std::integral_constant<int, full>{}, Type<int32_t>{});
  }
}

}  // namespace ackd_fast::tiles
