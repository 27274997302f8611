// ack_accumulate's CUDA kernels (tiles.h says how they are written and tested). Beyond the shared tiles: a resize's
// taps are computed once per row and once per column a thread handles, in the accumulation type with the scale
// settled on the host (resample.h: no division per element, no fp64 for fp32 and narrower).
#pragma once

#include "resample.h"
#include "tiles.h"

namespace ackd_fast::tiles {

constexpr int kSources = 4;  // = kMaxSources (checks.h), which the host side checks against

// ------------------------------------------------------------------------------------------------------ forward

template <typename scalar_t, typename acc_t, typename index_t>
struct ForwardArgs {
  Map<const scalar_t, index_t> src[kSources];
  ResizeAxis<acc_t, index_t> ry[kSources], rx[kSources];  // target rows <- source rows, target columns <- ...
  bool src_vec[kSources];  // pixels: the source's channel packs can be loaded whole (unit stride, aligned)
  int n;
  const void* weights;
  int64_t weights_stride;
  Dtype weights_dtype;
  Map<scalar_t, index_t> out;  // dense in the tiling's layout
  Tiling tiling;
};

// sum_{taps (iy, ix)} wy * wx * base[iy * sh + ix * sw], for channel packs of `vec` (pixels) when `packed`.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void gather_taps(const scalar_t* base, index_t sh, index_t sw, index_t sc,
                                         const ResizeRow<acc_t, index_t>& ry, const ResizeRow<acc_t, index_t>& rx,
                                         bool packed, acc_t weight, acc_t (&acc)[vec]) {
  for (index_t ky = 0; ky < ry.count; ++ky) {
    const acc_t wy = weight * (ky == 0 ? ry.w_first : ry.w_rest);
    const scalar_t* line = base + (ry.first + ky) * sh;
    for (index_t kx = 0; kx < rx.count; ++kx) {
      const acc_t w = wy * (kx == 0 ? rx.w_first : rx.w_rest);
      const scalar_t* p = line + (rx.first + kx) * sw;
      if (packed) {
        const auto v = load_pack<vec>(p);
        for (int e = 0; e < vec; ++e) acc[e] += w * static_cast<acc_t>(v.v[e]);
      } else {
        for (int e = 0; e < vec; ++e) acc[e] += w * static_cast<acc_t>(p[e * sc]);
      }
    }
  }
}

// Thread t of block `tile`: out = sum_j w_j * resize_j(src_j) at its `vec` elements, stored as one pack.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void accumulate_forward_thread(const ForwardArgs<scalar_t, acc_t, index_t>& a, int64_t tile,
                                                       int t) {
  int64_t b, c, y, x;
  if (!a.tiling.element(tile, t, b, c, y, x)) return;
  acc_t acc[vec];
  for (int e = 0; e < vec; ++e) acc[e] = acc_t(0);
  for (int j = 0; j < a.n; ++j) {
    const auto& s = a.src[j];
    const acc_t wj = load_param<acc_t>(a.weights, a.weights_dtype, j * a.weights_stride);
    const auto ry = a.ry[j].row(static_cast<index_t>(y));
    if (a.tiling.pixels) {  // one pixel, vec channels: one set of taps, channel packs
      const auto rx = a.rx[j].row(static_cast<index_t>(x));
      gather_taps<vec>(s.plane(b, c), s.sh, s.sw, static_cast<index_t>(s.sc), ry, rx, a.src_vec[j], wj, acc);
    } else {  // one row, vec columns: the row's taps once, each column's own
      for (int e = 0; e < vec; ++e) {
        const auto rx = a.rx[j].row(static_cast<index_t>(x + e));
        acc_t one[1] = {acc_t(0)};
        gather_taps<1>(s.plane(b, c), s.sh, s.sw, index_t(0), ry, rx, false, wj, one);
        acc[e] += one[0];
      }
    }
  }
  Pack<scalar_t, vec> v;
  for (int e = 0; e < vec; ++e) v.v[e] = static_cast<scalar_t>(acc[e]);
  store_pack<vec>(a.out.plane(b, c) + static_cast<index_t>(y) * a.out.sh + static_cast<index_t>(x) * a.out.sw, v);
}

