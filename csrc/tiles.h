// The pieces the ACK-F CUDA kernels share, written as plain C++ that also compiles for the host: the kernels' bodies
// (accumulate_tiles.h, norm_tiles.h) are called by the __global__ wrappers in cuda/ and, in the tests, block by
// block on the CPU by cpu/*_emulated.cpp. So the tests check the GPU code's values, masks, index arithmetic and
// vector accesses without a GPU.
//
// Work is cut into 2-D tiles of a (B, C, H, W) map, 256 threads each, every thread handling `vec` neighbours along
// the map's unit-stride axis (16 bytes: one 128-bit load or store where the tensors allow it):
//  - planes (NCHW): a tile is 8 rows x (32 * vec) columns of one (sample, channel) plane;
//  - pixels (channels_last): a tile is 8 pixels of one row x (32 * vec) channels of one sample.
// Offsets inside a plane (y * stride_h + x * stride_w) are index_t, int32 wherever they fit; a plane's own offset
// is int64.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "resample.h"

// Loops over register arrays are unrolled, so every index is a constant and the arrays stay in registers (a run-time
// index would move them to local memory).
#if defined(__CUDA_ARCH__)
#define ACKD_UNROLL _Pragma("unroll")
#else
#define ACKD_UNROLL
#endif

namespace ackd_fast::tiles {

constexpr int kThreads = 256;  // per block: 32 lanes along the unit-stride axis x 8 rows (or pixels)
constexpr int kLanes = 32;
constexpr int kRows = kThreads / kLanes;

// The dtype of a parameter tensor the kernels read or write as is (the accumulation weights and their gradient, the
// norm's weight and bias), so no conversion launches around them.
enum class Dtype : int32_t { F32, F64, F16, BF16 };

// `vec` contiguous elements as one 16-byte access (vec = 16 / sizeof(T); vec = 1 is a plain scalar).
template <typename T, int vec>
struct alignas(sizeof(T) * vec) Pack {
  T v[vec];
};

template <int vec, typename T>
ACKD_HOST_DEVICE inline Pack<T, vec> load_pack(const T* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const Pack<T, vec>*>(p);
#else
  // The emulation fails where the GPU would fault: a vector access off its alignment.
  if (reinterpret_cast<uintptr_t>(p) % alignof(Pack<T, vec>) != 0)
    throw std::logic_error("emulated CUDA kernel: misaligned vector load");
  Pack<T, vec> r;
  std::memcpy(static_cast<void*>(&r), p, sizeof(r));
  return r;
#endif
}

template <int vec, typename T>
ACKD_HOST_DEVICE inline void store_pack(T* p, const Pack<T, vec>& v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<Pack<T, vec>*>(p) = v;
#else
  if (reinterpret_cast<uintptr_t>(p) % alignof(Pack<T, vec>) != 0)
    throw std::logic_error("emulated CUDA kernel: misaligned vector store");
  std::memcpy(static_cast<void*>(p), &v, sizeof(v));
#endif
}

// A (B, C, H, W) tensor as the kernels see it.
template <typename T, typename index_t>
struct Map {
  T* ptr;
  int64_t sb, sc;
  index_t sh, sw, h, w;
  ACKD_HOST_DEVICE T* plane(int64_t b, int64_t c) const { return ptr + b * sb + c * sc; }
};

// Which part of a (B, C, H, W) map a block's tile covers, and which elements a thread handles. Tile indices and the
// extents below are < 2^31 (the host checks), so tiles are decoded in 32-bit arithmetic: no 64-bit division.
struct Tiling {
  bool pixels;         // channels_last tiles (else planes)
  int vec;             // elements per thread along the unit-stride axis (W for planes, C for pixels)
  int32_t C, H, W;
  int32_t tiles_fast;  // tiles along the unit-stride axis
  int32_t tiles_slow;  // tiles along the other in-plane axis (rows for planes, pixel groups for pixels)
  int64_t tiles;       // in all

  // The tile's origin: the (b, c, y, x) of its first element.
  ACKD_HOST_DEVICE void origin(int64_t tile, int64_t& b, int64_t& c, int64_t& y, int64_t& x) const {
    const uint32_t id = static_cast<uint32_t>(tile), tf = static_cast<uint32_t>(tiles_fast),
                   ts = static_cast<uint32_t>(tiles_slow);
    const uint32_t fast = id % tf, rest = id / tf, slow = rest % ts, outer = rest / ts;
    const uint32_t inner = static_cast<uint32_t>(pixels ? H : C);  // outer = b * C + c, or b * H + y
    b = outer / inner;
    const int64_t within = outer % inner;
    c = pixels ? static_cast<int64_t>(fast) * kLanes * vec : within;
    y = pixels ? within : static_cast<int64_t>(slow) * kRows;
    x = pixels ? static_cast<int64_t>(slow) * kRows : static_cast<int64_t>(fast) * kLanes * vec;
  }

  // First element of thread t in the tile; its elements run along x (planes) or c (pixels). False when the thread
  // has nothing there (its lane or row lies past the map's edge).
  ACKD_HOST_DEVICE bool element(int64_t tile, int t, int64_t& b, int64_t& c, int64_t& y, int64_t& x) const {
    origin(tile, b, c, y, x);
    const int lane = t % kLanes, row = t / kLanes;
    if (!pixels) {
      y += row;
      x += static_cast<int64_t>(lane) * vec;
    } else {
      x += row;
      c += static_cast<int64_t>(lane) * vec;
    }
    return y < H && x < W && c < C;
  }
};

// The tiling of a (B, C, H, W) map; tiles_slow * tiles_fast * (B * C or B * H) tiles.
inline Tiling tiling(bool pixels, int vec, int64_t B, int64_t C, int64_t H, int64_t W) {
  const int64_t fast_extent = pixels ? C : W, slow_extent = pixels ? W : H, outer = pixels ? B * H : B * C;
  const int64_t per_tile = static_cast<int64_t>(kLanes) * vec;
  const int64_t fast = (fast_extent + per_tile - 1) / per_tile, slow = (slow_extent + kRows - 1) / kRows;
  return {pixels,
          vec,
          static_cast<int32_t>(C),
          static_cast<int32_t>(H),
          static_cast<int32_t>(W),
          static_cast<int32_t>(fast),
          static_cast<int32_t>(slow),
          fast * slow * outer};
}

template <typename acc_t>
ACKD_HOST_DEVICE inline acc_t load_param(const void* p, Dtype t, int64_t i) {
  switch (t) {
    case Dtype::F32: return static_cast<acc_t>(static_cast<const float*>(p)[i]);
    case Dtype::F64: return static_cast<acc_t>(static_cast<const double*>(p)[i]);
    case Dtype::F16: return static_cast<acc_t>(static_cast<float>(static_cast<const c10::Half*>(p)[i]));
    default: return static_cast<acc_t>(static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]));
  }
}

template <typename acc_t>
ACKD_HOST_DEVICE inline void store_param(void* p, Dtype t, int64_t i, acc_t v) {
  switch (t) {
    case Dtype::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case Dtype::F64: static_cast<double*>(p)[i] = static_cast<double>(v); break;
    case Dtype::F16: static_cast<c10::Half*>(p)[i] = c10::Half(static_cast<float>(v)); break;
    default: static_cast<c10::BFloat16*>(p)[i] = c10::BFloat16(static_cast<float>(v)); break;
  }
}

}  // namespace ackd_fast::tiles
