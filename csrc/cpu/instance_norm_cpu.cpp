// instance_norm_act_residual on CPU: y = act((x - mean) * rstd * weight + bias) + residual, and its backward.
//
// Two layouts, each vectorised with at::vec along its unit-stride axis:
//  - planes (NCHW): one task per (sample, channel) plane, vectors along W;
//  - pixels (channels_last): vectors along C; the forward's tasks are (sample, block of channels, rows), with
//    per-channel sums in registers while a task walks its pixels; the backward's are (sample, block of channels).
// x's layout picks the path (outputs take it too); an input whose unit stride lies elsewhere is copied into the
// path's layout first. Statistics are two-pass (mean, then the mean squared deviation) for accuracy. fp16/bf16 are
// computed in fp32, converted on entry and on exit (the statistics stay fp32, as on CUDA).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../checks.h"
#include "common.h"

namespace ackd_fast {
namespace {

using at::vec::Vectorized;

// A (sample, channel) plane: H rows of W elements, unit stride along a row.
template <typename T>
struct Plane {
  T* ptr;
  int64_t row_stride, H, W;
  T* row(int64_t h) const { return ptr + h * row_stride; }
};

template <typename T>
Plane<T> plane(const at::Tensor& t, int64_t b, int64_t c) {
  return {const_cast<T*>(t.const_data_ptr<T>()) + b * t.stride(0) + c * t.stride(1), t.stride(2), t.size(2),
          t.size(3)};
}

// Calls f(vec_x, ..., i) over the rows of planes of equal shape: vectors, then a scalar tail of the same lambda.
template <typename T, typename F>
void each_vector(const Plane<T>& p, F&& f) {
  using Vec = Vectorized<T>;
  for (int64_t h = 0; h < p.H; ++h) {
    int64_t i = 0;
    for (; i + Vec::size() <= p.W; i += Vec::size()) f(h, i, Vec::size());
    if (i < p.W) f(h, i, p.W - i);
  }
}

// A running sum kept as a vector and reduced once at the end. Partial vectors are loaded zero-filled past their
// length, so every lane may be added.
template <typename T>
struct VecSum {
  Vec<T> acc{T(0)};
  void add(const Vec<T>& v) { acc = acc + v; }
  T total() const {
    return at::vec::vec_reduce_all<T>([](auto a, auto b) { return a + b; }, acc);
  }
};


// ------------------------------------------------------------------------------------- pixels (channels_last)

constexpr int64_t kChannelBlock = 64;  // channels per task: per-channel sums stay in registers / L1


// A (B, C, H, W) tensor with unit stride along C: the channel run of sample b at pixel p starts at pixel(b, p).
template <typename T>
struct Pixels {
  T* ptr;
  int64_t sb, sh, sw, W;
  T* at(int64_t b, int64_t h, int64_t w) const { return ptr + b * sb + h * sh + w * sw; }
  T* pixel(int64_t b, int64_t p) const { return at(b, p / W, p % W); }
};

template <typename T>
Pixels<T> pixels_of(const at::Tensor& t) {
  return {const_cast<T*>(t.const_data_ptr<T>()), t.stride(0), t.stride(2), t.stride(3), t.size(3)};
}

// sums[k] += the sum of f(x[pixel, c0 + k]) over the pixels of rows [h0, h1) of sample b, for k in [0, n). Channels
// go in groups of up to 4 vectors whose sums stay in registers while the group walks the pixels (f(v, k, count)
// transforms the vector of channels c0 + k).
template <typename T, typename F>
void add_channel_sums(const Pixels<T>& px, int64_t b, int64_t h0, int64_t h1, int64_t c0, int64_t n, F&& f,
                      T* sums) {
  constexpr int64_t L = Vec<T>::size();
  auto group = [&](auto vectors, int64_t k, auto count) {
    constexpr int64_t G = decltype(vectors)::value;
    Vec<T> acc[G];
    for (int64_t g = 0; g < G; ++g) acc[g] = Vec<T>(T(0));
    for (int64_t h = h0; h < h1; ++h) {
      const T* row = px.at(b, h, 0) + c0 + k;
      for (int64_t w = 0; w < px.W; ++w)
        for (int64_t g = 0; g < G; ++g) acc[g] = acc[g] + f(load(row + w * px.sw + g * L, count), k + g * L, count);
    }
    for (int64_t g = 0; g < G; ++g) store(load(sums + k + g * L, count) + acc[g], sums + k + g * L, count);
  };
  using Full = std::integral_constant<int64_t, L>;
  int64_t k = 0;
  for (; k + 4 * L <= n; k += 4 * L) group(std::integral_constant<int64_t, 4>{}, k, Full{});
  for (; k + 2 * L <= n; k += 2 * L) group(std::integral_constant<int64_t, 2>{}, k, Full{});
  for (; k + L <= n; k += L) group(std::integral_constant<int64_t, 1>{}, k, Full{});
  if (k < n) group(std::integral_constant<int64_t, 1>{}, k, n - k);
}

template <typename T>
void forward_pixels(const at::Tensor& x, const at::Tensor& res, const at::Tensor& w, const at::Tensor& bi,
                    at::Tensor& y, at::Tensor& mean, at::Tensor& rstd, Act act, double eps) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), N = H * x.size(3);
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  const int64_t chunks = row_chunks(H, x.size(3), std::min(C, kChannelBlock));
  const auto px = pixels_of<T>(x), py = pixels_of<T>(y);
  const Pixels<T> pr = res.defined() ? pixels_of<T>(res) : Pixels<T>{nullptr, 0, 0, 0, 1};
  // task = ((b * blocks) + block) * chunks + chunk; part[task * kChannelBlock + k]: that task's partial sums
  std::vector<T> part(B * blocks * chunks * kChannelBlock);
  auto for_tasks = [&](auto&& f) {
    at::parallel_for(0, B * blocks * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / (blocks * chunks), c0 = (task / chunks % blocks) * kChannelBlock;
        const int64_t chunk = task % chunks, h0 = chunk_start(H, chunks, chunk), h1 = chunk_start(H, chunks, chunk + 1);
        f(task, b, c0, std::min(kChannelBlock, C - c0), h0, h1);
      }
    });
  };
  // per (b, c): the chunks' partial sums in order, over N
  auto reduce = [&](T* out) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        const T* first = part.data() + (b * blocks + c / kChannelBlock) * chunks * kChannelBlock + c % kChannelBlock;
        T total = 0;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) total += first[chunk * kChannelBlock];
        out[b * C + c] = total / N;
      }
  };
  T* mu = mean.mutable_data_ptr<T>();
  T* rs = rstd.mutable_data_ptr<T>();
  for_tasks([&](int64_t task, int64_t b, int64_t c0, int64_t n, int64_t h0, int64_t h1) {
    T* sums = part.data() + task * kChannelBlock;
    std::fill_n(sums, n, T(0));
    add_channel_sums(px, b, h0, h1, c0, n, [](const Vec<T>& v, int64_t, auto) { return v; }, sums);
  });
  reduce(mu);
  for_tasks([&](int64_t task, int64_t b, int64_t c0, int64_t n, int64_t h0, int64_t h1) {
    T* sums = part.data() + task * kChannelBlock;
    std::fill_n(sums, n, T(0));
    const T* m = mu + b * C + c0;
    add_channel_sums(px, b, h0, h1, c0, n, [m](const Vec<T>& v, int64_t k, auto count) {
      const auto d = v - load(m + k, count);
      return d * d;
    }, sums);
  });
  reduce(rs);  // the variance, then rstd
  // y = x * scale + shift per (b, c)
  std::vector<T> scale(B * C), shift(B * C);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = b * C + c;
      rs[i] = T(1) / std::sqrt(rs[i] + static_cast<T>(eps));
      scale[i] = rs[i] * (w.defined() ? w.const_data_ptr<T>()[c] : T(1));
      shift[i] = (bi.defined() ? bi.const_data_ptr<T>()[c] : T(0)) - mu[i] * scale[i];
    }
  for_tasks([&](int64_t, int64_t b, int64_t c0, int64_t n, int64_t h0, int64_t h1) {
    const T* sc = scale.data() + b * C + c0;
    const T* sh = shift.data() + b * C + c0;
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t wi = 0; wi < px.W; ++wi) {
        const T* xp = px.at(b, h, wi) + c0;
        T* yp = py.at(b, h, wi) + c0;
        const T* rp = pr.ptr ? pr.at(b, h, wi) + c0 : nullptr;
        each_lane_block<T>(n, [&](int64_t k, auto count) {
          auto v = at::vec::fmadd(load(xp + k, count), load(sc + k, count), load(sh + k, count));
          if (act == Act::Relu) v = at::vec::clamp_min(v, Vec<T>(0));
          if (rp) v = v + load(rp + k, count);
          store(v, yp + k, count);
        });
      }
  });
}