// ----------------------------------------------------------------------------------------------------- backward
//
// grad_src_j = w_j * resize_j^T(grad) and grad_w_j = <resize_j^T(grad), src_j>. The transposed resize is a gather:
// source element (sy, sx) sums grad over the outputs that read it, a contiguous range of rows times one of columns.
// A block first lists, for each row and column of its tile, that range and (when the table fits in shared memory)
// the weights; then each thread gathers. Each block walks tiles of every source (grid-stride), keeping one partial
// of <g, src_j> per source; the wrapper reduces them per block and the last block sums the blocks' partials in order
// (deterministic for a given grid).

template <typename scalar_t, typename acc_t, typename index_t>
struct BackwardArgs {
  Map<const scalar_t, index_t> grad;  // (B, C, H, W)
  bool grad_vec;                      // pixels: grad's channel packs can be loaded whole
  Map<const scalar_t, index_t> src[kSources];
  Map<scalar_t, index_t> grad_src[kSources];  // dense in tiling[j]'s layout
  bool src_vec[kSources];                     // src_j's packs along the tile's unit-stride axis load whole
  Tiling tiling[kSources];
  int64_t tile_begin[kSources + 1];  // source j owns tiles tile_begin[j] .. tile_begin[j + 1] - 1 of the walk
  ResizeAxis<acc_t, index_t> ry[kSources], rx[kSources];
  index_t readers_y[kSources], readers_x[kSources];  // most readers of one source row / column (table width)
  bool weight_table;  // whether the table holds the weights (else they are recomputed per use)
  int n;
  const void* weights;
  int64_t weights_stride;
  Dtype weights_dtype;
};

// A tile's reader table in shared memory: per line (a row or a column of the tile), the first reader and the count,
// then (weight_table) the weights, line-major at a fixed width per axis.
template <typename acc_t, typename index_t>
struct ReaderTable {
  index_t* first;
  index_t* count;
  acc_t* weight;
};

// Lines of a tile: planes: kRows rows, then kLanes * vec columns; pixels: one row, then kRows pixel columns.
ACKD_HOST_DEVICE inline int table_rows(const Tiling& t) { return t.pixels ? 1 : kRows; }
ACKD_HOST_DEVICE inline int table_cols(const Tiling& t) { return t.pixels ? kRows : kLanes * t.vec; }

template <typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline ReaderTable<acc_t, index_t> reader_table(void* smem, const Tiling& t) {
  const int lines = table_rows(t) + table_cols(t);
  auto* idx = static_cast<index_t*>(smem);
  // weights after the indices, aligned for acc_t
  uintptr_t w = reinterpret_cast<uintptr_t>(idx + 2 * lines);
  w = (w + sizeof(acc_t) - 1) / sizeof(acc_t) * sizeof(acc_t);
  return {idx, idx + lines, reinterpret_cast<acc_t*>(w)};
}

// Fills line `line` of the table: the outputs along `axis` that read input index i, a contiguous range (none when i
// lies past the edge), and their weights when the table holds them (line_weights: at most the axis's table width).
template <typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void fill_line(const ResizeAxis<acc_t, index_t>& axis, int64_t i, bool in_range, bool weights,
                                       const ReaderTable<acc_t, index_t>& table, int line, acc_t* line_weights) {
  index_t first = 0, count = 0;
  if (in_range) {
    const index_t at = static_cast<index_t>(i);
    index_t lo, hi;
    axis.readers(at, lo, hi);
    for (index_t o = lo; o <= hi; ++o) {
      if (axis.row(o).weight(at) == acc_t(0)) continue;
      if (count == 0) first = o;
      count = o - first + 1;
    }
    if (weights)
      for (index_t k = 0; k < count; ++k) line_weights[k] = axis.row(first + k).weight(at);
  }
  table.first[line] = first;
  table.count[line] = count;
}

// Phase 1 of a tile (every thread of the block, then a barrier): the reader table of source j's tile.
template <typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void backward_fill(const BackwardArgs<scalar_t, acc_t, index_t>& a, int j, int64_t tile,
                                           int t, const ReaderTable<acc_t, index_t>& table) {
  const Tiling& tl = a.tiling[j];
  int64_t b, c, y0, x0;
  tl.origin(tile, b, c, y0, x0);
  const int rows = table_rows(tl), cols = table_cols(tl);
  for (int line = t; line < rows + cols; line += kThreads) {
    if (line < rows) {
      const int64_t y = y0 + line;
      fill_line(a.ry[j], y, y < tl.H, a.weight_table, table, line,
                table.weight + static_cast<int64_t>(line) * a.readers_y[j]);
    } else {
      const int k = line - rows;
      const int64_t x = x0 + k;
      fill_line(a.rx[j], x, x < tl.W, a.weight_table, table, line,
                table.weight + static_cast<int64_t>(rows) * a.readers_y[j] + static_cast<int64_t>(k) * a.readers_x[j]);
    }
  }
}

