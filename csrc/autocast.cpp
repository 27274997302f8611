// Autocast kernels of the ACK-F ops, registered as torchvision registers its ops' (AutocastCPU / AutocastCUDA).
//
// Under torch.autocast the inputs of one op may arrive in different dtypes: an align conv makes one source bf16
// beside an fp32 one, a bf16 conv output meets an fp32 skip path. These ops follow autocast's "promote" rule, as
// torch.cat and torch.stack do: the inputs that must share a dtype (the sources of ack_accumulate; x and residual of
// instance_norm_act_residual) are cast to the widest floating dtype among them, then the op runs with autocast off.
// Parameters (the accumulation weights, the norm's weight and bias) keep their dtype: the kernels read them in their
// accumulation type. The casts are ordinary differentiable ops, so gradients reach each input in its own dtype.
// The backward ops have no autocast kernel (they run on what the forward saved, already of one dtype).
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "op_handles.h"

namespace ackd_fast {
namespace {

// The widest floating dtype among the defined floating tensors of `ts`, or nullopt when there are none.
std::optional<at::ScalarType> widest(const std::vector<at::Tensor>& ts) {
  std::optional<at::ScalarType> out;
  for (const auto& t : ts) {
    if (!t.defined() || !t.is_floating_point()) continue;
    out = out ? at::promote_types(*out, t.scalar_type()) : t.scalar_type();
  }
  return out;
}

at::Tensor cast_to(const at::Tensor& t, std::optional<at::ScalarType> dtype) {
  return dtype && t.defined() && t.is_floating_point() && t.scalar_type() != *dtype ? t.to(*dtype) : t;
}

at::Tensor ack_accumulate_autocast(at::TensorList sources, const at::Tensor& weights, at::IntArrayRef size,
                                   c10::string_view mode) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto dtype = widest(sources.vec());
  std::vector<at::Tensor> cast;
  for (const auto& a : sources) cast.push_back(cast_to(a, dtype));
  return accumulate_op().call(cast, weights, size, mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_residual_autocast(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, c10::string_view act, double eps) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto dtype = widest({x, residual.value_or(at::Tensor())});
  const auto cast_residual = residual ? std::optional<at::Tensor>(cast_to(*residual, dtype)) : std::nullopt;
  return norm_op().call(cast_to(x, dtype), weight, bias, cast_residual, act, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, AutocastCPU, m) {
  m.impl("ack_accumulate", &ack_accumulate_autocast);
  m.impl("instance_norm_act_residual", &instance_norm_act_residual_autocast);
}

TORCH_LIBRARY_IMPL(ackd_fast, AutocastCUDA, m) {
  m.impl("ack_accumulate", &ack_accumulate_autocast);
  m.impl("instance_norm_act_residual", &instance_norm_act_residual_autocast);
}

}  // namespace ackd_fast
