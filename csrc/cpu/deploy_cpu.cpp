// Inference kernels of ackd_fast.deploy on CPU, where oneDNN and inductor leave the student's time:
//  - mobile_block: a whole MobileResnetBlock (reflect pad, depthwise 3x3, IN, pointwise, IN, ReLU, again, + x) in
//    one op over channels_last maps, with the instance norms folded into the pointwise weights;
//  - narrow_conv2d: a stride-1 convolution with 1 to 4 output channels after a reflection pad (the generator's
//    7x7 head to RGB), which oneDNN runs at a few GMAC/s; it reads channels_last maps by 8x8 transposes.
// Forward only (no autograd): deploy runs them under inference. Float and double.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "common.h"

namespace ackd_fast {
namespace {

// Source index of i in [-pad, n + pad) under reflection padding (pad < n): ReflectionPad2d's.
inline int64_t reflect(int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); }

// ------------------------------------------------------------------------------------------------- mobile_block

// A sample's channels_last map: H x W pixels of C contiguous channels.
struct Map {
  int64_t H, W, C;
  int64_t pixels() const { return H * W; }
};

// Rows [0, H) split into `chunks` fixed ranges (row_chunks), one task each.
template <typename F>
void for_row_chunks(int64_t H, int64_t chunks, F&& f) {
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) f(k, chunk_start(H, chunks, k), chunk_start(H, chunks, k + 1));
  });
}

// Per-channel statistics of a map gathered in one pass: each row chunk adds its partial sums of d = v - shift and
// d^2 into its own slots (sum[chunk * C + c], sq[...]) in a fixed order; finish() reduces the chunks in order. shift
// is a value of the channel (its first pixel), so that the variance E[d^2] - E[d]^2 does not cancel the way
// E[v^2] - E[v]^2 does when |mean| >> std.
template <typename T>
struct ChannelStats {
  int64_t C;
  std::vector<T> shift, sum, sq;
  ChannelStats(int64_t chunks, int64_t C) : C(C), shift(C), sum(chunks * C), sq(chunks * C) {}

  void clear(int64_t chunk) {
    std::fill_n(sum.data() + chunk * C, C, T(0));
    std::fill_n(sq.data() + chunk * C, C, T(0));
  }
  // adds partial sums of d and d^2 (n lanes at channel c) to the chunk's
  void add_sums(int64_t chunk, int64_t c, const Vec<T>& d_sum, const Vec<T>& d_sq, int64_t n) {
    T* s = sum.data() + chunk * C + c;
    T* q = sq.data() + chunk * C + c;
    store(load(s, n) + d_sum, s, n);
    store(load(q, n) + d_sq, q, n);
  }
  // mean and rstd = 1 / sqrt(biased variance + eps), as F.instance_norm
  void finish(int64_t chunks, int64_t pixels, double eps, std::vector<T>& mean, std::vector<T>& rstd) const {
    for (int64_t c = 0; c < C; ++c) {
      T s = 0, q = 0;
      for (int64_t k = 0; k < chunks; ++k) s += sum[k * C + c], q += sq[k * C + c];
      const T mean_d = s / static_cast<T>(pixels);
      const T var = std::max(q / static_cast<T>(pixels) - mean_d * mean_d, T(0));
      mean[c] = mean_d + shift[c];
      rstd[c] = T(1) / std::sqrt(var + static_cast<T>(eps));
    }
  }
};

// How depthwise3x3 reads its input: as it is, or as relu(v * scale + offset) per channel (the previous instance
// norm and ReLU applied on the fly, so that the normalized map is never written). at(c, n) gives the transform of
// the n channels from c, its vectors loaded once per sweep.
template <typename T>
struct NormReluIn {
  const T* scale;
  const T* offset;
  template <typename N>
  auto at(int64_t c, N n) const {
    return [s = load(scale + c, n), o = load(offset + c, n)](const Vec<T>& v) {
      return at::vec::clamp_min(at::vec::fmadd(v, s, o), Vec<T>(0));
    };
  }
};
template <typename T>
struct PlainIn {
  template <typename N>
  auto at(int64_t, N) const {
    return [](const Vec<T>& v) { return v; };
  }
};

