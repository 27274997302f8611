// ack_accumulate on CPU: acc = sum_j w_j * resize_j(A_j), and its backward, one pass over each source.
//
// Two layouts, each vectorised along its unit-stride axis with at::vec:
//  - rows (NCHW): an output row is the vertical taps of each source's rows (a vector FMA along W), then the
//    horizontal taps gathered from that row while it sits in L1;
//  - pixels (channels_last): an output pixel is the 2-D taps of each source, each a vector FMA along C.
// The output's layout (that of sources[0]) picks the path; an input whose unit stride lies elsewhere (say, a view
// sliced along W) is copied into the path's layout first. fp16/bf16 are computed in fp32: converted on entry and on
// exit, a copy the GPU kernels do not make (the CPU kernels serve correctness and CPU runs, not the speed goals).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../checks.h"
#include "../resample.h"

namespace ackd_fast {
namespace {

using at::vec::Vectorized;

// A resize table in the kernel's scalar type, kept alive for the call. Besides the CSR rows it holds the taps
// padded to `slots` per row and stored slot-major (slot_index[t * rows + r]), zero weights in the padding, so the
// horizontal pass is `slots` branch-free gather-FMA loops over x that the compiler vectorises.
template <typename T>
struct Table {
  Taps taps;
  std::vector<T> weight;
  int64_t slots = 0;
  std::vector<int32_t> slot_index;
  std::vector<T> slot_weight;
  explicit Table(Taps t) : taps(std::move(t)), weight(taps.weight.begin(), taps.weight.end()) {
    const int64_t rows = taps.rows();
    for (int64_t r = 0; r < rows; ++r) slots = std::max<int64_t>(slots, end(r) - begin(r));
    slot_index.assign(slots * rows, 0);
    slot_weight.assign(slots * rows, T(0));
    for (int64_t r = 0; r < rows; ++r)
      for (int32_t k = begin(r); k < end(r); ++k) {
        slot_index[(k - begin(r)) * rows + r] = taps.index[k];
        slot_weight[(k - begin(r)) * rows + r] = weight[k];
      }
  }
  int32_t begin(int64_t r) const { return taps.offsets[r]; }
  int32_t end(int64_t r) const { return taps.offsets[r + 1]; }
  int32_t index(int32_t k) const { return taps.index[k]; }
  bool identity() const { return static_cast<int64_t>(taps.index.size()) == taps.rows() && is_diagonal(); }
  bool is_diagonal() const {
    for (int64_t r = 0; r < taps.rows(); ++r)
      if (taps.index[r] != r || weight[r] != T(1)) return false;
    return true;
  }
};

// One source as the kernels see it: data, strides, and its tables along each axis.
template <typename T>
struct Source {
  const T* ptr;
  int64_t sb, sc, sh, sw, h, w;
  Table<T> y, x;  // forward: output index -> source taps; backward: source index -> output taps
  bool x_identity;
};

template <typename T>
Source<T> make_source(const at::Tensor& a, int64_t out_h, int64_t out_w, Resize mode, bool transposed) {
  const int64_t h = a.size(2), w = a.size(3);
  Taps ty = resize_taps(h, out_h, mode), tx = resize_taps(w, out_w, mode);
  if (transposed) {
    ty = transpose(ty, h);
    tx = transpose(tx, w);
  }
  Table<T> x(std::move(tx));
  const bool x_identity = x.identity();
  return {a.const_data_ptr<T>(), a.stride(0), a.stride(1), a.stride(2), a.stride(3), h, w,
          Table<T>(std::move(ty)), std::move(x), x_identity};
}

// dst[0..n) += s * src[0..n)
template <typename T>
inline void axpy(T* dst, const T* src, T s, int64_t n) {
  using Vec = Vectorized<T>;
  const Vec vs(s);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size())
    at::vec::fmadd(Vec::loadu(src + i), vs, Vec::loadu(dst + i)).store(dst + i);
  for (; i < n; ++i) dst[i] += s * src[i];
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  return at::vec::map2_reduce_all<T>([](auto x, auto y) { return x * y; }, [](auto x, auto y) { return x + y; }, a, b,
                                     n);
}

// The vertical taps of `table` row r applied to the lines at base + index * line_stride (each n long, unit
// stride). Returns the line itself, not a copy, when there is a single tap of weight 1.
template <typename T>
const T* vertical(const Table<T>& table, int64_t r, const T* base, int64_t line_stride, int64_t n, T* tmp) {
  const int32_t b = table.begin(r), e = table.end(r);
  if (e - b == 1 && table.weight[b] == T(1)) return base + table.index(b) * line_stride;
  std::fill(tmp, tmp + n, T(0));
  for (int32_t k = b; k < e; ++k) axpy(tmp, base + table.index(k) * line_stride, table.weight[k], n);
  return tmp;
}

// dst[x] += s * sum_k weight_k * line[index_k] over the taps of table row x, for x in [0, n).
template <typename T>
void horizontal(const Table<T>& table, bool identity, const T* line, T s, T* dst, int64_t n) {
  if (identity) return axpy(dst, line, s, n);
  for (int64_t t = 0; t < table.slots; ++t) {
    const int32_t* __restrict__ index = table.slot_index.data() + t * n;
    const T* __restrict__ weight = table.slot_weight.data() + t * n;
    for (int64_t x = 0; x < n; ++x) dst[x] += s * weight[x] * line[index[x]];
  }
}

int64_t grain(int64_t work_per_item) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item)); }

