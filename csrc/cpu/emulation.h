// Tests only: the ACK-F CUDA kernels' bodies (tiles.h) run on the CPU, block by block and thread by thread, every
// thread of a block through one phase before any starts the next (where the kernel has a barrier). Vector accesses
// off their alignment raise (tiles.h: load_pack), and every output sits between NaN guard zones that must stay
// untouched, so a write out of bounds raises too.
#pragma once

#include <limits>
#include <string>

#include <ATen/ATen.h>

namespace ackd_fast {

constexpr int64_t kGuard = 64;  // elements of NaN before and after each output (a multiple of 16 bytes)

// An output laid out as `format`, with guard zones around its storage.
struct Guarded {
  at::Tensor buffer, view;
};

inline Guarded guarded_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  const auto strides = at::empty(sizes, options.memory_format(format)).strides().vec();
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  auto buffer = at::full({numel + 2 * kGuard}, std::numeric_limits<double>::quiet_NaN(), options);
  return {buffer, buffer.as_strided(sizes, strides, kGuard)};
}

inline void check_guards(const Guarded& g, const std::string& what) {
  const int64_t n = g.buffer.numel();
  const auto zones = at::cat({g.buffer.narrow(0, 0, kGuard), g.buffer.narrow(0, n - kGuard, kGuard)});
  TORCH_CHECK(zones.isnan().all().item<bool>(), "emulated CUDA kernel: a kernel wrote outside ", what);
}

inline void check_cpu(at::TensorList ts) {
  for (const auto& t : ts) TORCH_CHECK_VALUE(!t.defined() || t.is_cpu(), "the emulated CUDA kernels take CPU tensors");
}

}  // namespace ackd_fast
