// at::vec helpers the CPU kernels share: a load or store of n lanes, the whole vector when n fills it, else the
// partial tail.
#pragma once

#include <ATen/cpu/vec/vec.h>

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

}  // namespace ackd_fast