// ------------------------------------------------------------------------------------------------- forward

template <typename T>
void forward_rows(const std::vector<Source<T>>& src, const T* w, T* out, int64_t B, int64_t C, int64_t H, int64_t W) {
  int64_t max_w = W;
  for (const auto& s : src) max_w = std::max(max_w, s.w);
  at::parallel_for(0, B * C * H, grain(W * static_cast<int64_t>(src.size())), [&](int64_t begin, int64_t end) {
    std::vector<T> tmp(max_w);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t y = row % H, c = (row / H) % C, b = row / (H * C);
      T* acc = out + row * W;
      std::fill(acc, acc + W, T(0));
      for (size_t j = 0; j < src.size(); ++j) {
        const auto& s = src[j];
        const T* line = vertical(s.y, y, s.ptr + b * s.sb + c * s.sc, s.sh, s.w, tmp.data());
        horizontal(s.x, s.x_identity, line, w[j], acc, W);
      }
    }
  });
}

template <typename T>
void forward_pixels(const std::vector<Source<T>>& src, const T* w, T* out, int64_t B, int64_t C, int64_t H,
                    int64_t W) {
  at::parallel_for(0, B * H * W, grain(C * static_cast<int64_t>(src.size()) * 4), [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t x = pixel % W, y = (pixel / W) % H, b = pixel / (H * W);
      T* acc = out + pixel * C;
      std::fill(acc, acc + C, T(0));
      for (size_t j = 0; j < src.size(); ++j) {
        const auto& s = src[j];
        for (int32_t ky = s.y.begin(y); ky < s.y.end(y); ++ky)
          for (int32_t kx = s.x.begin(x); kx < s.x.end(x); ++kx)
            axpy(acc, s.ptr + b * s.sb + s.y.index(ky) * s.sh + s.x.index(kx) * s.sw,
                 w[j] * s.y.weight[ky] * s.x.weight[kx], C);
      }
    }
  });
}

// An input in the layout of the chosen path: unit stride along W (rows) or along C (pixels).
at::Tensor in_layout(const at::Tensor& t, bool pixels) {
  if (pixels) return t.stride(1) == 1 ? t : t.contiguous(at::MemoryFormat::ChannelsLast);
  return t.stride(3) == 1 ? t : t.contiguous();
}

at::Tensor ack_accumulate_cpu(at::TensorList sources, const at::Tensor& weights, at::IntArrayRef size,
                              c10::string_view mode_name) {
  check_accumulate_args(sources, weights, size);
  if (is_reduced_float(sources[0].scalar_type())) {  // fp16/bf16: computed in fp32
    std::vector<at::Tensor> wide;
    for (const auto& a : sources) wide.push_back(a.to(at::kFloat));
    const auto out = ack_accumulate_cpu(wide, weights, size, mode_name);
    return out.to(sources[0].scalar_type()).contiguous(output_format(sources[0]));
  }
  const Resize mode = parse_resize(std::string(mode_name));
  const auto format = output_format(sources[0]);
  const bool pixels = format == at::MemoryFormat::ChannelsLast;
  const int64_t B = sources[0].size(0), C = sources[0].size(1), H = size[0], W = size[1];
  auto out = new_output({B, C, H, W}, sources[0].options(), format);
  std::vector<at::Tensor> inputs;
  for (const auto& a : sources) inputs.push_back(in_layout(a, pixels));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ack_accumulate_cpu", [&] {
    std::vector<Source<scalar_t>> src;
    for (const auto& a : inputs) src.push_back(make_source<scalar_t>(a, H, W, mode, /*transposed=*/false));
    const auto w = weights.to(out.scalar_type()).contiguous();
    (pixels ? forward_pixels<scalar_t> : forward_rows<scalar_t>)(src, w.const_data_ptr<scalar_t>(),
                                                                   out.mutable_data_ptr<scalar_t>(), B, C, H, W);
  });
  return out;
}

// ------------------------------------------------------------------------------------------------ backward
//
// With g_j = resize_j^T(grad): grad A_j = w_j * g_j and grad w_j = <grad, resize_j(A_j)> = <g_j, A_j>.
// The transposed tables make g_j a gather over grad. <g_j, A_j> is summed in fixed chunks of rows (pixels), each
// chunk's sum in fp64, and the chunk sums are added in order: the result depends on the sizes only, never on the
// number of threads (at::parallel_reduce would combine one partial per thread).

// sum over the fixed chunks [c * chunk, (c + 1) * chunk) of [0, n) of chunk_sum(begin, end), in order.
template <typename F>
double chunked_sum(int64_t n, int64_t chunk, F&& chunk_sum) {
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<double> sums(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) sums[c] = chunk_sum(c * chunk, std::min(n, (c + 1) * chunk));
  });
  double total = 0;
  for (double s : sums) total += s;
  return total;
}

