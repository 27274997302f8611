// Input checks and output allocation shared by the CPU and CUDA kernels, so both reject bad input with the same
// message and lay out their outputs alike. TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as
// ValueError / TypeError.
#pragma once
#include <atomic>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

namespace ackd_fast {

constexpr int64_t kMaxSources = 4;  // DESIGN.md: 1 to 4 accumulated sources

// Tests set this (ackd_fast::set_poison_outputs) to fill every output with NaN before a kernel writes it, so an
// element a kernel forgets to write shows up.
inline std::atomic<bool> poison_outputs{false};

// channels_last when `t` is laid out so (and not also plain contiguous, as when C == 1), else contiguous.
// ackd_fast/ops.py states the same rule for the fake kernels.
inline at::MemoryFormat output_format(const at::Tensor& t) {
  const bool channels_last = t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  auto out = at::empty(sizes, options.memory_format(format));
  if (poison_outputs.load()) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

inline void check_map(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must have shape (B, C, H, W), got shape ", t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating point, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() > 0, op, ": ", name, " must not be empty, got shape ", t.sizes());
}

inline void check_like(const char* op, const std::string& name, const at::Tensor& t, const at::Tensor& like,
                       const char* like_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                   ", expected ", like.scalar_type(), " like ", like_name);
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " is on ", t.device(), ", expected ", like.device(),
                    " like ", like_name);
}

inline void check_param(const char* op, const char* name, const at::Tensor& t, int64_t size, const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, op, ": ", name, " has shape ", t.sizes(), ", expected (",
                    size, ",)");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating point, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " is on ", t.device(), ", expected ", like.device());
}

// sources: 1 to 4 maps (B, C, H_j, W_j) of one batch, channel count, dtype and device; one weight per source.
inline void check_accumulate_args(at::TensorList sources, const at::Tensor& weights, at::IntArrayRef size) {
  constexpr const char* op = "ack_accumulate";
  const auto n = static_cast<int64_t>(sources.size());
  TORCH_CHECK_VALUE(n >= 1 && n <= kMaxSources, op, ": sources must hold 1 to ", kMaxSources, " maps, got ", n);
  check_map(op, "sources[0]", sources[0]);
  for (int64_t j = 1; j < n; ++j) {
    const auto name = "sources[" + std::to_string(j) + "]";
    check_map(op, name.c_str(), sources[j]);
    check_like(op, name, sources[j], sources[0], "sources[0]");
    TORCH_CHECK_VALUE(sources[j].size(0) == sources[0].size(0) && sources[j].size(1) == sources[0].size(1), op, ": ",
                      name, " has shape ", sources[j].sizes(), ", expected batch ", sources[0].size(0),
                      " and channels ", sources[0].size(1), " like sources[0] (align channels before accumulating)");
  }
  check_param(op, "weights", weights, n, sources[0]);
  TORCH_CHECK_VALUE(size.size() == 2 && size[0] > 0 && size[1] > 0, op, ": size must be two positive ints (H, W), got ",
                    size);
}

// grad: the gradient of the forward's output (B, C, H, W), so of sources[0]'s batch, channels, dtype and device.
inline void check_accumulate_backward_args(const at::Tensor& grad, at::TensorList sources, const at::Tensor& weights) {
  constexpr const char* op = "ack_accumulate_backward";
  check_map(op, "grad", grad);
  check_accumulate_args(sources, weights, grad.sizes().slice(2));
  check_like(op, "grad", grad, sources[0], "sources[0]");
  TORCH_CHECK_VALUE(grad.size(0) == sources[0].size(0) && grad.size(1) == sources[0].size(1), op, ": grad has shape ",
                    grad.sizes(), ", expected batch ", sources[0].size(0), " and channels ", sources[0].size(1),
                    " like sources[0]");
}

inline void check_norm_args(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "instance_norm_act_residual";
  check_map(op, "x", x);
  if (weight) check_param(op, "weight", *weight, x.size(1), x);
  if (bias) check_param(op, "bias", *bias, x.size(1), x);
  if (residual) {
    TORCH_CHECK_VALUE(residual->sizes() == x.sizes(), op, ": residual has shape ", residual->sizes(), ", expected ",
                      x.sizes(), " like x");
    check_like(op, "residual", *residual, x, "x");
  }
}

// grad: like x; mean, rstd: the forward's statistics, (B, C) in x's accumulation type (fp32 for fp16/bf16).
inline void check_norm_backward_args(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                     const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                                     const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "instance_norm_act_residual_backward";
  check_norm_args(x, weight, bias, std::nullopt);
  check_map(op, "grad", grad);
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes(), op, ": grad has shape ", grad.sizes(), ", expected ", x.sizes(),
                    " like x");
  check_like(op, "grad", grad, x, "x");
  const auto stats_dtype = at::toOpMathType(x.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"mean", mean}, {"rstd", rstd}}) {
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(1), op, ": ", name,
                      " has shape ", t.sizes(), ", expected (", x.size(0), ", ", x.size(1), ") (batch, channels of x)");
    TORCH_CHECK_TYPE(t.scalar_type() == stats_dtype, op, ": ", name, " has dtype ", t.scalar_type(), ", expected ",
                     stats_dtype, " (the accumulation type of x)");
    TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), ", expected ", x.device(),
                      " like x");
  }
}

inline bool is_reduced_float(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

enum class Act { None, Relu };

inline Act parse_act(const std::string& act) {
  if (act == "relu") return Act::Relu;
  if (act == "none") return Act::None;
  TORCH_CHECK_VALUE(false, "instance_norm_act_residual: act must be one of 'relu', 'none', got '", act, "'");
}

}  // namespace ackd_fast
