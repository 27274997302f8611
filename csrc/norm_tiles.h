// instance_norm_act_residual's CUDA kernels (tiles.h says how they are written and tested), forward and backward,
// in the accumulation type (fp32 for fp16/bf16):
//  - planes (NCHW output): one block per (sample, channel) plane. A thread keeps its elements in registers when the
//    plane has at most kThreads * kCached of them (64 x 64 at the paper's size), so x is read once: the mean, the
//    squared deviations (two-pass) and the output all come from the registers. Larger planes read x again per pass.
//    Flat planes (unit stride along W, rows back to back) are indexed directly, in 16-byte packs where aligned;
//    others through their strides (one 32-bit division per element).
//  - pixels (channels_last output): blocks take (32 * vec channels) x (a chunk of 256 pixels) of a sample and leave
//    per-chunk statistics (two-pass within the chunk); one thread per (sample, channel) combines the chunks in order
//    (Chan's formula); an elementwise pass over 2-D tiles (tiles.h) writes the output, in channel packs.
// Chunks and blocks are fixed by the sizes, so results do not depend on the device. The weight and bias are read in
// their own dtype (no conversion launches). Block-wide sums are the wrappers' (cuda/instance_norm_cuda.cu): the
// bodies here are phases between them, which the emulation runs for all threads of a block before the next.
#pragma once

#include <cmath>

#include "tiles.h"

namespace ackd_fast::tiles {

constexpr int kCached = 16;             // elements a thread keeps in registers on the planes path
constexpr int64_t kPixelsPerChunk = 256;  // pixels path: pixels per chunk of statistics

template <typename scalar_t, typename acc_t, typename index_t>
struct NormArgs {
  Map<const scalar_t, index_t> x, res, grad;  // res.ptr / grad.ptr null when absent (grad: backward only)
  Map<scalar_t, index_t> out;                 // forward: y; backward: grad x (dense in the output's layout)
  bool x_packs, res_packs, grad_packs;        // their packs along the unit-stride axis load whole
  bool x_flat, res_flat, grad_flat;           // planes: the plane's elements are back to back (offset = index)
  const void* weight;
  const void* bias;  // null when absent (as if 1 and 0)
  int64_t weight_stride, bias_stride;
  Dtype weight_dtype, bias_dtype;
  acc_t* mean;  // (B, C): forward writes, backward reads
  acc_t* rstd;
  acc_t* s1;  // backward: per (sample, channel) sums of gz and of gz * xhat
  acc_t* s2;
  acc_t* chunk_a;  // pixels: per (sample, chunk, channel) mean and m2 (forward) or s1 and s2 (backward)
  acc_t* chunk_b;
  int32_t chunks;
  bool relu;
  acc_t eps;
  int32_t C, H, W;
  int64_t N;      // H * W
  Tiling tiling;  // pixels: the elementwise pass's tiles over the output