template <typename T>
void backward_pixels(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                     const at::Tensor& w, const at::Tensor& bi, at::Tensor& gx, at::Tensor& s1, at::Tensor& s2,
                     Act act) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2) * x.size(3);
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  const auto px = pixels_of<T>(x), pg = pixels_of<T>(grad), pgx = pixels_of<T>(gx);
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    // Per channel: xhat = x * r + xhat0, z = x * zs + z0, and the sums of gz and gz * xhat.
    std::vector<T> r(kChannelBlock), xhat0(kChannelBlock), zs(kChannelBlock), z0(kChannelBlock);
    std::vector<T> sum_gz(kChannelBlock), sum_gz_xhat(kChannelBlock), k1(kChannelBlock), k2(kChannelBlock),
        k3(kChannelBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, c0 = (task % blocks) * kChannelBlock, n = std::min(kChannelBlock, C - c0);
      for (int64_t k = 0; k < n; ++k) {
        const int64_t c = c0 + k;
        const T mu = mean.const_data_ptr<T>()[b * C + c];
        const T wc = w.defined() ? w.const_data_ptr<T>()[c] : T(1);
        const T bc = bi.defined() ? bi.const_data_ptr<T>()[c] : T(0);
        r[k] = rstd.const_data_ptr<T>()[b * C + c];
        xhat0[k] = -mu * r[k];
        zs[k] = r[k] * wc;
        z0[k] = bc + xhat0[k] * wc;
        sum_gz[k] = sum_gz_xhat[k] = 0;
      }
      auto terms = [&](const T* xp, const T* gp, int64_t k, int64_t count, Vec<T>& gz, Vec<T>& xhat) {
        const auto xv = load(xp + k, count);
        xhat = at::vec::fmadd(xv, load(r.data() + k, count), load(xhat0.data() + k, count));
        gz = load(gp + k, count);
        if (act == Act::Relu) {
          const auto z = at::vec::fmadd(xv, load(zs.data() + k, count), load(z0.data() + k, count));
          gz = Vec<T>::blendv(Vec<T>(0), gz, z > Vec<T>(0));
        }
      };
      for (int64_t p = 0; p < N; ++p) {
        const T *xp = px.pixel(b, p) + c0, *gp = pg.pixel(b, p) + c0;
        each_lane_block<T>(n, [&](int64_t k, int64_t count) {
          Vec<T> gz, xhat;
          terms(xp, gp, k, count, gz, xhat);
          (load(sum_gz.data() + k, count) + gz).store(sum_gz.data() + k, count);
          at::vec::fmadd(gz, xhat, load(sum_gz_xhat.data() + k, count)).store(sum_gz_xhat.data() + k, count);
        });
      }
      // grad x = k1 * gz - k2 * xhat - k3 with k1 = r * w, k2 = k1 * mean(gz * xhat), k3 = k1 * mean(gz)
      for (int64_t k = 0; k < n; ++k) {
        k1[k] = zs[k];
        k2[k] = zs[k] * sum_gz_xhat[k] / N;
        k3[k] = zs[k] * sum_gz[k] / N;
        s1.mutable_data_ptr<T>()[b * C + c0 + k] = sum_gz[k];
        s2.mutable_data_ptr<T>()[b * C + c0 + k] = sum_gz_xhat[k];
      }
      for (int64_t p = 0; p < N; ++p) {
        const T *xp = px.pixel(b, p) + c0, *gp = pg.pixel(b, p) + c0;
        T* op = pgx.pixel(b, p) + c0;
        each_lane_block<T>(n, [&](int64_t k, int64_t count) {
          Vec<T> gz, xhat;
          terms(xp, gp, k, count, gz, xhat);
          const auto v = load(k1.data() + k, count) * gz - load(k2.data() + k, count) * xhat - load(k3.data() + k, count);
          store(v, op + k, count);
        });
      }
    }
  });
}

