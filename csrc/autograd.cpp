// Autograd kernels of the ACK-F ops, registered as torchvision registers its ops' (the Autograd key, a
// torch::autograd::Function per op). The forward redispatches below autograd to the CPU/CUDA kernel; the backward
// calls the backward op through the dispatcher, so torch.compile and opcheck see it as an op of its own.
//
// Why C++ and not torch.library.register_autograd: an eager call then never leaves C++ between the Python call and
// the kernel. Through the Python registration each forward+backward cost about 100 us more host time on 2 CPU
// cores (benchmarks/host_overhead_cpu.py), more than the kernels take at the paper's sizes on a GPU.
//
// Under autocast the Autocast kernels (autocast.cpp) run first and call these with inputs of one dtype.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "op_handles.h"

namespace ackd_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class AccumulateFunction : public torch::autograd::Function<AccumulateFunction> {
 public:
  // Gradients come back for every source and the weights, in that order, then none for size and mode.
  static at::Tensor forward(AutogradContext* ctx, at::TensorList sources, const at::Tensor& weights,
                            at::IntArrayRef size, c10::string_view mode) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    variable_list saved{weights};
    saved.insert(saved.end(), sources.begin(), sources.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["mode"] = std::string(mode);
    return accumulate_op().call(sources, weights, size, mode);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const variable_list sources(saved.begin() + 1, saved.end());
    auto [grad_sources, grad_weights] =
        accumulate_backward_op().call(grads[0], sources, saved[0], ctx->saved_data["mode"].toStringRef());
    variable_list out(grad_sources.begin(), grad_sources.end());
    out.push_back(grad_weights);
    out.resize(out.size() + 2);  // size, mode
    return out;
  }
};

class NormFunction : public torch::autograd::Function<NormFunction> {
 public:
  // Outputs (y, mean, rstd); mean and rstd are not differentiable. Gradients for x, weight, bias and residual
  // (none for an absent one), then none for act and eps.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptionalTensor& weight,
                               const OptionalTensor& bias, const OptionalTensor& residual, c10::string_view act,
                               double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, rstd] = norm_op().call(x, weight, bias, residual, act, eps);
    ctx->mark_non_differentiable({mean, rstd});
    ctx->save_for_backward({x, mean, rstd, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->saved_data["act"] = std::string(act);
    ctx->saved_data["has_residual"] = residual.has_value() && residual->defined();
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &mean = saved[1], &rstd = saved[2], &weight = saved[3], &bias = saved[4];
    const auto param = [](const at::Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; };
    auto [grad_x, grad_weight, grad_bias] =
        norm_backward_op().call(grads[0], x, mean, rstd, param(weight), param(bias),
                                ctx->saved_data["act"].toStringRef());
    return {grad_x,
            weight.defined() ? grad_weight : at::Tensor(),
            bias.defined() ? grad_bias : at::Tensor(),
            ctx->saved_data["has_residual"].toBool() ? grads[0] : at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor ack_accumulate_autograd(at::TensorList sources, const at::Tensor& weights, at::IntArrayRef size,
                                   c10::string_view mode) {
  return AccumulateFunction::apply(sources, weights, size, mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_autograd(
    const at::Tensor& x, const OptionalTensor& weight, const OptionalTensor& bias, const OptionalTensor& residual,
    c10::string_view act, double eps) {
  const auto out = NormFunction::apply(x, weight, bias, residual, act, eps);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, Autograd, m) {
  m.impl("ack_accumulate", &ack_accumulate_autograd);
  m.impl("instance_norm_act_residual", &instance_norm_act_residual_autograd);
}

}  // namespace ackd_fast