  // (sample, channel) of plane bc = b * C + c; B * C < 2^31 (the launcher checks), so 32-bit division
  ACKD_HOST_DEVICE void split(int64_t bc, int64_t& b, int64_t& c) const {
    const uint32_t u = static_cast<uint32_t>(bc), n = static_cast<uint32_t>(C);
    b = u / n;
    c = u % n;
  }
  ACKD_HOST_DEVICE acc_t scale_of(int64_t c) const {
    return weight ? load_param<acc_t>(weight, weight_dtype, c * weight_stride) : acc_t(1);
  }
  ACKD_HOST_DEVICE acc_t shift_of(int64_t c) const {
    return bias ? load_param<acc_t>(bias, bias_dtype, c * bias_stride) : acc_t(0);
  }
};

// Element i (row-major within the plane) of map m's plane at `base`, `vec` of them from i on when packed.
template <int vec, typename scalar_t, typename index_t, typename acc_t>
ACKD_HOST_DEVICE inline void load_plane(const Map<const scalar_t, index_t>& m, const scalar_t* base, bool flat,
                                        int32_t W, int64_t i, acc_t (&v)[vec]) {
  if (vec > 1) {  // the launcher packs only flat, aligned planes
    const auto p = load_pack<vec>(base + i);
    for (int e = 0; e < vec; ++e) v[e] = static_cast<acc_t>(p.v[e]);
    return;
  }
  const uint32_t u = static_cast<uint32_t>(i), w = static_cast<uint32_t>(W);
  const index_t off = flat ? static_cast<index_t>(u) : static_cast<index_t>(u / w) * m.sh + static_cast<index_t>(u % w) * m.sw;
  v[0] = static_cast<acc_t>(base[off]);
}

// ---------------------------------------------------------------------------------------------- planes, forward

// a * b + c rounded once, the same on the host and the device: the ReLU's mask in the backward is computed in
// two passes (the sums, then grad x) that must agree on every element, which a compiler free to contract
// a * b + c in one place and not the other would not guarantee.
template <typename acc_t>
ACKD_HOST_DEVICE inline acc_t fused_madd(acc_t a, acc_t b, acc_t c) {
#if defined(__CUDA_ARCH__)
  return ::fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

template <typename acc_t>
ACKD_HOST_DEVICE inline acc_t inv_sqrt(acc_t v) {
#if defined(__CUDA_ARCH__)
  return ::rsqrt(v);
#else
  return acc_t(1) / std::sqrt(v);
#endif
}

// A thread's share of one plane: packs p = t, t + kThreads, ...; each covers elements p * vec .. p * vec + vec - 1.
// The loops over them run a constant number of times when cached (so the cache's indices are constants).
template <int vec, bool cached, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline int64_t plane_packs(const NormArgs<scalar_t, acc_t, index_t>& a) {
  return cached ? kCached / vec : (static_cast<uint32_t>(a.N) / vec + kThreads - 1) / kThreads;  // N < 2^31
}

template <int vec, bool cached, typename acc_t>
struct PlaneState {
  acc_t v[cached ? kCached : 1];
};

// Phase 1: the thread's sum of x (keeping its elements when cached).
template <int vec, bool cached, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline acc_t plane_sum(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t bc, int t,
                                        PlaneState<vec, cached, acc_t>& s) {
  int64_t b, c;
  a.split(bc, b, c);
  const scalar_t* xb = a.x.plane(b, c);
  acc_t sum = 0;
  const int64_t packs = plane_packs<vec, cached>(a);
  ACKD_UNROLL
  for (int64_t k = 0; k < packs; ++k) {
    const int64_t i = (static_cast<int64_t>(k) * kThreads + t) * vec;
    if (i >= a.N) break;
    acc_t v[vec];
    load_plane<vec>(a.x, xb, a.x_flat, a.W, i, v);
    for (int e = 0; e < vec; ++e) {
      sum += v[e];
      if (cached) s.v[k * vec + e] = v[e];
    }
  }
  return sum;
}

// Phase 2: the thread's sum of squared deviations from the plane's mean.
template <int vec, bool cached, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline acc_t plane_m2(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t bc, int t,
                                       const PlaneState<vec, cached, acc_t>& s, acc_t mean) {
  int64_t b, c;
  a.split(bc, b, c);
  const scalar_t* xb = a.x.plane(b, c);
  acc_t m2 = 0;
  const int64_t packs = plane_packs<vec, cached>(a);
  ACKD_UNROLL
  for (int64_t k = 0; k < packs; ++k) {
    const int64_t i = (static_cast<int64_t>(k) * kThreads + t) * vec;
    if (i >= a.N) break;
    acc_t v[vec];
    if (cached)
      for (int e = 0; e < vec; ++e) v[e] = s.v[k * vec + e];
    else
      load_plane<vec>(a.x, xb, a.x_flat, a.W, i, v);
    for (int e = 0; e < vec; ++e) m2 += (v[e] - mean) * (v[e] - mean);
  }
  return m2;
}

// Phase 3: y = act(x * scale + shift) + residual; thread 0 records the statistics.
template <int vec, bool cached, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void plane_write(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t bc, int t,
                                         const PlaneState<vec, cached, acc_t>& s, acc_t mean, acc_t rstd) {
  int64_t b, c;
  a.split(bc, b, c);
  if (t == 0) {
    a.mean[bc] = mean;
    a.rstd[bc] = rstd;
  }
  const acc_t scale = rstd * a.scale_of(c), shift = a.shift_of(c) - mean * scale;
  const scalar_t* xb = a.x.plane(b, c);
  const scalar_t* rb = a.res.ptr ? a.res.plane(b, c) : nullptr;
  scalar_t* yb = a.out.plane(b, c);  // dense NCHW: flat
  const int64_t packs = plane_packs<vec, cached>(a);
  ACKD_UNROLL
  for (int64_t k = 0; k < packs; ++k) {
    const int64_t i = (static_cast<int64_t>(k) * kThreads + t) * vec;
    if (i >= a.N) break;
    acc_t v[vec], r[vec] = {};
    if (cached)
      for (int e = 0; e < vec; ++e) v[e] = s.v[k * vec + e];
    else
      load_plane<vec>(a.x, xb, a.x_flat, a.W, i, v);
    if (rb) load_plane<vec>(a.res, rb, a.res_flat, a.W, i, r);
    Pack<scalar_t, vec> out;
    for (int e = 0; e < vec; ++e) {
      acc_t z = fused_madd(v[e], scale, shift);
      if (a.relu) z = z > acc_t(0) ? z : acc_t(0);
      if (rb) z += r[e];
      out.v[e] = static_cast<scalar_t>(z);
    }
    store_pack<vec>(yb + static_cast<index_t>(i), out);
  }
}

// --------------------------------------------------------------------------------------------- planes, backward

template <int vec, bool cached, typename acc_t>
struct PlaneGradState {
  acc_t gz[cached ? kCached : 1], xhat[cached ? kCached : 1];
};

// gz = grad * act'(z) and xhat at element i of the plane, `vec` of them.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void plane_grad_terms(const NormArgs<scalar_t, acc_t, index_t>& a, const scalar_t* xb,
                                              const scalar_t* gb, int64_t i, acc_t mean, acc_t rstd, acc_t wc,
                                              acc_t bc_, acc_t (&gz)[vec], acc_t (&xhat)[vec]) {
  acc_t v[vec];
  load_plane<vec>(a.x, xb, a.x_flat, a.W, i, v);
  load_plane<vec>(a.grad, gb, a.grad_flat, a.W, i, gz);
  for (int e = 0; e < vec; ++e) {
    xhat[e] = (v[e] - mean) * rstd;
    if (a.relu && fused_madd(xhat[e], wc, bc_) <= acc_t(0)) gz[e] = acc_t(0);
  }
}

// Phase 1: the thread's sums of gz and gz * xhat (keeping both when cached).
template <int vec, bool cached, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void plane_grad_sums(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t bc, int t,
                                             PlaneGradState<vec, cached, acc_t>& s, acc_t& sum_gz,
                                             acc_t& sum_gz_xhat) {
  int64_t b, c;
  a.split(bc, b, c);
  const acc_t mean = a.mean[bc], rstd = a.rstd[bc], wc = a.scale_of(c), bc_ = a.shift_of(c);
  const scalar_t *xb = a.x.plane(b, c), *gb = a.grad.plane(b, c);
  sum_gz = 0;
  sum_gz_xhat = 0;
  const int64_t packs = plane_packs<vec, cached>(a);
  ACKD_UNROLL
  for (int64_t k = 0; k < packs; ++k) {
    const int64_t i = (static_cast<int64_t>(k) * kThreads + t) * vec;
    if (i >= a.N) break;
    acc_t gz[vec], xhat[vec];
    plane_grad_terms<vec>(a, xb, gb, i, mean, rstd, wc, bc_, gz, xhat);
    for (int e = 0; e < vec; ++e) {
      sum_gz += gz[e];
      sum_gz_xhat += gz[e] * xhat[e];
      if (cached) {
        s.gz[k * vec + e] = gz[e];
        s.xhat[k * vec + e] = xhat[e];
      }
    }
  }
}

// Phase 2: grad x = rstd * weight * (gz - mean(gz) - xhat * mean(gz * xhat)); thread 0 records the plane's sums.
template <int vec, bool cached, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void plane_grad_write(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t bc, int t,
                                              const PlaneGradState<vec, cached, acc_t>& s, acc_t sum_gz,
                                              acc_t sum_gz_xhat) {
  int64_t b, c;
  a.split(bc, b, c);
  if (t == 0) {
    a.s1[bc] = sum_gz;
    a.s2[bc] = sum_gz_xhat;
  }
  const acc_t mean = a.mean[bc], rstd = a.rstd[bc], wc = a.scale_of(c), bc_ = a.shift_of(c);
  const acc_t n = static_cast<acc_t>(a.N), k_ = rstd * wc, m1 = sum_gz / n, m2 = sum_gz_xhat / n;
  const scalar_t *xb = a.x.plane(b, c), *gb = a.grad.plane(b, c);
  scalar_t* ob = a.out.plane(b, c);
  const int64_t packs = plane_packs<vec, cached>(a);
  ACKD_UNROLL
  for (int64_t k = 0; k < packs; ++k) {
    const int64_t i = (static_cast<int64_t>(k) * kThreads + t) * vec;
    if (i >= a.N) break;
    acc_t gz[vec], xhat[vec];
    if (cached) {
      for (int e = 0; e < vec; ++e) {
        gz[e] = s.gz[k * vec + e];
        xhat[e] = s.xhat[k * vec + e];
      }
    } else {
      plane_grad_terms<vec>(a, xb, gb, i, mean, rstd, wc, bc_, gz, xhat);
    }
    Pack<scalar_t, vec> out;
    for (int e = 0; e < vec; ++e) out.v[e] = static_cast<scalar_t>(k_ * (gz[e] - m1 - xhat[e] * m2));
    store_pack<vec>(ob + static_cast<index_t>(i), out);
  }
}

// ------------------------------------------------------------------------------------------------------- pixels
//
// Chunk blocks: (channel block cb, chunk, sample b); thread t = row * kLanes + lane takes channels
// cb * kLanes * vec + lane * vec .. + vec - 1 and pixels p0 + row, p0 + row + kRows, ... of the chunk.

struct ChunkBlock {
  int64_t b, chunk, c;  // c: the thread's first channel
  int64_t p0, p1;       // the chunk's pixels
  int row;
  bool live;  // the thread's channels exist
};

template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline ChunkBlock chunk_block(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t cb, int64_t chunk,
                                               int64_t b, int t) {
  ChunkBlock k;
  k.b = b;
  k.chunk = chunk;
  k.row = t / kLanes;
  k.c = (cb * kLanes + t % kLanes) * vec;
  k.p0 = chunk * kPixelsPerChunk;
  k.p1 = a.N < k.p0 + kPixelsPerChunk ? a.N : k.p0 + kPixelsPerChunk;
  k.live = k.c < a.C;
  return k;
}

// The `vec` channels of map m at pixel (y, x) of sample b from channel c.
template <int vec, typename scalar_t, typename index_t, typename acc_t>
ACKD_HOST_DEVICE inline void load_pixel(const Map<const scalar_t, index_t>& m, bool packs, int64_t b, int64_t c,
                                        int64_t y, int64_t x, acc_t (&v)[vec]) {
  const scalar_t* q = m.plane(b, c) + static_cast<index_t>(y) * m.sh + static_cast<index_t>(x) * m.sw;
  if (packs) {
    const auto pk = load_pack<vec>(q);
    for (int e = 0; e < vec; ++e) v[e] = static_cast<acc_t>(pk.v[e]);
  } else {
    for (int e = 0; e < vec; ++e) v[e] = static_cast<acc_t>(q[static_cast<index_t>(e) * static_cast<index_t>(m.sc)]);
  }
}

// Pixel p of a plane as (y, x): one 32-bit division (H * W < 2^31, the launcher checks).
ACKD_HOST_DEVICE inline void pixel_yx(int64_t p, int32_t W, int64_t& y, int64_t& x) {
  const uint32_t u = static_cast<uint32_t>(p), w = static_cast<uint32_t>(W);
  y = u / w;
  x = u % w;
}

// Phase 1 of the chunk statistics: the thread's sums of x per channel.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void chunk_sum(const NormArgs<scalar_t, acc_t, index_t>& a, const ChunkBlock& k,
                                       acc_t (&sum)[vec]) {
  for (int e = 0; e < vec; ++e) sum[e] = 0;
  if (!k.live) return;
  for (int64_t p = k.p0 + k.row; p < k.p1; p += kRows) {
    int64_t y, x;
    pixel_yx(p, a.W, y, x);
    acc_t v[vec];
    load_pixel<vec>(a.x, a.x_packs, k.b, k.c, y, x, v);
    for (int e = 0; e < vec; ++e) sum[e] += v[e];
  }
}