constexpr int64_t kPixelBlock = 16;  // pixels of a row that one sweep over a channel vector covers (fits in L1)

// dst = depthwise 3x3 of reflect-padded in(src), weights k9 as [tap][C], and dst's statistics (shifted by dst's
// first pixel, computed first). A sweep keeps one channel vector's 9 weights and its running sums in registers while
// it walks kPixelBlock pixels of a row.
template <typename T, typename In>
void depthwise3x3(const T* src, const T* k9, In in, T* dst, ChannelStats<T>& stats, const Map& m, int64_t chunks) {
  const int64_t W = m.W, C = m.C;
  each_lane_block<T>(C, [&](int64_t c, auto n) {  // dst's first pixel, the statistics' shift
    const auto in_c = in.at(c, n);
    Vec<T> acc(T(0));
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        const T* p = src + (reflect(i - 1, m.H) * W + reflect(j - 1, W)) * C + c;
        acc = at::vec::fmadd(in_c(load(p, n)), load(k9 + (i * 3 + j) * C + c, n), acc);
      }
    store(acc, stats.shift.data() + c, n);
  });
  for_row_chunks(m.H, chunks, [&](int64_t chunk, int64_t h0, int64_t h1) {
    stats.clear(chunk);
    for (int64_t h = h0; h < h1; ++h) {
      const T* rows[3] = {src + reflect(h - 1, m.H) * W * C, src + h * W * C, src + reflect(h + 1, m.H) * W * C};
      for (int64_t w0 = 0; w0 < W; w0 += kPixelBlock) {
        const int64_t w1 = std::min(w0 + kPixelBlock, W);
        each_lane_block<T>(C, [&](int64_t c, auto n) {
          const auto in_c = in.at(c, n);
          Vec<T> k[9];
          for (int t = 0; t < 9; ++t) k[t] = load(k9 + t * C + c, n);
          const auto shift = load(stats.shift.data() + c, n);
          Vec<T> sum(T(0)), sq(T(0));
          for (int64_t w = w0; w < w1; ++w) {
            const int64_t cols[3] = {reflect(w - 1, W) * C + c, w * C + c, reflect(w + 1, W) * C + c};
            Vec<T> part[3];  // one sum per kernel row: three short dependency chains instead of one of nine
            for (int i = 0; i < 3; ++i) {
              part[i] = in_c(load(rows[i] + cols[0], n)) * k[i * 3];
              for (int j = 1; j < 3; ++j)
                part[i] = at::vec::fmadd(in_c(load(rows[i] + cols[j], n)), k[i * 3 + j], part[i]);
            }
            const auto acc = part[0] + part[1] + part[2];
            store(acc, dst + (h * W + w) * C + c, n);
            const auto d = acc - shift;
            sum = sum + d;
            sq = at::vec::fmadd(d, d, sq);
          }
          stats.add_sums(chunk, c, sum, sq, n);
        });
      }
    }
  });
}

// v's statistics, shifted by its first pixel.
template <typename T>
void channel_stats(const T* v, ChannelStats<T>& stats, const Map& m, int64_t chunks) {
  const int64_t C = m.C;
  std::copy_n(v, C, stats.shift.data());
  for_row_chunks(m.H, chunks, [&](int64_t chunk, int64_t h0, int64_t h1) {
    stats.clear(chunk);
    const int64_t p1 = h1 * m.W;
    for (int64_t p0 = h0 * m.W; p0 < p1; p0 += 4 * kPixelBlock) {
      const int64_t pe = std::min(p0 + 4 * kPixelBlock, p1);
      each_lane_block<T>(C, [&](int64_t c, auto n) {
        const auto shift = load(stats.shift.data() + c, n);
        Vec<T> sum(T(0)), sq(T(0));
        for (int64_t p = p0; p < pe; ++p) {
          const auto d = load(v + p * C + c, n) - shift;
          sum = sum + d;
          sq = at::vec::fmadd(d, d, sq);
        }
        stats.add_sums(chunk, c, sum, sq, n);
      });
    }
  });
}