// An input in the layout of the chosen path: unit stride along W (planes) or along C (pixels).
at::Tensor in_layout(const at::Tensor& t, bool pixels) {
  if (pixels) return t.stride(1) == 1 ? t : t.contiguous(at::MemoryFormat::ChannelsLast);
  return t.stride(3) == 1 ? t : t.contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_cpu(const at::Tensor& x_in,
                                                                               const std::optional<at::Tensor>& weight,
                                                                               const std::optional<at::Tensor>& bias,
                                                                               const std::optional<at::Tensor>& residual,
                                                                               c10::string_view act_name, double eps) {
  check_norm_args(x_in, weight, bias, residual);
  if (is_reduced_float(x_in.scalar_type())) {  // fp16/bf16: computed in fp32; the statistics stay fp32
    const auto wide_residual = residual ? std::optional<at::Tensor>(residual->to(at::kFloat)) : std::nullopt;
    auto [y, mean, rstd] =
        instance_norm_act_residual_cpu(x_in.to(at::kFloat), weight, bias, wide_residual, act_name, eps);
    return {y.to(x_in.scalar_type()).contiguous(output_format(x_in)), mean, rstd};
  }
  const Act act = parse_act(std::string(act_name));
  const auto format = output_format(x_in);
  const bool pixels = format == at::MemoryFormat::ChannelsLast;
  const auto x = in_layout(x_in, pixels);
  const auto res = residual ? in_layout(*residual, pixels) : at::Tensor();
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2) * x.size(3);
  auto y = new_output(x.sizes(), x.options(), format);
  auto mean = new_output({B, C}, x.options(), at::MemoryFormat::Contiguous);
  auto rstd = new_output({B, C}, x.options(), at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "instance_norm_act_residual_cpu", [&] {
    using T = scalar_t;
    const auto w = weight ? weight->to(x.scalar_type()).contiguous() : at::Tensor();
    const auto bi = bias ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
    if (pixels) return forward_pixels<T>(x, res, w, bi, y, mean, rstd, act, eps);
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / C, c = bc % C;
        const auto px = plane<T>(x, b, c);
        VecSum<T> sum;
        each_vector(px, [&](int64_t h, int64_t i, int64_t n) { sum.add(load(px.row(h) + i, n)); });
        const T mu = sum.total() / N;
        VecSum<T> sq;
        each_vector(px, [&](int64_t h, int64_t i, int64_t n) {
          auto d = load(px.row(h) + i, n) - Vec<T>(mu);
          if (n != Vec<T>::size()) d = Vec<T>::set(Vec<T>(0), d, n);  // lanes past n hold 0 - mu
          sq.add(d * d);
        });
        const T r = T(1) / std::sqrt(sq.total() / N + static_cast<T>(eps));
        mean.mutable_data_ptr<T>()[bc] = mu;
        rstd.mutable_data_ptr<T>()[bc] = r;
        // y = (x - mu) * (r * weight) + bias, as one FMA per element.
        const T scale = r * (w.defined() ? w.const_data_ptr<T>()[c] : T(1));
        const T shift = (bi.defined() ? bi.const_data_ptr<T>()[c] : T(0)) - mu * scale;
        const auto py = plane<T>(y, b, c);
        const Plane<T> pr = res.defined() ? plane<T>(res, b, c) : Plane<T>{nullptr, 0, 0, 0};
        each_vector(px, [&](int64_t h, int64_t i, int64_t n) {
          auto v = at::vec::fmadd(load(px.row(h) + i, n), Vec<T>(scale), Vec<T>(shift));
          if (act == Act::Relu) v = at::vec::clamp_min(v, Vec<T>(0));
          if (pr.ptr) v = v + load(pr.row(h) + i, n);
          store(v, py.row(h) + i, n);
        });
      }
    });
  });
  return {y, mean, rstd};
}