// Phase 2: the thread's squared deviations from the chunk's means.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void chunk_m2(const NormArgs<scalar_t, acc_t, index_t>& a, const ChunkBlock& k,
                                      const acc_t (&mean)[vec], acc_t (&m2)[vec]) {
  for (int e = 0; e < vec; ++e) m2[e] = 0;
  if (!k.live) return;
  for (int64_t p = k.p0 + k.row; p < k.p1; p += kRows) {
    int64_t y, x;
    pixel_yx(p, a.W, y, x);
    acc_t v[vec];
    load_pixel<vec>(a.x, a.x_packs, k.b, k.c, y, x, v);
    for (int e = 0; e < vec; ++e) m2[e] += (v[e] - mean[e]) * (v[e] - mean[e]);
  }
}

// Row 0 of a chunk block records the chunk's two values per channel.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void chunk_store(const NormArgs<scalar_t, acc_t, index_t>& a, const ChunkBlock& k,
                                         const acc_t (&first)[vec], const acc_t (&second)[vec]) {
  if (!k.live || k.row != 0) return;
  const int64_t at = (k.b * a.chunks + k.chunk) * a.C + k.c;
  for (int e = 0; e < vec; ++e) {
    a.chunk_a[at + e] = first[e];
    a.chunk_b[at + e] = second[e];
  }
}