// dst = v * scale + offset + residual per channel.
template <typename T>
void normalize_add(const T* v, const std::vector<T>& scale, const std::vector<T>& offset, const T* residual, T* dst,
                   int64_t chunks, const Map& m) {
  const int64_t C = m.C;
  for_row_chunks(m.H, chunks, [&](int64_t, int64_t h0, int64_t h1) {
    for (int64_t p = h0 * m.W; p < h1 * m.W; ++p)
      each_lane_block<T>(C, [&](int64_t c, auto n) {
        const auto y = at::vec::fmadd(load(v + p * C + c, n), load(scale.data() + c, n), load(offset.data() + c, n));
        store(y + load(residual + p * C + c, n), dst + p * C + c, n);
      });
  });
}

void check_block_args(const at::Tensor& x, const at::Tensor& dw1, const at::Tensor& pw1, const at::Tensor& dw2,
                      const at::Tensor& pw2) {
  constexpr const char* op = "mobile_block";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must have shape (B, C, H, W), got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64 on CPU, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.size(2) >= 2 && x.size(3) >= 2 && x.size(0) > 0 && x.size(1) > 0, op,
                    ": x must be non-empty with H, W >= 2 (reflection padding of 1), got ", x.sizes());
  const int64_t C = x.size(1);
  const std::pair<const char*, const at::Tensor*> params[] = {{"dw1", &dw1}, {"pw1", &pw1}, {"dw2", &dw2},
                                                              {"pw2", &pw2}};
  for (const auto& [name, t] : params) {
    const bool depthwise = name[0] == 'd';
    const std::vector<int64_t> want = depthwise ? std::vector<int64_t>{C, 1, 3, 3} : std::vector<int64_t>{C, C, 1, 1};
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef(want), op, ": ", name, " has shape ", t->sizes(), ", expected ",
                      at::IntArrayRef(want));
    TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t->scalar_type(),
                     ", expected ", x.scalar_type(), " like x");
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": ", name, " is on ", t->device(), ", expected ", x.device());
  }
}

