// at::vec helpers the CPU kernels share: a load or store of n lanes (the whole vector when n fills it, else the
// partial tail), and a walk over n lanes in vectors.
#pragma once

#include <ATen/cpu/vec/vec.h>

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

}  // namespace ackd_fast
