// instance_norm_act_residual on CPU: y = act((x - mean) * rstd * weight + bias) + residual, and its backward.
//
// One task per (sample, channel) plane, vectorised along W with at::vec. Statistics are two-pass (mean, then the
// mean squared deviation) for accuracy. Inputs whose rows are not unit-stride (channels_last among them) are
// copied to NCHW first and the result is given back in the input's layout.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../checks.h"

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

template <typename T>
using Vec = Vectorized<T>;

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

at::Tensor rows_unit(const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_cpu(const at::Tensor& x_in,
                                                                               const std::optional<at::Tensor>& weight,
                                                                               const std::optional<at::Tensor>& bias,
                                                                               const std::optional<at::Tensor>& residual,
                                                                               c10::string_view act_name, double eps) {
  check_norm_args(x_in, weight, bias, residual);
  const Act act = parse_act(std::string(act_name));
  const auto x = rows_unit(x_in);
  const auto res = residual ? rows_unit(*residual) : at::Tensor();
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2) * x.size(3);
  auto y = new_output(x.sizes(), x.options(), at::MemoryFormat::Contiguous);
  auto mean = new_output({B, C}, x.options(), at::MemoryFormat::Contiguous);
  auto rstd = new_output({B, C}, x.options(), at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "instance_norm_act_residual_cpu", [&] {
    using T = scalar_t;
    const auto w = weight ? weight->to(x.scalar_type()).contiguous() : at::Tensor();
    const auto bi = bias ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
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
  return {y.contiguous(output_format(x_in)), mean, rstd};
}

// With xhat = (x - mean) * rstd, z = xhat * weight + bias and gz = grad * act'(z):
//   grad bias = sum gz,  grad weight = sum gz * xhat  (over the plane, then over the batch),
//   grad x = rstd * weight * (gz - mean(gz) - xhat * mean(gz * xhat)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, c10::string_view act_name) {
  check_norm_backward_args(grad_in, x_in, weight, bias);
  const Act act = parse_act(std::string(act_name));
  const auto x = rows_unit(x_in);
  const auto grad = rows_unit(grad_in);
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2) * x.size(3);
  auto gx = new_output(x.sizes(), x.options(), at::MemoryFormat::Contiguous);
  auto s1 = at::empty({B, C}, x.options());  // per plane: sum gz
  auto s2 = at::empty({B, C}, x.options());  // per plane: sum gz * xhat
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "instance_norm_act_residual_backward_cpu", [&] {
    using T = scalar_t;
    const auto w = weight ? weight->to(x.scalar_type()).contiguous() : at::Tensor();
    const auto bi = bias ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
    const auto m = mean.to(x.scalar_type()).contiguous(), rs = rstd.to(x.scalar_type()).contiguous();
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
  return {gx.contiguous(output_format(x_in)), s2.sum(0).to(param_options), s1.sum(0).to(param_options)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CPU, m) {
  m.impl("instance_norm_act_residual", &instance_norm_act_residual_cpu);
  m.impl("instance_norm_act_residual_backward", &instance_norm_act_residual_backward_cpu);
}

}  // namespace ackd_fast
