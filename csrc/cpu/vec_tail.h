// at::vec helpers the CPU kernels share: a load or store of n lanes, the whole vector when n fills it, else the
// partial tail.
#pragma once

#include <ATen/cpu/vec/vec.h>

namespace ackd_fast {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> load(const T* p, int64_t n) {
  return n == Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, n);
}

template <typename T>
inline void store(const Vec<T>& v, T* p, int64_t n) {
  if (n == Vec<T>::size())
    v.store(p);
  else
    v.store(p, n);
}

}  // namespace ackd_fast
