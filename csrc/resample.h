// 1-D resampling tables for ack_accumulate, shared by the CPU and CUDA kernels.
//
// Every resize mode here is separable: out[y, x] = sum_{(iy, wy) in Y(y)} sum_{(ix, wx) in X(x)} wy * wx * in[iy, ix],
// so a resize is two sparse 1-D matrices, stored as CSR rows of (index, weight) taps. The backward needs the
// transposes (for each input index, the outputs that read it), which turn its scatter into a gather: no atomics.
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

// Row o lists the input indices (and weights) that output index o reads.
inline Taps resize_taps(int64_t in, int64_t out, Resize mode) {
  Taps t;
  for (int64_t o = 0; o < out; ++o) {
    if (in == out) {
      t.add(o, 1.0);
    } else if (mode == Resize::Bilinear) {  // align_corners=False: half-pixel centres, clamped at 0
      const double real = std::max(static_cast<double>(in) / out * (o + 0.5) - 0.5, 0.0);
      const int64_t i0 = static_cast<int64_t>(real);
      const double l1 = std::min(real - i0, 1.0);
      if (i0 < in - 1) {
        t.add(i0, 1.0 - l1);
        t.add(i0 + 1, l1);
      } else {
        t.add(i0, 1.0);
      }
    } else if (mode == Resize::Nearest) {  // ATen's nearest_idx, float scale included
      int64_t i;
      if (out == 2 * in) {
        i = o >> 1;
      } else {
        const float scale = static_cast<float>(in) / static_cast<float>(out);
        i = std::min(static_cast<int64_t>(std::floor(o * scale)), in - 1);
      }
      t.add(i, 1.0);
    } else {  // area: adaptive average pooling windows [floor(o*in/out), ceil((o+1)*in/out))
      const int64_t start = (o * in) / out;
      const int64_t end = ((o + 1) * in + out - 1) / out;
      for (int64_t i = start; i < end; ++i) t.add(i, 1.0 / (end - start));
    }
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

// A CSR table as kernels read it: raw pointers, weights in the kernel's accumulation type.
template <typename acc_t>
struct TapView {
  const int32_t* offsets;
  const int32_t* index;
  const acc_t* weight;
};

}  // namespace ackd_fast
