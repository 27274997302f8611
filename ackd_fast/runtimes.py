"""Other runtimes a generator can run on, as torch callables: its ONNX export under onnxruntime or OpenVINO (the
[onnx] and [openvino] extras). `ackd_fast.deploy` takes OpenVINO where it is faster; `ackd_fast.bench` times both
beside the other paths."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ackd_fast.errors import optional_import


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def onnx_export(model: nn.Module, example: Tensor, path: str) -> None:
    """`model` to ONNX at `path` by torch.onnx.export(dynamo=True), on the CPU in float32 (what both ONNX runtimes
    read)."""
    for module in ("onnx", "onnxscript"):
        optional_import(module, "the ONNX export")
    with torch.no_grad():
        torch.onnx.export(model, (example,), path, dynamo=True, verbose=False)


def onnxruntime_session(model: nn.Module, example: Tensor) -> Callable[[Tensor], Tensor]:
    """`model` exported to ONNX and run by onnxruntime with its full graph optimisation and torch's thread count,
    as a callable on float32 tensors (onnxruntime's CUDA provider when it has one and the example is on CUDA)."""
    onnxruntime = optional_import("onnxruntime", "the onnxruntime path")

    device = example.device
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError("this onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)")
        providers.insert(0, "CUDAExecutionProvider")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx_export(model, example, path)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(path, options, providers=providers)
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0]).to(device)

    return run


def openvino_model(model: nn.Module, example: Tensor) -> Callable[[Tensor], Tensor]:
    """`model` exported to ONNX and compiled by OpenVINO for the CPU, in f32 (INFERENCE_PRECISION_HINT: OpenVINO
    would otherwise run bf16 on CPUs that have it) with torch's thread count and the latency hint, as a callable on
    CPU float32 tensors returning a tensor of its own."""
    ov = optional_import("openvino", "the OpenVINO path")
    if example.device.type != "cpu" or example.dtype != torch.float32:
        raise RuntimeError(f"the OpenVINO path runs float32 on the CPU here; the example is {example.dtype} on "
                           f"{example.device}")  # fmt: skip
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(torch.get_num_threads()),
              "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx_export(model, example, path)
        compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: Tensor) -> Tensor:
        request.infer({0: x.detach().contiguous().numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    run.request = request  # its profiling counters, for the closing note's profiles
    return run