// The block's forward: x + IN(pw2(IN(dw2(pad(relu(IN(pw1(IN(dw1(pad(x))))))))))), without the convs' biases: every
// conv feeds an instance norm, which subtracts any per-channel constant. For the same reason the first norm of each
// separable conv needs only its rstd: pw(IN(a)) = (pw * rstd_a) a + a per-channel constant, so the norm is folded
// into the pointwise weights, and the pointwise conv is one GEMM (pixels x C) @ (C x C).
at::Tensor mobile_block_cpu(const at::Tensor& x_in, const at::Tensor& dw1, const at::Tensor& pw1,
                            const at::Tensor& dw2, const at::Tensor& pw2, double eps) {
  check_block_args(x_in, dw1, pw1, dw2, pw2);
  const bool channels_last_in = x_in.is_contiguous(at::MemoryFormat::ChannelsLast) && !x_in.is_contiguous();
  const auto x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C = x.size(1);
  const Map m{x.size(2), x.size(3), C};
  const int64_t chunks = row_chunks(m.H, m.W, C);  // a small map runs as one chunk, without a parallel region
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  // The depthwise outputs go to the sample's slice of y (overwritten last), the pointwise outputs to p: one
  // workspace per call.
  auto p = at::empty({m.pixels(), C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mobile_block_cpu", [&] {
    using T = scalar_t;
    // depthwise weights as [tap][C], so a vector of channels reads one tap's weights contiguously
    const auto k1 = dw1.reshape({C, 9}).t().contiguous(), k2 = dw2.reshape({C, 9}).t().contiguous();
    const auto w1 = pw1.reshape({C, C}), w2 = pw2.reshape({C, C});
    ChannelStats<T> stats(chunks, C);
    std::vector<T> mean(C), rstd(C), offset(C);
    // offset = -mean * rstd: the norm as v * rstd + offset
    auto norm_offset = [&] {
      for (int64_t c = 0; c < C; ++c) offset[c] = -mean[c] * rstd[c];
    };
    T* pp = p.mutable_data_ptr<T>();
    const bool use_onednn = std::is_same_v<T, float> && at::hasMKLDNN();
    for (int64_t b = 0; b < B; ++b) {
      const T* xb = x.const_data_ptr<T>() + b * m.pixels() * C;
      T* yb = y.mutable_data_ptr<T>() + b * m.pixels() * C;
      const auto a = y[b].permute({1, 2, 0}).reshape({m.pixels(), C});  // a view: y is channels_last
      // p = a @ (w * rstd_a)^T: the pointwise conv with the preceding norm folded in. In float32 it runs as oneDNN's
      // 1x1 convolution on the channels_last sample (measured 1.6-3x the rate of MKL's sgemm on these shapes on an
      // AVX-512 AMD CPU, where MKL stays near 200 GFLOP/s), whose output rows are the pixels: p becomes that output.
      auto pointwise = [&](const at::Tensor& w) {
        const auto scale = at::from_blob(rstd.data(), {1, C}, x.options());
        const auto folded = w * scale;
        if (use_onednn) {
          p = at::mkldnn_convolution(y.narrow(0, b, 1), folded.reshape({C, C, 1, 1}), std::nullopt, {0, 0}, {1, 1},
                                     {1, 1}, 1)
                  .permute({0, 2, 3, 1})
                  .reshape({m.pixels(), C})
                  .contiguous();
          pp = p.mutable_data_ptr<T>();
        } else {
          at::mm_out(p, a, folded.t());
        }
      };
      depthwise3x3<T>(xb, k1.const_data_ptr<T>(), PlainIn<T>{}, yb, stats, m, chunks);
      stats.finish(chunks, m.pixels(), eps, mean, rstd);
      pointwise(w1);
      channel_stats<T>(pp, stats, m, chunks);
      stats.finish(chunks, m.pixels(), eps, mean, rstd);
      norm_offset();
      depthwise3x3<T>(pp, k2.const_data_ptr<T>(), NormReluIn<T>{rstd.data(), offset.data()}, yb, stats, m, chunks);
      stats.finish(chunks, m.pixels(), eps, mean, rstd);
      pointwise(w2);
      channel_stats<T>(pp, stats, m, chunks);
      stats.finish(chunks, m.pixels(), eps, mean, rstd);
      norm_offset();
      normalize_add<T>(pp, rstd, offset, xb, yb, chunks, m);
    }
  });
  return channels_last_in ? y : y.contiguous();
}

// ------------------------------------------------------------------------------------------------ narrow_conv2d

enum class HeadAct { None, Tanh };