// Pixels per chunk `chunk`.
template <typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline int64_t chunk_pixels(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t chunk) {
  const int64_t left = a.N - chunk * kPixelsPerChunk;
  return left < kPixelsPerChunk ? left : kPixelsPerChunk;
}

// One thread per (sample, channel) bc: the chunks' statistics combined in order (Chan et al.) into mean and 1/std.
template <typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void combine_stats(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t bc) {
  int64_t b, c;
  a.split(bc, b, c);
  acc_t n = 0, mu = 0, m2 = 0;
  for (int64_t k = 0; k < a.chunks; ++k) {
    const acc_t nk = static_cast<acc_t>(chunk_pixels(a, k));
    const int64_t at = (b * a.chunks + k) * a.C + c;
    const acc_t mk = a.chunk_a[at], m2k = a.chunk_b[at];
    const acc_t total = n + nk, delta = mk - mu;
    mu += delta * (nk / total);
    m2 += m2k + delta * delta * (n * nk / total);
    n = total;
  }
  a.mean[bc] = mu;
  a.rstd[bc] = inv_sqrt(m2 / static_cast<acc_t>(a.N) + a.eps);
}

// Elementwise over the output's tiles: y = act(x * scale + shift) + residual, `vec` channels per thread.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void pixels_apply(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t tile, int t) {
  int64_t b, c, y, x;
  if (!a.tiling.element(tile, t, b, c, y, x)) return;
  acc_t v[vec], r[vec] = {};
  load_pixel<vec>(a.x, a.x_packs, b, c, y, x, v);
  if (a.res.ptr) load_pixel<vec>(a.res, a.res_packs, b, c, y, x, r);
  Pack<scalar_t, vec> out;
  for (int e = 0; e < vec; ++e) {
    const int64_t bc = b * a.C + c + e;
    const acc_t scale = a.rstd[bc] * a.scale_of(c + e), shift = a.shift_of(c + e) - a.mean[bc] * scale;
    acc_t z = fused_madd(v[e], scale, shift);
    if (a.relu) z = z > acc_t(0) ? z : acc_t(0);
    if (a.res.ptr) z += r[e];
    out.v[e] = static_cast<scalar_t>(z);
  }
  store_pack<vec>(a.out.plane(b, c) + static_cast<index_t>(y) * a.out.sh + static_cast<index_t>(x) * a.out.sw, out);
}

