// 1-D resampling for ack_accumulate, shared by the CPU and CUDA kernels.
//
// Every resize mode here is separable: out[y, x] = sum_{(iy, wy) in Y(y)} sum_{(ix, wx) in X(x)} wy * wx * in[iy, ix],
// so a resize is two sparse 1-D matrices. `ResizeAxis::row` gives a row of one (host and device code); the CPU kernels
// store the rows as CSR tables of (index, weight) taps, the CUDA kernels compute them where they need them, once per
// row and column of a tile (no tables to copy to the device, so no host synchronisation and nothing a CUDA graph
// capture would miss). The backward needs
// the transposes (for each input index, the outputs that read it), which turn its scatter into a gather: no atomics.
// Index arithmetic follows ATen's upsample kernels so the results match F.interpolate.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

namespace ackd_fast {

enum class Resize { Bilinear, Nearest, Area };

inline Resize parse_resize(const std::string& mode) {
  if (mode == "bilinear") return Resize::Bilinear;
  if (mode == "nearest") return Resize::Nearest;
  if (mode == "area") return Resize::Area;
  TORCH_CHECK_VALUE(false, "ack_accumulate: mode must be one of 'bilinear', 'nearest', 'area', got '", mode, "'");
}

// A sparse (rows x cols) matrix in CSR form: row r holds taps offsets[r] .. offsets[r+1]-1.
struct Taps {
  std::vector<int32_t> offsets{0};
  std::vector<int32_t> index;
  std::vector<double> weight;
  void add(int64_t i, double w) {
    index.push_back(static_cast<int32_t>(i));
    weight.push_back(w);
  }
  void end_row() { offsets.push_back(static_cast<int32_t>(index.size())); }
  int64_t rows() const { return static_cast<int64_t>(offsets.size()) - 1; }
};

#if defined(__CUDACC__)
#define ACKD_HOST_DEVICE __host__ __device__
#else
#define ACKD_HOST_DEVICE
#endif

// Output index o of a resize reads the inputs first .. first + count - 1, the first with weight w_first and the
// others with w_rest (bilinear: two taps; nearest: one; area: a window of equal weights).
template <typename real_t, typename index_t>
struct ResizeRow {
  index_t first, count;
  real_t w_first, w_rest;
  ACKD_HOST_DEVICE real_t weight(index_t i) const {
    return i < first || i >= first + count ? real_t(0) : (i == first ? w_first : w_rest);
  }
};

// One axis of a resize from `in` to `out` samples, its scale settled once (on the host for the CUDA kernels), so an
// output index's taps cost a multiply-add and a floor, no division. The CPU tables (real_t double, index_t int64)
// and the CUDA kernels (real_t the op's accumulation type, as ATen's upsample kernels compute; index_t int32 where
// every product below fits) both derive their taps from `row`, so they agree. Index arithmetic follows ATen's.
template <typename real_t, typename index_t>
struct ResizeAxis {
  index_t in, out;
  Resize mode;
  real_t scale;         // bilinear: in / out in real_t
  float nearest_scale;  // nearest: ATen computes this one in float for every dtype

  ACKD_HOST_DEVICE ResizeRow<real_t, index_t> row(index_t o) const {
    if (in == out) return {o, 1, real_t(1), real_t(1)};
    if (mode == Resize::Bilinear) {  // align_corners=False: half-pixel centres, clamped at 0
      real_t real = scale * (static_cast<real_t>(o) + real_t(0.5)) - real_t(0.5);
      real = real > real_t(0) ? real : real_t(0);
      const index_t i0 = static_cast<index_t>(real);  // real >= 0: truncation is floor
      real_t l1 = real - static_cast<real_t>(i0);
      l1 = l1 < real_t(1) ? l1 : real_t(1);
      if (i0 < in - 1) return {i0, 2, real_t(1) - l1, l1};
      return {i0, 1, real_t(1), real_t(1)};
    }
    if (mode == Resize::Nearest) {  // ATen's nearest_idx
      if (out == 2 * in) return {static_cast<index_t>(o >> 1), 1, real_t(1), real_t(1)};
      const index_t i = static_cast<index_t>(static_cast<float>(o) * nearest_scale);  // >= 0: truncation is floor
      return {i < in - 1 ? i : static_cast<index_t>(in - 1), 1, real_t(1), real_t(1)};
    }
    // area: adaptive average pooling windows [floor(o*in/out), ceil((o+1)*in/out))
    const index_t start = (o * in) / out;
    const index_t end = ((o + 1) * in + out - 1) / out;
    const real_t w = real_t(1) / static_cast<real_t>(end - start);
    return {start, static_cast<index_t>(end - start), w, w};
  }

  // The output indices that may read input index i, lo .. hi (a superset: the others read it with weight 0). Each
  // mode's output o reads inputs within [o * in/out - 1, (o + 1) * in/out + 1], which bounds the o that can read i.
  ACKD_HOST_DEVICE void readers(index_t i, index_t& lo, index_t& hi) const {
    lo = i >= 1 ? ((i - 1) * out) / in - 1 : 0;
    hi = ((i + 2) * out + in - 1) / in + 1;
    lo = lo > 0 ? lo : 0;
    hi = hi < out - 1 ? hi : out - 1;
  }
};

template <typename real_t, typename index_t>
inline ResizeAxis<real_t, index_t> resize_axis(int64_t in, int64_t out, Resize mode) {
  return {static_cast<index_t>(in), static_cast<index_t>(out), mode,
          static_cast<real_t>(in) / static_cast<real_t>(out), static_cast<float>(in) / static_cast<float>(out)};
}

// True when an axis's index arithmetic (row and readers: products up to (in + 3) * out) fits in int32.
inline bool fits_int32(int64_t in, int64_t out) { return (in + 3) * out + in < (int64_t{1} << 31); }

// Row o lists the input indices (and weights) that output index o reads.
inline Taps resize_taps(int64_t in, int64_t out, Resize mode) {
  const auto axis = resize_axis<double, int64_t>(in, out, mode);
  Taps t;
  for (int64_t o = 0; o < out; ++o) {
    const auto row = axis.row(o);
    for (int64_t k = 0; k < row.count; ++k) t.add(row.first + k, k == 0 ? row.w_first : row.w_rest);
    t.end_row();
  }
  return t;
}

// The transpose of a (rows x cols) CSR matrix: row i lists the rows of `t` that read column i.
inline Taps transpose(const Taps& t, int64_t cols) {
  std::vector<std::vector<std::pair<int32_t, double>>> buckets(cols);
  for (int64_t r = 0; r < t.rows(); ++r)
    for (int32_t k = t.offsets[r]; k < t.offsets[r + 1]; ++k) buckets[t.index[k]].emplace_back(r, t.weight[k]);
  Taps tt;
  for (const auto& bucket : buckets) {
    for (const auto& [r, w] : bucket) tt.add(r, w);
    tt.end_row();
  }
  return tt;
}

}  // namespace ackd_fast