// Phase 2: thread t's elements of source j's tile: grad_src = w_j * g, and returns its share of <g, src_j>.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline acc_t backward_thread(const BackwardArgs<scalar_t, acc_t, index_t>& a, int j, int64_t tile,
                                              int t, const ReaderTable<acc_t, index_t>& table) {
  const Tiling& tl = a.tiling[j];
  int64_t b, c, y, x;
  if (!tl.element(tile, t, b, c, y, x)) return acc_t(0);
  const int rows = table_rows(tl);
  const int row_line = tl.pixels ? 0 : t / kLanes;
  const acc_t* row_w = table.weight + static_cast<int64_t>(row_line) * a.readers_y[j];
  const index_t oy0 = table.first[row_line], ny = table.count[row_line];
  const auto& g = a.grad;
  const scalar_t* gbase = g.plane(b, c);
  acc_t acc[vec];
  for (int e = 0; e < vec; ++e) acc[e] = acc_t(0);
  ACKD_UNROLL
  for (int e = 0; e < vec; ++e) {  // planes: vec columns, each its own line; pixels: one
    if (tl.pixels && e > 0) break;
    const int col = tl.pixels ? t / kLanes : (t % kLanes) * vec + e;
    const int line = rows + col;
    const acc_t* col_w = table.weight + static_cast<int64_t>(rows) * a.readers_y[j] +
                         static_cast<int64_t>(col) * a.readers_x[j];
    const index_t ox0 = table.first[line], nx = table.count[line];
    for (index_t ky = 0; ky < ny; ++ky) {
      const index_t oy = oy0 + ky;
      const acc_t wy = a.weight_table ? row_w[ky] : a.ry[j].row(oy).weight(static_cast<index_t>(y));
      if (wy == acc_t(0)) continue;
      const scalar_t* line_ptr = gbase + oy * g.sh;
      for (index_t kx = 0; kx < nx; ++kx) {
        const index_t ox = ox0 + kx;
        const acc_t w = wy * (a.weight_table ? col_w[kx] : a.rx[j].row(ox).weight(static_cast<index_t>(x + e)));
        const scalar_t* p = line_ptr + ox * g.sw;
        if (!tl.pixels) {
          acc[e] += w * static_cast<acc_t>(*p);
        } else if (a.grad_vec) {
          const auto v = load_pack<vec>(p);
          for (int k = 0; k < vec; ++k) acc[k] += w * static_cast<acc_t>(v.v[k]);
        } else {
          for (int k = 0; k < vec; ++k) acc[k] += w * static_cast<acc_t>(p[k * g.sc]);
        }
      }
    }
  }
  // grad_src = w_j * g; the weight's gradient takes <g, src_j> over the thread's elements
  const acc_t wj = load_param<acc_t>(a.weights, a.weights_dtype, j * a.weights_stride);
  const auto& s = a.src[j];
  const scalar_t* sp = s.plane(b, c) + static_cast<index_t>(y) * s.sh + static_cast<index_t>(x) * s.sw;
  const index_t unit = tl.pixels ? static_cast<index_t>(s.sc) : s.sw;  // stride along the thread's elements
  acc_t dot = acc_t(0);
  if (a.src_vec[j]) {
    const auto v = load_pack<vec>(sp);
    for (int e = 0; e < vec; ++e) dot += acc[e] * static_cast<acc_t>(v.v[e]);
  } else {
    for (int e = 0; e < vec; ++e) dot += acc[e] * static_cast<acc_t>(sp[e * unit]);
  }
  Pack<scalar_t, vec> out;
  for (int e = 0; e < vec; ++e) out.v[e] = static_cast<scalar_t>(wj * acc[e]);
  const auto& gs = a.grad_src[j];
  store_pack<vec>(gs.plane(b, c) + static_cast<index_t>(y) * gs.sh + static_cast<index_t>(x) * gs.sw, out);
  return dot;
}

// Which source a tile of the walk belongs to, and its index within that source.
template <typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline int source_of(const BackwardArgs<scalar_t, acc_t, index_t>& a, int64_t walk, int64_t& tile) {
  int j = 0;
  while (j + 1 < a.n && walk >= a.tile_begin[j + 1]) ++j;
  tile = walk - a.tile_begin[j];
  return j;
}

}  // namespace ackd_fast::tiles