// Output rows of y = act(conv(x, w) + bias) for kOut output channels, x and y contiguous (B, C, H, W). Vectors run
// along W: a block of V vectors of output pixels keeps kOut x V accumulators in registers while it walks every
// (channel, tap) once, loading V input vectors and broadcasting kOut weights per tap. A row goes in blocks of kVecs
// vectors, then of one, then one partial vector for its last pixels.
template <typename T, int kOut>
void narrow_conv_rows(const at::Tensor& x, const at::Tensor& w, const T* bias, HeadAct act, at::Tensor& y) {
  constexpr int kVecs = kOut <= 3 ? 4 : 3;  // kOut x kVecs accumulators + kOut weights + 1 input fit in 16 registers
  constexpr int64_t L = Vec<T>::size();
  using Full = std::integral_constant<int64_t, L>;
  const int64_t B = x.size(0), Ci = x.size(1), Hi = x.size(2), Wi = x.size(3);
  const int64_t Kh = w.size(2), Kw = w.size(3), Ho = y.size(2), Wo = y.size(3);
  const T* xp = x.const_data_ptr<T>();
  const T* wp = w.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  const int64_t taps = Ci * Kh * Kw;  // weight of output o at tap t: wp[o * taps + t]
  at::parallel_for(0, B * Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Ho, h = row % Ho;
      const T* xb = xp + b * Ci * Hi * Wi;
      T* yrow[kOut];
      for (int o = 0; o < kOut; ++o) yrow[o] = yp + ((b * kOut + o) * Ho + h) * Wo;
      // V vectors of output pixels from w0, each of `lanes` lanes: L (a compile-time constant) in full blocks, fewer
      // in the one-vector block at a row's end (whose loads read only its lanes)
      auto block = [&](auto vectors, int64_t w0, auto lanes) {
        constexpr int V = decltype(vectors)::value;
        Vec<T> acc[kOut][V];
        for (int o = 0; o < kOut; ++o)
          for (int v = 0; v < V; ++v) acc[o][v] = Vec<T>(bias ? bias[o] : T(0));
        for (int64_t c = 0; c < Ci; ++c)
          for (int64_t i = 0; i < Kh; ++i) {
            const T* in = xb + (c * Hi + h + i) * Wi + w0;
            const T* wt = wp + (c * Kh + i) * Kw;
            for (int64_t j = 0; j < Kw; ++j) {
              Vec<T> wv[kOut];
              for (int o = 0; o < kOut; ++o) wv[o] = Vec<T>(wt[o * taps + j]);
              for (int v = 0; v < V; ++v) {
                const auto xv = load(in + j + v * L, lanes);
                for (int o = 0; o < kOut; ++o) acc[o][v] = at::vec::fmadd(xv, wv[o], acc[o][v]);
              }
            }
          }
        for (int o = 0; o < kOut; ++o)
          for (int v = 0; v < V; ++v)
            store(act == HeadAct::Tanh ? acc[o][v].tanh() : acc[o][v], yrow[o] + w0 + v * L, lanes);
      };
      int64_t w0 = 0;
      for (; w0 + kVecs * L <= Wo; w0 += kVecs * L) block(std::integral_constant<int, kVecs>{}, w0, Full{});
      for (; w0 + L <= Wo; w0 += L) block(std::integral_constant<int, 1>{}, w0, Full{});
      if (w0 < Wo) block(std::integral_constant<int, 1>{}, w0, Wo - w0);
    }
  });
}

constexpr int64_t kMaxNarrowOut = 4;

// x reflect-padded by pad on every side, as a contiguous (B, C, H + 2 pad, W + 2 pad) tensor: the layout the conv's
// vectors along W read. A channels_last x is transposed in blocks of 8 pixels x 8 channels.
template <typename T>
at::Tensor padded_planes(const at::Tensor& x, int64_t pad) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Hp = H + 2 * pad, Wp = W + 2 * pad;
  const bool pixels = x.stride(1) == 1 && C > 1;
  const auto src = pixels || x.stride(3) == 1 ? x : x.contiguous();
  auto out = at::empty({B, C, Hp, Wp}, x.options());
  const T* sp = src.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  const int64_t sb = src.stride(0), sc = src.stride(1), sh = src.stride(2), sw = src.stride(3), plane = Hp * Wp;
  at::parallel_for(0, B * Hp, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Hp, hp = row % Hp;
      const T* in = sp + b * sb + reflect(hp - pad, H) * sh;
      T* dst = op + b * C * plane + hp * Wp + pad;  // channel 0's row, column pad
      if (pixels) {
        constexpr int64_t K = 8;
        for (int64_t w = 0; w < W; w += K)
          for (int64_t c = 0; c < C; c += K) {
            const int64_t m = std::min(K, W - w), n = std::min(K, C - c);
            if (m == K && n == K)
              at::vec::transpose_mxn<T, K, K>(in + w * sw + c, sw, dst + c * plane + w, plane);
            else
              at::vec::transpose_mxn<T>(in + w * sw + c, sw, dst + c * plane + w, plane, m, n);
          }
      } else {
        for (int64_t c = 0; c < C; ++c) std::copy_n(in + c * sc, W, dst + c * plane);
      }
      for (int64_t c = 0; c < C; ++c) {
        T* r = dst + c * plane;
        for (int64_t q = 1; q <= pad; ++q) {
          r[-q] = r[q];
          r[W - 1 + q] = r[W - 1 - q];
        }
      }
    }
  });
  return out;
}