template <typename T>
double backward_rows(const Source<T>& s, const T* grad, int64_t gsb, int64_t gsc, int64_t gsh, T w, T* gsrc,
                     int64_t B, int64_t C, int64_t W) {
  return chunked_sum(B * C * s.h, grain(W), [&](int64_t begin, int64_t end) {
    std::vector<T> tmp(W), g(s.w);
    double sum = 0;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t sy = row % s.h, c = (row / s.h) % C, b = row / (s.h * C);
      const T* line = vertical(s.y, sy, grad + b * gsb + c * gsc, gsh, W, tmp.data());
      std::fill(g.begin(), g.end(), T(0));
      horizontal(s.x, s.x_identity, line, T(1), g.data(), s.w);
      T* out = gsrc + row * s.w;
      for (int64_t i = 0; i < s.w; ++i) out[i] = w * g[i];
      sum += static_cast<double>(dot(g.data(), s.ptr + b * s.sb + c * s.sc + sy * s.sh, s.w));
    }
    return sum;
  });
}

template <typename T>
double backward_pixels(const Source<T>& s, const T* grad, int64_t gsb, int64_t gsh, int64_t gsw, T w, T* gsrc,
                       int64_t B, int64_t C) {
  return chunked_sum(B * s.h * s.w, grain(C * 4), [&](int64_t begin, int64_t end) {
    std::vector<T> g(C);
    double sum = 0;
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t sx = pixel % s.w, sy = (pixel / s.w) % s.h, b = pixel / (s.h * s.w);
      std::fill(g.begin(), g.end(), T(0));
      for (int32_t ky = s.y.begin(sy); ky < s.y.end(sy); ++ky)
        for (int32_t kx = s.x.begin(sx); kx < s.x.end(sx); ++kx)
          axpy(g.data(), grad + b * gsb + s.y.index(ky) * gsh + s.x.index(kx) * gsw, s.y.weight[ky] * s.x.weight[kx],
               C);
      T* out = gsrc + pixel * C;
      for (int64_t c = 0; c < C; ++c) out[c] = w * g[c];
      sum += static_cast<double>(dot(g.data(), s.ptr + b * s.sb + sy * s.sh + sx * s.sw, C));
    }
    return sum;
  });
}

std::tuple<std::vector<at::Tensor>, at::Tensor> ack_accumulate_backward_cpu(const at::Tensor& grad_in,
                                                                            at::TensorList sources,
                                                                            const at::Tensor& weights,
                                                                            c10::string_view mode_name) {
  check_accumulate_backward_args(grad_in, sources, weights);
  if (is_reduced_float(grad_in.scalar_type())) {  // fp16/bf16: computed in fp32
    std::vector<at::Tensor> wide;
    for (const auto& a : sources) wide.push_back(a.to(at::kFloat));
    auto [grad_sources, grad_weights] = ack_accumulate_backward_cpu(grad_in.to(at::kFloat), wide, weights, mode_name);
    for (size_t j = 0; j < sources.size(); ++j)
      grad_sources[j] = grad_sources[j].to(sources[j].scalar_type()).contiguous(output_format(sources[j]));
    return {grad_sources, grad_weights};
  }
  const Resize mode = parse_resize(std::string(mode_name));
  const bool pixels = output_format(sources[0]) == at::MemoryFormat::ChannelsLast;
  const auto path_format = pixels ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto grad = in_layout(grad_in, pixels);
  const int64_t B = grad.size(0), C = grad.size(1), H = grad.size(2), W = grad.size(3);
  std::vector<at::Tensor> grad_sources;
  std::vector<double> grad_w(sources.size());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "ack_accumulate_backward_cpu", [&] {
    const auto w = weights.to(grad.scalar_type()).contiguous();
    for (size_t j = 0; j < sources.size(); ++j) {
      const auto a = in_layout(sources[j], pixels);
      const auto s = make_source<scalar_t>(a, H, W, mode, /*transposed=*/true);
      auto gsrc = new_output(a.sizes(), a.options(), path_format);
      const scalar_t wj = w.const_data_ptr<scalar_t>()[j];
      grad_w[j] = pixels ? backward_pixels<scalar_t>(s, grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(2),
                                                     grad.stride(3), wj, gsrc.mutable_data_ptr<scalar_t>(), B, C)
                         : backward_rows<scalar_t>(s, grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1),
                                                   grad.stride(2), wj, gsrc.mutable_data_ptr<scalar_t>(), B, C, W);
      grad_sources.push_back(gsrc.contiguous(output_format(sources[j])));
    }
  });
  auto grad_weights = at::tensor(grad_w, at::kDouble).to(weights.scalar_type());
  return {grad_sources, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CPU, m) {
  m.impl("ack_accumulate", &ack_accumulate_cpu);
  m.impl("ack_accumulate_backward", &ack_accumulate_backward_cpu);
}

}  // namespace ackd_fast
