// Typed dispatcher handles of the ACK-F ops, for the kernels that call an op through the dispatcher again
// (autocast.cpp after its casts, autograd.cpp below autograd and for the backward ops). Signatures as the schemas in
// ackd_fast.cpp declare them.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>
#include <vector>

namespace ackd_fast {

using OptionalTensor = std::optional<at::Tensor>;
using AccumulateSignature = at::Tensor(at::TensorList, const at::Tensor&, at::IntArrayRef, c10::string_view);
using AccumulateBackwardSignature =
    std::tuple<std::vector<at::Tensor>, at::Tensor>(const at::Tensor&, at::TensorList, const at::Tensor&,
                                                    c10::string_view);
using NormSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const OptionalTensor&,
                                                                     const OptionalTensor&, const OptionalTensor&,
                                                                     c10::string_view, double);
using NormBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptionalTensor&,
    const OptionalTensor&, c10::string_view);

// The handle of op `name`; the accessors below look each op up once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

inline const c10::TypedOperatorHandle<AccumulateSignature>& accumulate_op() {
  static const auto op = find_op<AccumulateSignature>("ackd_fast::ack_accumulate");
  return op;
}

inline const c10::TypedOperatorHandle<AccumulateBackwardSignature>& accumulate_backward_op() {
  static const auto op = find_op<AccumulateBackwardSignature>("ackd_fast::ack_accumulate_backward");
  return op;
}

inline const c10::TypedOperatorHandle<NormSignature>& norm_op() {
  static const auto op = find_op<NormSignature>("ackd_fast::instance_norm_act_residual");
  return op;
}

inline const c10::TypedOperatorHandle<NormBackwardSignature>& norm_backward_op() {
  static const auto op = find_op<NormBackwardSignature>("ackd_fast::instance_norm_act_residual_backward");
  return op;
}

}  // namespace ackd_fast