at::Tensor narrow_conv2d_cpu(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::string_view act_name, int64_t pad) {
  constexpr const char* op = "narrow_conv2d";
  TORCH_CHECK_VALUE(x_in.dim() == 4 && x_in.numel() > 0, op, ": x must be a non-empty (B, C, H, W), got ",
                    x_in.sizes());
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64 on CPU, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(pad >= 0 && pad < x_in.size(2) && pad < x_in.size(3), op,
                    ": reflect_pad must be in [0, min(H, W)) for reflection padding, got ", pad, " for x of shape ",
                    x_in.sizes());
  const int64_t Hp = x_in.size(2) + 2 * pad, Wp = x_in.size(3) + 2 * pad;
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == x_in.size(1) && weight.size(0) >= 1 &&
                        weight.size(0) <= kMaxNarrowOut,
                    op, ": weight must have shape (O, C, Kh, Kw) with 1 <= O <= ", kMaxNarrowOut, " and C = ",
                    x_in.size(1), " like x, got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(2) >= 1 && weight.size(3) >= 1 && weight.size(2) <= Hp && weight.size(3) <= Wp, op,
                    ": the kernel ", weight.sizes().slice(2), " must fit in the padded x's ", Hp, " x ", Wp);
  TORCH_CHECK_TYPE(weight.scalar_type() == x_in.scalar_type(), op, ": weight has dtype ", weight.scalar_type(),
                   ", expected ", x_in.scalar_type(), " like x");
  TORCH_CHECK_VALUE(weight.device() == x_in.device(), op, ": weight is on ", weight.device(), ", expected ",
                    x_in.device());
  if (bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias has shape ", bias->sizes(),
                      ", expected (", weight.size(0), ",)");
    TORCH_CHECK_TYPE(bias->scalar_type() == x_in.scalar_type(), op, ": bias has dtype ", bias->scalar_type(),
                     ", expected ", x_in.scalar_type(), " like x");
    TORCH_CHECK_VALUE(bias->device() == x_in.device(), op, ": bias is on ", bias->device(), ", expected ",
                      x_in.device());
  }
  const std::string act_str(act_name);
  TORCH_CHECK_VALUE(act_str == "tanh" || act_str == "none", op, ": act must be one of 'tanh', 'none', got '",
                    act_str, "'");
  const HeadAct act = act_str == "tanh" ? HeadAct::Tanh : HeadAct::None;
  const auto w = weight.contiguous();
  const auto bi = bias ? bias->contiguous() : at::Tensor();
  const int64_t O = w.size(0);
  at::Tensor y;
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "narrow_conv2d_cpu", [&] {
    using T = scalar_t;
    const auto x = pad > 0 || !x_in.is_contiguous() ? padded_planes<T>(x_in, pad) : x_in;
    y = at::empty({x.size(0), O, Hp - w.size(2) + 1, Wp - w.size(3) + 1}, x.options());
    const T* bp = bi.defined() ? bi.const_data_ptr<T>() : nullptr;
    switch (O) {
      case 1: return narrow_conv_rows<T, 1>(x, w, bp, act, y);
      case 2: return narrow_conv_rows<T, 2>(x, w, bp, act, y);
      case 3: return narrow_conv_rows<T, 3>(x, w, bp, act, y);
      default: return narrow_conv_rows<T, 4>(x, w, bp, act, y);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CPU, m) {
  m.impl("mobile_block", &mobile_block_cpu);
  m.impl("narrow_conv2d", &narrow_conv2d_cpu);
}

}  // namespace ackd_fast
