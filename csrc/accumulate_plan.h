// The host side of ack_accumulate's CUDA kernels (accumulate_tiles.h): from the op's tensors to the kernels'
// arguments and the choice among their variants, for the CUDA launcher and the CPU emulation alike (tiles_host.h).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "accumulate_tiles.h"
#include "checks.h"
#include "resample.h"
#include "tiles_host.h"

namespace ackd_fast::tiles {

static_assert(kSources == kMaxSources, "accumulate_tiles.h and checks.h disagree on the number of sources");

// Shared memory a block may use without opting in on any GPU since sm_70; beyond it the tables drop their weights.
constexpr size_t kMaxTableBytes = 48 * 1024;

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
  a.tiling = tiling_of(out, vec, "ack_accumulate");
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
    a.tiling[j] = tiling_of(grad_sources[j], p.vec, "ack_accumulate_backward");
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

}  // namespace ackd_fast::tiles
