// The operator library: every schema of ackd_fast._C is declared here, once.
// Kernels register against these schemas from cpu/ and cuda/ (torchvision style: each backward is an op of its own);
// autograd.cpp gives the ACK-F forward ops their autograd and autocast.cpp their autocast kernels; Python reaches them
// only through the dispatcher (torch.ops.ackd_fast.*) and adds the fake kernels (ackd_fast/ops/fusion.py), so
// torch.compile, opcheck and export see ordinary ops.
#include <Python.h>
#include <torch/library.h>

#include "checks.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace ackd_fast {

// CUDA runtime version the library was compiled against, or -1 for a CPU-only build.
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDART_VERSION;
#else
  return -1;
#endif
}

bool set_poison_outputs(bool enabled) { return poison_outputs.exchange(enabled); }

TORCH_LIBRARY(ackd_fast, m) {
  m.def("cuda_version() -> int", &cuda_version);
  // Test hook: fill outputs with NaN before kernels write them. Returns the previous setting.
  m.def("set_poison_outputs(bool enabled) -> bool", &set_poison_outputs);

  // acc = sum_j weights[j] * resize(sources[j] -> size), mode "bilinear" | "nearest" | "area".
  m.def("ack_accumulate(Tensor[] sources, Tensor weights, int[2] size, str mode) -> Tensor");
  // -> (grad of each source, grad of weights)
  m.def("ack_accumulate_backward(Tensor grad, Tensor[] sources, Tensor weights, str mode) -> (Tensor[], Tensor)");

  // Tests only (cpu/accumulate_emulated.cpp): the two ops above through the CUDA kernels' code, run on the CPU.
  // grid: the backward's blocks (0: one per tile); wide_index: int64 offsets; weight_table=False: the reader tables
  // without weights, as for extreme resize ratios.
  m.def("_emulated_cuda_ack_accumulate(Tensor[] sources, Tensor weights, int[2] size, str mode, bool wide_index=False)"
        " -> Tensor");
  m.def(
      "_emulated_cuda_ack_accumulate_backward(Tensor grad, Tensor[] sources, Tensor weights, str mode, int grid=0,"
      " bool wide_index=False, bool weight_table=True) -> (Tensor[], Tensor)");

  // y = act(instance_norm(x) * weight + bias) + residual, act "relu" | "none"; also returns the per-(sample, channel)
  // mean and 1/std that the backward needs.
  m.def(
      "instance_norm_act_residual(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, str act, float eps)"
      " -> (Tensor, Tensor, Tensor)");
  // -> (grad x, grad weight, grad bias); the residual's gradient is grad itself. Weight/bias grads are computed
  // as if weight = 1 and bias = 0 when they are absent.
  m.def(
      "instance_norm_act_residual_backward(Tensor grad, Tensor x, Tensor mean, Tensor rstd, Tensor? weight,"
      " Tensor? bias, str act) -> (Tensor, Tensor, Tensor)");

  // Tests only (cpu/norm_emulated.cpp): the two ops above through the CUDA kernels' code, run on the CPU;
  // wide_index: int64 offsets on the channels_last path.
  m.def(
      "_emulated_cuda_instance_norm_act_residual(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, str act,"
      " float eps, bool wide_index=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_emulated_cuda_instance_norm_act_residual_backward(Tensor grad, Tensor x, Tensor mean, Tensor rstd,"
      " Tensor? weight, Tensor? bias, str act, bool wide_index=False) -> (Tensor, Tensor, Tensor)");

  // Inference only (ackd_fast.deploy, CPU): a whole MobileResnetBlock, x + IN(pw2(IN(dw2(pad(relu(IN(pw1(IN(dw1(
  // pad(x))))))))))), without the convs' biases (each feeds an instance norm, which removes them); dw: (C, 1, 3, 3),
  // pw: (C, C, 1, 1).
  m.def("mobile_block(Tensor x, Tensor dw1, Tensor pw1, Tensor dw2, Tensor pw2, float eps) -> Tensor");
  // act(conv2d(reflection_pad2d(x, reflect_pad), weight, bias)), stride 1, 1 to 4 output channels; act "tanh" |
  // "none"; x in any layout, the output contiguous.
  m.def("narrow_conv2d(Tensor x, Tensor weight, Tensor? bias, str act, int reflect_pad=0) -> Tensor");
}

}  // namespace ackd_fast

// The module holds no Python functions: importing it runs the static registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
