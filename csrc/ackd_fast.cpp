// The operator library: every schema of ackd_fast._C is declared here, once.
// Kernels register against these schemas from cpu/ and cuda/; Python reaches them only through the
// dispatcher (torch.ops.ackd_fast.*), so torch.compile, opcheck and export see ordinary ops.
#include <Python.h>
#include <torch/library.h>

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

TORCH_LIBRARY(ackd_fast, m) {
  m.def("cuda_version() -> int", &cuda_version);
  // out = sum_j weights[j] * inputs[j]; 1 to kMaxSources inputs of one shape, dtype and device.
  m.def("weighted_sum(Tensor[] inputs, Tensor weights) -> Tensor");
}

}  // namespace ackd_fast

// The module holds no Python functions: importing it runs the static registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