// With xhat = (x - mean) * rstd, z = xhat * weight + bias and gz = grad * act'(z):
//   grad bias = sum gz,  grad weight = sum gz * xhat  (over the plane, then over the batch),
//   grad x = rstd * weight * (gz - mean(gz) - xhat * mean(gz * xhat)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, c10::string_view act_name) {
  check_norm_backward_args(grad_in, x_in, mean, rstd, weight, bias);
  if (is_reduced_float(x_in.scalar_type())) {  // fp16/bf16: computed in fp32
    auto [gx, grad_weight, grad_bias] = instance_norm_act_residual_backward_cpu(
        grad_in.to(at::kFloat), x_in.to(at::kFloat), mean, rstd, weight, bias, act_name);
    const auto param_dtype = weight ? weight->scalar_type() : (bias ? bias->scalar_type() : x_in.scalar_type());
    return {gx.to(x_in.scalar_type()).contiguous(output_format(x_in)), grad_weight.to(param_dtype),
            grad_bias.to(param_dtype)};
  }
  const Act act = parse_act(std::string(act_name));
  const auto format = output_format(x_in);
  const bool pixels = format == at::MemoryFormat::ChannelsLast;
  const auto x = in_layout(x_in, pixels);
  const auto grad = in_layout(grad_in, pixels);
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2) * x.size(3);
  auto gx = new_output(x.sizes(), x.options(), format);
  auto s1 = at::empty({B, C}, x.options());  // per plane: sum gz
  auto s2 = at::empty({B, C}, x.options());  // per plane: sum gz * xhat
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "instance_norm_act_residual_backward_cpu", [&] {
    using T = scalar_t;
    const auto w = weight ? weight->to(x.scalar_type()).contiguous() : at::Tensor();
    const auto bi = bias ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
    const auto m = mean.to(x.scalar_type()).contiguous(), rs = rstd.to(x.scalar_type()).contiguous();
    if (pixels) return backward_pixels<T>(grad, x, m, rs, w, bi, gx, s1, s2, act);
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / C, c = bc % C;
        const T mu = m.const_data_ptr<T>()[bc], r = rs.const_data_ptr<T>()[bc];
        const T wc = w.defined() ? w.const_data_ptr<T>()[c] : T(1);
        const T bc_ = bi.defined() ? bi.const_data_ptr<T>()[c] : T(0);
        const auto px = plane<T>(x, b, c), pg = plane<T>(grad, b, c), pgx = plane<T>(gx, b, c);
        // gz and xhat for a vector; lanes past n are zero in both, so they add nothing to the sums.
        auto terms = [&](int64_t h, int64_t i, int64_t n, Vec<T>& gz, Vec<T>& xhat) {
          const auto xv = load(px.row(h) + i, n);
          xhat = (xv - Vec<T>(mu)) * Vec<T>(r);
          if (n != Vec<T>::size()) xhat = Vec<T>::set(Vec<T>(0), xhat, n);
          gz = load(pg.row(h) + i, n);
          if (act == Act::Relu) {
            const auto z = at::vec::fmadd(xhat, Vec<T>(wc), Vec<T>(bc_));
            gz = Vec<T>::blendv(Vec<T>(0), gz, z > Vec<T>(0));
          }
        };
        VecSum<T> gz_sum, gz_xhat_sum;
        each_vector(px, [&](int64_t h, int64_t i, int64_t n) {
          Vec<T> gz, xhat;
          terms(h, i, n, gz, xhat);
          gz_sum.add(gz);
          gz_xhat_sum.add(gz * xhat);
        });
        const T sum_gz = gz_sum.total(), sum_gz_xhat = gz_xhat_sum.total();
        s1.mutable_data_ptr<T>()[bc] = sum_gz;
        s2.mutable_data_ptr<T>()[bc] = sum_gz_xhat;
        const T k = r * wc, a = sum_gz / N, bb = sum_gz_xhat / N;
        each_vector(px, [&](int64_t h, int64_t i, int64_t n) {
          Vec<T> gz, xhat;
          terms(h, i, n, gz, xhat);
          store(Vec<T>(k) * (gz - Vec<T>(a) - xhat * Vec<T>(bb)), pgx.row(h) + i, n);
        });
      }
    });
  });
  auto param_options = weight ? weight->options() : (bias ? bias->options() : x.options());
  return {gx, s2.sum(0).to(param_options), s1.sum(0).to(param_options)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CPU, m) {
  m.impl("instance_norm_act_residual", &instance_norm_act_residual_cpu);
  m.impl("instance_norm_act_residual_backward", &instance_norm_act_residual_backward_cpu);
}

}  // namespace ackd_fast
