// 1-D resampling for ack_accumulate, shared by the CPU and CUDA kernels.
//
// Every resize mode here is separable: out[y, x] = sum_{(iy, wy) in Y(y)} sum_{(ix, wx) in X(x)} wy * wx * in[iy, ix],
// so a resize is two sparse 1-D matrices. `resize_row` gives a row of one (host and device code); the CPU kernels
// store the rows as CSR tables of (index, weight) taps, the CUDA kernels compute them where they need them (no tables
// to copy to the device, so no host synchronisation and nothing a CUDA graph capture would miss). The backward needs
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

// Output index o of a resize from `in` to `out` reads the inputs first .. first + count - 1, the first with weight
// w_first and the others with w_rest (bilinear: two taps; nearest: one; area: a window of equal weights).
// The CPU tables and the CUDA kernels both derive their taps from this one function, so they agree.
struct ResizeRow {
  int64_t first, count;
  double w_first, w_rest;
  ACKD_HOST_DEVICE double weight(int64_t i) const {
    return i < first || i >= first + count ? 0.0 : (i == first ? w_first : w_rest);
  }
};

ACKD_HOST_DEVICE inline ResizeRow resize_row(int64_t in, int64_t out, Resize mode, int64_t o) {
  if (in == out) return {o, 1, 1.0, 1.0};
  if (mode == Resize::Bilinear) {  // align_corners=False: half-pixel centres, clamped at 0
    double real = static_cast<double>(in) / out * (o + 0.5) - 0.5;
    real = real > 0.0 ? real : 0.0;
    const int64_t i0 = static_cast<int64_t>(real);  // real >= 0: truncation is floor
    double l1 = real - i0;
    l1 = l1 < 1.0 ? l1 : 1.0;
    if (i0 < in - 1) return {i0, 2, 1.0 - l1, l1};
    return {i0, 1, 1.0, 1.0};
  }
  if (mode == Resize::Nearest) {  // ATen's nearest_idx, float scale included
    if (out == 2 * in) return {o >> 1, 1, 1.0, 1.0};
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    const int64_t i = static_cast<int64_t>(static_cast<float>(o) * scale);  // >= 0: truncation is floor
    return {i < in - 1 ? i : in - 1, 1, 1.0, 1.0};
  }
  // area: adaptive average pooling windows [floor(o*in/out), ceil((o+1)*in/out))
  const int64_t start = (o * in) / out;
  const int64_t end = ((o + 1) * in + out - 1) / out;
  const double w = 1.0 / static_cast<double>(end - start);
  return {start, end - start, w, w};
}

// The output indices that may read input index i (a superset: the others read it with weight 0). Each mode's
// output o reads inputs within [o * in/out - 1, (o + 1) * in/out + 1], which bounds the o that can read i.
ACKD_HOST_DEVICE inline void readers_of(int64_t in, int64_t out, int64_t i, int64_t& lo, int64_t& hi) {
  lo = i >= 1 ? ((i - 1) * out) / in - 1 : 0;
  hi = ((i + 2) * out + in - 1) / in + 1;
  lo = lo > 0 ? lo : 0;
  hi = hi < out - 1 ? hi : out - 1;
}

// Row o lists the input indices (and weights) that output index o reads.
inline Taps resize_taps(int64_t in, int64_t out, Resize mode) {
  Taps t;
  for (int64_t o = 0; o < out; ++o) {
    const ResizeRow row = resize_row(in, out, mode, o);
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
