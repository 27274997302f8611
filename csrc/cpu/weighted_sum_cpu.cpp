#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../checks.h"

namespace ackd_fast {
namespace {

template <typename scalar_t>
void weighted_sum_kernel(const std::vector<at::Tensor>& inputs, const at::Tensor& weights, at::Tensor& out) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t n = static_cast<int64_t>(inputs.size());
  const scalar_t* src[kMaxSources];
  scalar_t w[kMaxSources];
  for (int64_t j = 0; j < n; ++j) {
    src[j] = inputs[j].const_data_ptr<scalar_t>();
    w[j] = weights[j].item<scalar_t>();
  }
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, out.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + Vec::size() <= end; i += Vec::size()) {
      Vec acc = Vec::loadu(src[0] + i) * Vec(w[0]);
      for (int64_t j = 1; j < n; ++j) acc = at::vec::fmadd(Vec::loadu(src[j] + i), Vec(w[j]), acc);
      acc.store(dst + i);
    }
    for (; i < end; ++i) {
      scalar_t acc = src[0][i] * w[0];
      for (int64_t j = 1; j < n; ++j) acc += src[j][i] * w[j];
      dst[i] = acc;
    }
  });
}

at::Tensor weighted_sum_cpu(at::TensorList inputs, const at::Tensor& weights) {
  check_weighted_sum_args(inputs, weights);
  const auto format = output_format(inputs[0]);
  // Every input in the output's layout, so one flat index addresses the same element in all of them.
  std::vector<at::Tensor> dense;
  for (const auto& t : inputs) dense.push_back(t.contiguous(format));
  auto out = at::empty(inputs[0].sizes(), inputs[0].options().memory_format(format));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "weighted_sum_cpu",
                             [&] { weighted_sum_kernel<scalar_t>(dense, weights.contiguous(), out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CPU, m) { m.impl("weighted_sum", &weighted_sum_cpu); }

}  // namespace ackd_fast