// gz and xhat of `vec` channels at pixel (y, x).
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void pixel_grad_terms(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t b, int64_t c,
                                              int64_t y, int64_t x, acc_t (&gz)[vec], acc_t (&xhat)[vec]) {
  acc_t v[vec];
  load_pixel<vec>(a.x, a.x_packs, b, c, y, x, v);
  load_pixel<vec>(a.grad, a.grad_packs, b, c, y, x, gz);
  for (int e = 0; e < vec; ++e) {
    const int64_t bc = b * a.C + c + e;
    xhat[e] = (v[e] - a.mean[bc]) * a.rstd[bc];
    if (a.relu && fused_madd(xhat[e], a.scale_of(c + e), a.shift_of(c + e)) <= acc_t(0)) gz[e] = acc_t(0);
  }
}

// Backward chunk phase: the thread's sums of gz and gz * xhat per channel.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void chunk_grad_sums(const NormArgs<scalar_t, acc_t, index_t>& a, const ChunkBlock& k,
                                             acc_t (&s1)[vec], acc_t (&s2)[vec]) {
  for (int e = 0; e < vec; ++e) s1[e] = s2[e] = 0;
  if (!k.live) return;
  for (int64_t p = k.p0 + k.row; p < k.p1; p += kRows) {
    int64_t y, x;
    pixel_yx(p, a.W, y, x);
    acc_t gz[vec], xhat[vec];
    pixel_grad_terms<vec>(a, k.b, k.c, y, x, gz, xhat);
    for (int e = 0; e < vec; ++e) {
      s1[e] += gz[e];
      s2[e] += gz[e] * xhat[e];
    }
  }
}

