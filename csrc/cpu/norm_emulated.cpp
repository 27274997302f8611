// Tests only: instance_norm_act_residual's CUDA kernels run on the CPU (emulation.h), with the variants the CUDA
// launcher picks (norm_plan.h). Where a kernel sums over its block (cub, or a chunk block's columns) the emulation
// sums the threads' values in order, after every thread of the block has run the phase before.
#include <array>
#include <optional>
#include <vector>

#include <torch/library.h>

#include "../checks.h"
#include "../norm_plan.h"
#include "emulation.h"

namespace ackd_fast {
namespace {

using namespace tiles;

// Sums v over the kRows threads of each lane, as column_sum in the CUDA wrappers; every thread gets its lane's.
template <int vec, typename acc_t>
void column_sums(std::vector<std::array<acc_t, vec>>& v) {
  for (int lane = 0; lane < kLanes; ++lane)
    for (int e = 0; e < vec; ++e) {
      acc_t total = 0;
      for (int r = 0; r < kRows; ++r) total += v[r * kLanes + lane][e];
      for (int r = 0; r < kRows; ++r) v[r * kLanes + lane][e] = total;
    }
}

template <int vec, typename acc_t>
void to_array(const acc_t (&from)[vec], std::array<acc_t, vec>& to) {
  for (int e = 0; e < vec; ++e) to[e] = from[e];
}

template <int vec, typename acc_t>
void from_array(const std::array<acc_t, vec>& from, acc_t (&to)[vec]) {
  for (int e = 0; e < vec; ++e) to[e] = from[e];
}

template <bool grad, int vec, bool cached, typename scalar_t, typename acc_t, typename index_t>
void run_planes(const NormArgs<scalar_t, acc_t, index_t>& a, int64_t planes) {
  for (int64_t bc = 0; bc < planes; ++bc) {
    if (!grad) {
      std::vector<PlaneState<vec, cached, acc_t>> s(kThreads);
      acc_t sum = 0, m2 = 0;
      for (int t = 0; t < kThreads; ++t) sum += plane_sum<vec, cached>(a, bc, t, s[t]);
      const acc_t mean = sum / static_cast<acc_t>(a.N);
      for (int t = 0; t < kThreads; ++t) m2 += plane_m2<vec, cached>(a, bc, t, s[t], mean);
      const acc_t rstd = inv_sqrt(m2 / static_cast<acc_t>(a.N) + a.eps);
      for (int t = 0; t < kThreads; ++t) plane_write<vec, cached>(a, bc, t, s[t], mean, rstd);
    } else {
      std::vector<PlaneGradState<vec, cached, acc_t>> s(kThreads);
      acc_t s1 = 0, s2 = 0;
      for (int t = 0; t < kThreads; ++t) {
        acc_t g1, g2;
        plane_grad_sums<vec, cached>(a, bc, t, s[t], g1, g2);
        s1 += g1;
        s2 += g2;
      }
      for (int t = 0; t < kThreads; ++t) plane_grad_write<vec, cached>(a, bc, t, s[t], s1, s2);
    }
  }
}

template <bool grad, int vec, typename scalar_t, typename acc_t, typename index_t>
void run_pixels(NormArgs<scalar_t, acc_t, index_t> a, const NormPlan& p, const at::Tensor& x) {
  const int64_t B = x.size(0);
  auto chunk_a = at::empty({B, p.chunks, a.C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  auto chunk_b = at::empty_like(chunk_a);
  a.chunk_a = chunk_a.template mutable_data_ptr<acc_t>();
  a.chunk_b = chunk_b.template mutable_data_ptr<acc_t>();
  const int64_t channel_blocks = (a.C + kLanes * vec - 1) / (kLanes * vec);
  using Values = std::vector<std::array<acc_t, vec>>;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t chunk = 0; chunk < p.chunks; ++chunk)
      for (int64_t cb = 0; cb < channel_blocks; ++cb) {
        std::vector<ChunkBlock> k(kThreads);
        Values first(kThreads), second(kThreads);
        for (int t = 0; t < kThreads; ++t) {
          k[t] = chunk_block<vec>(a, cb, chunk, b, t);
          acc_t v[vec], w[vec];
          if (grad) {
            chunk_grad_sums<vec>(a, k[t], v, w);
            to_array<vec>(w, second[t]);
          } else {
            chunk_sum<vec>(a, k[t], v);
          }
          to_array<vec>(v, first[t]);
        }
        column_sums<vec>(first);
        if (grad) {
          column_sums<vec>(second);
        } else {
          for (int t = 0; t < kThreads; ++t) {
            acc_t mean[vec], m2[vec];
            from_array<vec>(first[t], mean);
            for (int e = 0; e < vec; ++e) mean[e] /= static_cast<acc_t>(k[t].p1 - k[t].p0);
            to_array<vec>(mean, first[t]);
            chunk_m2<vec>(a, k[t], mean, m2);
            to_array<vec>(m2, second[t]);
          }
          column_sums<vec>(second);
        }
        for (int t = 0; t < kThreads; ++t) {
          acc_t v[vec], w[vec];
          from_array<vec>(first[t], v);
          from_array<vec>(second[t], w);
          chunk_store<vec>(a, k[t], v, w);
        }
      }
  for (int64_t bc = 0; bc < B * a.C; ++bc) grad ? combine_grad(a, bc) : combine_stats(a, bc);
  for (int64_t tile = 0; tile < a.tiling.tiles; ++tile)
    for (int t = 0; t < kThreads; ++t) grad ? pixels_grad_x<vec>(a, tile, t) : pixels_apply<vec>(a, tile, t);
}

template <bool grad, typename scalar_t>
void run(const NormTensors& t, const NormPlan& p) {
  const int64_t planes = t.x.size(0) * t.x.size(1);
  with_norm_args<scalar_t>(
      t, p,
      [&](const auto& a, auto vec, auto cached) {
        run_planes<grad, decltype(vec)::value, decltype(cached)::value>(a, planes);
      },
      [&](const auto& a, auto vec) { run_pixels<grad, decltype(vec)::value>(a, p, t.x); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulated_forward(const at::Tensor& x,
                                                                const std::optional<at::Tensor>& weight,
                                                                const std::optional<at::Tensor>& bias,
                                                                const std::optional<at::Tensor>& residual,
                                                                c10::string_view act_name, double eps,
                                                                bool wide_index) {
  check_norm_args(x, weight, bias, residual);
  check_cpu({x, weight.value_or(at::Tensor()), bias.value_or(at::Tensor()), residual.value_or(at::Tensor())});
  const Act act = parse_act(std::string(act_name));
  const int64_t B = x.size(0), C = x.size(1);
  const auto y = guarded_output(x.sizes(), x.options(), output_format(x));
  const auto acc = x.options().dtype(at::toOpMathType(x.scalar_type()));
  const auto mean = guarded_output({B, C}, acc, at::MemoryFormat::Contiguous);
  const auto rstd = guarded_output({B, C}, acc, at::MemoryFormat::Contiguous);
  const at::Tensor res = residual ? *residual : at::Tensor();
  std::vector<at::Tensor> maps{x};
  if (res.defined()) maps.push_back(res);
  const NormPlan plan = plan_norm(x, maps, wide_index, "instance_norm_act_residual");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "emulated_instance_norm", [&] {
    run<false, scalar_t>({x, weight, bias, res, {}, y.view, mean.view, rstd.view, {}, {}, act == Act::Relu, eps}, plan);
  });
  check_guards(y, "y");
  check_guards(mean, "mean");
  check_guards(rstd, "rstd");
  return {y.view, mean.view, rstd.view};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulated_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                 const at::Tensor& mean, const at::Tensor& rstd,
                                                                 const std::optional<at::Tensor>& weight,
                                                                 const std::optional<at::Tensor>& bias,
                                                                 c10::string_view act_name, bool wide_index) {
  check_norm_backward_args(grad, x, mean, rstd, weight, bias);
  check_cpu({grad, x, mean, rstd, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
  const Act act = parse_act(std::string(act_name));
  const int64_t B = x.size(0), C = x.size(1);
  const auto gx = guarded_output(x.sizes(), x.options(), output_format(x));
  const auto acc = x.options().dtype(at::toOpMathType(x.scalar_type()));
  const auto s1 = guarded_output({B, C}, acc, at::MemoryFormat::Contiguous);
  const auto s2 = guarded_output({B, C}, acc, at::MemoryFormat::Contiguous);
  const auto m = mean.contiguous(), rs = rstd.contiguous();
  const NormPlan plan = plan_norm(x, {x, grad}, wide_index, "instance_norm_act_residual_backward");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "emulated_instance_norm_backward", [&] {
    run<true, scalar_t>({x, weight, bias, {}, grad, gx.view, m, rs, s1.view, s2.view, act == Act::Relu, 0.0}, plan);
  });
  check_guards(gx, "grad x");
  check_guards(s1, "the sums of gz");
  check_guards(s2, "the sums of gz * xhat");
  const auto param_dtype = weight ? weight->scalar_type() : (bias ? bias->scalar_type() : x.scalar_type());
  return {gx.view, s2.view.sum(0).to(param_dtype), s1.view.sum(0).to(param_dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CPU, m) {
  m.impl("_emulated_cuda_instance_norm_act_residual", &emulated_forward);
  m.impl("_emulated_cuda_instance_norm_act_residual_backward", &emulated_backward);
}

}  // namespace ackd_fast
