// What the CPU kernels share: at::vec loads and stores of n lanes (the whole vector when n fills it, else the
// partial tail), a walk over n lanes in vectors, and how a map's rows split into chunks.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

namespace ackd_fast {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// n: an int64_t, or a std::integral_constant (whose test the compiler drops)
template <typename T, typename N>
inline Vec<T> load(const T* p, N n) {
  if (n == Vec<T>::size()) return Vec<T>::loadu(p);
  return Vec<T>::loadu(p, static_cast<int64_t>(n));
}

template <typename T, typename N>
inline void store(const Vec<T>& v, T* p, N n) {
  if (n == Vec<T>::size())
    v.store(p);
  else
    v.store(p, static_cast<int64_t>(n));
}

// Calls f(k, count) over [0, n) in vectors of Vec<T>::size() lanes, the last one partial. A full vector's count is
// a compile-time constant (an integral_constant), so that a generic lambda's load/store need no test for it.
template <typename T, typename F>
inline void each_lane_block(int64_t n, F&& f) {
  constexpr int64_t L = Vec<T>::size();
  int64_t k = 0;
  for (; k + L <= n; k += L) f(k, std::integral_constant<int64_t, L>{});
  if (k < n) f(k, n - k);
}

// A map of H rows of W pixels x `channels` is split into row chunks of at least kMinChunk elements (at most
// kMaxChunks), one task each, so that a single image still runs on every thread. The count depends on the shape
// alone and partial sums are combined in chunk order: results do not depend on the thread count.
constexpr int64_t kMinChunk = 16384;
constexpr int64_t kMaxChunks = 16;

inline int64_t row_chunks(int64_t H, int64_t W, int64_t channels) {
  return std::clamp<int64_t>(H * W * channels / kMinChunk, 1, std::min<int64_t>(H, kMaxChunks));
}

// Chunk k of `chunks` over H rows holds rows [chunk_start(H, chunks, k), chunk_start(H, chunks, k + 1)).
inline int64_t chunk_start(int64_t H, int64_t chunks, int64_t k) { return H * k / chunks; }

}  // namespace ackd_fast