// One thread per (sample, channel): the chunks' sums added in order.
template <typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void combine_grad(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t bc) {
  int64_t b, c;
  a.split(bc, b, c);
  acc_t t1 = 0, t2 = 0;
  for (int64_t k = 0; k < a.chunks; ++k) {
    const int64_t at = (b * a.chunks + k) * a.C + c;
    t1 += a.chunk_a[at];
    t2 += a.chunk_b[at];
  }
  a.s1[bc] = t1;
  a.s2[bc] = t2;
}

// Elementwise: grad x = rstd * weight * (gz - mean(gz) - xhat * mean(gz * xhat)), `vec` channels per thread.
template <int vec, typename scalar_t, typename acc_t, typename index_t>
ACKD_HOST_DEVICE inline void pixels_grad_x(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t tile, int t) {
  int64_t b, c, y, x;
  if (!a.tiling.element(tile, t, b, c, y, x)) return;
  acc_t gz[vec], xhat[vec];
  pixel_grad_terms<vec>(a, b, c, y, x, gz, xhat);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(a.N);
  Pack<scalar_t, vec> out;
  for (int e = 0; e < vec; ++e) {
    const int64_t bc = b * a.C + c + e;
    const acc_t k_ = a.rstd[bc] * a.scale_of(c + e);
    out.v[e] = static_cast<scalar_t>(k_ * (gz[e] - a.s1[bc] * inv_n - xhat[e] * (a.s2[bc] * inv_n)));
  }
  store_pack<vec>(a.out.plane(b, c) + static_cast<index_t>(y) * a.out.sh + static_cast<index_t>(x) * a.out.sw, out);
}

}  // namespace ackd_fast::tiles
