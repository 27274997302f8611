"""A compiled fast path for a trained generator: `deploy(generator, example_input)` returns a callable for inputs
like the example (its device, dtype and shape; another shape compiles again) that computes what the generator
computes in eval mode, within 1e-4 in fp32.

What runs (the callable's `.method` says it, and `deploy` checks it against the eager generator before returning):
- CPU: the generator rewritten for inference, then inductor with weight freezing on channels_last maps. The
  rewrite swaps in C++ ops where inductor and oneDNN leave time: each MobileResnetBlock becomes
  `ackd_fast::mobile_block` (depthwise 3x3 with its statistics in one sweep, pointwise GEMM with the norm folded
  into its weights, norm and ReLU applied as the next depthwise reads, residual: 7 passes over the map); each
  other plain instance norm (+ ReLU) becomes `ackd_fast::instance_norm_act_residual`, whose channels_last kernel
  sums in registers over row chunks of the image (inductor's Welford reduction took 3-6x longer on these maps); the
  head's reflection pad, few-channel 7x7 conv and tanh become `ackd_fast::narrow_conv2d`, which oneDNN runs at a
  few GMAC/s. The kernels are float32/float64; other dtypes run inductor alone (`method` says so).
- CPU, float32, OpenVINO installed: "auto" builds the path above and "openvino" (the generator exported to ONNX and
  compiled by OpenVINO, f32) and keeps the one that runs the example faster, timed in turns.
- CUDA: inductor with freezing, max-autotune and CUDA graphs on channels_last maps; fp32 runs without TF32.

`method=` picks a path by name instead of "auto"; a path that cannot run raises rather than falling back.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ackd_fast import ops
from ackd_fast.checkpoint import write_atomic
from ackd_fast.errors import optional_import
from ackd_fast.models.mobile_resnet import MobileResnetBlock, SeparableConv2d

# "kernels+inductor": CPU only; "kernels": the rewritten model without compiling (fast to set up; for tests and for
# measuring what the kernels alone give); "inductor": the unmodified model, compiled; "openvino": the model exported to
# ONNX and compiled by OpenVINO (CPU, float32; the [openvino] extra).
METHODS = ("auto", "kernels+inductor", "inductor", "kernels", "openvino")
AUTO_TIMING_ROUNDS = 5  # calls of each candidate when "auto" measures which runs faster
KERNEL_DTYPES = (torch.float32, torch.float64)
MAX_NARROW_OUT = 4  # narrow_conv2d's output channels (csrc/cpu/deploy_cpu.cpp)
# The fast path's largest allowed difference from the eager generator on the example, relative to the output's
# scale (max(1, max |y|)); half types are recorded, not checked: their eager path rounds differently.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


# ------------------------------------------------------------------------------------------- the inference ops


def _output_format(x: Tensor) -> torch.memory_format:
    return ops._output_format(x)


if ops.EXTENSION_LOADED and hasattr(torch.ops.ackd_fast, "mobile_block"):

    @torch.library.register_fake("ackd_fast::mobile_block")
    def _mobile_block_fake(x, dw1, pw1, dw2, pw2, eps):
        return torch.empty_like(x, memory_format=_output_format(x))

    @torch.library.register_fake("ackd_fast::narrow_conv2d")
    def _narrow_conv2d_fake(x, weight, bias, act, reflect_pad=0):
        h, w = (x.shape[i] + 2 * reflect_pad - weight.shape[i] + 1 for i in (2, 3))
        return x.new_empty((x.shape[0], weight.shape[0], h, w))


def kernels_available() -> str | None:
    """Why the inference kernels cannot run, or None when they can."""
    if not ops.EXTENSION_LOADED:
        return f"the C++ extension ackd_fast._C did not load ({ops.EXTENSION_ERROR})"
    if not hasattr(torch.ops.ackd_fast, "mobile_block"):
        return "ackd_fast._C was built without the inference kernels (rebuild it)"
    return None


class FusedMobileBlock(nn.Module):
    """A MobileResnetBlock as one `ackd_fast::mobile_block` call. The convs' biases are left out: each conv feeds an
    instance norm, which subtracts any per-channel constant."""

    def __init__(self, block: MobileResnetBlock, eps: float):
        super().__init__()
        first, second = block.body[1], block.body[5]
        self.eps = eps
        for name, conv in (("dw1", first[0]), ("pw1", first[2]), ("dw2", second[0]), ("pw2", second[2])):
            self.register_buffer(name, conv.weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        # channels_last, the kernel's own layout: said here, inductor writes it directly (else it copies per call)
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.ops.ackd_fast.mobile_block(x, self.dw1, self.pw1, self.dw2, self.pw2, self.eps)


class NarrowConv2d(nn.Module):
    """act(conv2d(reflection_pad2d(x, pad), weight, bias)) for a stride-1, unpadded conv with 1 to 4 output channels,
    by `ackd_fast::narrow_conv2d` (which pads and reads channels_last maps itself)."""

    def __init__(self, conv: nn.Conv2d, act: str, pad: int = 0):
        super().__init__()
        self.act, self.pad = act, pad
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.ackd_fast.narrow_conv2d(x, self.weight, self.bias, self.act, self.pad)


def _plain_norm_eps(m: nn.Module) -> float | None:
    """eps of an InstanceNorm2d that only normalizes (no affine, no running statistics), else None."""
    plain = isinstance(m, nn.InstanceNorm2d) and not m.affine and not m.track_running_stats
    return m.eps if plain else None


def _block_eps(block: MobileResnetBlock) -> float | None:
    """The eps of a MobileResnetBlock whose layout is the one mobile_block computes, else None."""
    body = list(block.body)
    kinds = [nn.ReflectionPad2d, SeparableConv2d, nn.InstanceNorm2d, nn.ReLU, nn.ReflectionPad2d, SeparableConv2d,
             nn.InstanceNorm2d]  # fmt: skip
    if len(body) != len(kinds) or not all(type(m) is k for m, k in zip(body, kinds, strict=True)):
        return None
    if any(tuple(body[i].padding) != (1, 1, 1, 1) for i in (0, 4)):
        return None
    norms = [body[2], body[6], body[1][1], body[5][1]]
    eps = {_plain_norm_eps(n) for n in norms}
    if len(eps) != 1 or None in eps:
        return None
    channels = body[1][0].in_channels
    for sep in (body[1], body[5]):
        dw, pw = sep[0], sep[2]
        dw_ok = dw.kernel_size == (3, 3) and dw.groups == channels == dw.out_channels and dw.padding == (0, 0)
        pw_ok = pw.kernel_size == (1, 1) and pw.in_channels == pw.out_channels == channels and pw.groups == 1
        if not (dw_ok and pw_ok and dw.stride == pw.stride == (1, 1) and dw.dilation == (1, 1)):
            return None
    return eps.pop()


def _even_reflect_pad(m: nn.Module | None) -> int | None:
    """p of a ReflectionPad2d that pads every side by p, else None."""
    if type(m) is not nn.ReflectionPad2d or len(set(m.padding)) != 1:
        return None
    return m.padding[0]


def _is_narrow_conv(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.out_channels <= MAX_NARROW_OUT
        and m.groups == 1
        and m.stride == (1, 1)
        and m.dilation == (1, 1)
        and m.padding == (0, 0)
    )


class FusedInstanceNorm(nn.Module):
    """A plain InstanceNorm2d (and the ReLU after it) as one `ackd_fast::instance_norm_act_residual` call: its CPU
    kernel sums channels_last maps in registers over row chunks, where inductor's Welford reduction took 3-6x
    longer on the generators' maps."""

    def __init__(self, eps: float, act: str):
        super().__init__()
        self.eps, self.act = eps, act

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.ackd_fast.instance_norm_act_residual(x, None, None, None, self.act, self.eps)[0]


def with_kernels(generator: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A copy of `generator` whose MobileResnetBlocks, plain instance norms (+ ReLU) and few-channel output convs
    (with the reflection pad before and the tanh after) run the inference kernels, and how many of each it swapped
    ({"mobile_block": n, "instance_norm": k, "narrow_conv2d": m}). A module whose layout the kernels do not compute
    exactly is left as it is."""
    model = copy.deepcopy(generator).eval()
    counts = {"mobile_block": 0, "instance_norm": 0, "narrow_conv2d": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MobileResnetBlock) and (eps := _block_eps(child)) is not None:
                setattr(parent, name, FusedMobileBlock(child, eps))
                counts["mobile_block"] += 1
    # the fused blocks' own norms and convs are gone from the tree by now: what is left is outside them
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent)
        for i, child in enumerate(children):
            after = children[i + 1] if i + 1 < len(children) else None
            if (eps := _plain_norm_eps(child)) is not None:
                relu_next = type(after) is nn.ReLU
                parent[i] = FusedInstanceNorm(eps, "relu" if relu_next else "none")
                if relu_next:
                    parent[i + 1] = nn.Identity()
                counts["instance_norm"] += 1
            elif _is_narrow_conv(child):
                tanh_next = type(after) is nn.Tanh
                before = children[i - 1] if i > 0 else None
                pad = _even_reflect_pad(before)
                parent[i] = NarrowConv2d(child, "tanh" if tanh_next else "none", pad or 0)
                if pad is not None:
                    parent[i - 1] = nn.Identity()
                if tanh_next:
                    parent[i + 1] = nn.Identity()
                counts["narrow_conv2d"] += 1
    return model, counts


# ---------------------------------------------------------------------------------------------------- deploy


@contextlib.contextmanager
def ieee_fp32(device: torch.device):
    """fp32 convolutions and matmuls in full precision on CUDA (cuDNN's default for convolutions is TF32)."""
    if device.type != "cuda":
        yield
        return
    knobs = [torch.backends.cudnn.conv, torch.backends.cuda.matmul]
    saved = [k.fp32_precision for k in knobs]
    try:
        for k in knobs:
            k.fp32_precision = "ieee"
        yield
    finally:
        for k, s in zip(knobs, saved, strict=True):
            k.fp32_precision = s


class DeployedGenerator:
    """The callable `deploy` returns: f(x) -> y for x of the example's device and dtype and (B, C, H, W) with the
    example's C. Attributes: method (what runs), fused (the kernels swapped in), device, dtype, example_shape,
    setup_seconds, max_abs_diff (from the eager generator, on the example)."""

    def __init__(self, run: Callable[[Tensor], Tensor], method: str, fused: dict[str, int], example: Tensor,
                 channels_last: bool, cuda_graphs: bool, inductor_config: dict):  # fmt: skip
        self._run = run
        self._inductor_config = inductor_config
        self.method = method
        self.fused = fused
        self.device, self.dtype = example.device, example.dtype
        self.example_shape = tuple(example.shape)
        self._channels_last = channels_last
        self._cuda_graphs = cuda_graphs
        self.setup_seconds = 0.0
        self.max_abs_diff = float("nan")

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.device != self.device or x.dtype != self.dtype:
            raise ValueError(
                f"x is {x.dtype} on {x.device}; this deployment runs {self.dtype} on {self.device} (deploy again "
                "with an example of that kind)"
            )
        if x.dim() != 4 or x.shape[1] != self.example_shape[1]:
            raise ValueError(f"x must have shape (B, {self.example_shape[1]}, H, W), got {tuple(x.shape)}")
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # inductor's settings for the compiles a call may start (the first; another shape): torch.compile's
        # `options=` does not reach freezing, which is read when the graph is compiled
        with torch.no_grad(), ieee_fp32(self.device), torch._inductor.config.patch(self._inductor_config):
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
                return self._run(x).clone()  # CUDA graphs reuse their output buffer on the next call
            return self._run(x)

    def __repr__(self) -> str:
        return (
            f"DeployedGenerator({self.method}; {self.dtype} on {self.device}, example {self.example_shape}, "
            f"max |diff| from eager {self.max_abs_diff:.2g})"
        )


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _resolve(method: str, device: torch.device, dtype: torch.dtype) -> str:
    unavailable = kernels_available()
    if method == "auto":
        usable = device.type == "cpu" and dtype in KERNEL_DTYPES and unavailable is None
        return "kernels+inductor" if usable else "inductor"
    if method == "openvino":
        if device.type != "cpu" or dtype != torch.float32:
            raise ValueError(f"method 'openvino' runs float32 on the CPU; the example is {dtype} on {device}")
        optional_import("openvino", "method 'openvino'")
    if "kernels" in method:
        if device.type != "cpu":
            raise ValueError(f"method {method!r} runs the CPU inference kernels; the example is on {device}")
        if dtype not in KERNEL_DTYPES:
            raise TypeError(f"method {method!r} runs float32/float64 kernels; the example is {dtype}")
        if unavailable:
            raise RuntimeError(f"method {method!r} cannot run: {unavailable}")
    return method


class _OpenVINOShapes:
    """OpenVINO's compiled model per input shape (each exported and compiled at its first call, as inductor
    recompiles for a new shape)."""

    def __init__(self, model: nn.Module):
        self.model, self.compiled = model, {}

    def __call__(self, x: Tensor) -> Tensor:
        key = tuple(x.shape)
        if key not in self.compiled:
            self.compiled[key] = openvino_model(self.model, x)
        return self.compiled[key](x)


def _deploy_openvino(generator: nn.Module, example: Tensor, verify: bool, t0: float) -> DeployedGenerator:
    eager = copy.deepcopy(generator).float().eval().requires_grad_(False)
    deployed = DeployedGenerator(_OpenVINOShapes(eager), "openvino (ONNX export, f32 precision hint)", {}, example,
                                 channels_last=False, cuda_graphs=False, inductor_config={})  # fmt: skip
    with torch.no_grad():
        y = deployed(example)
        deployed.setup_seconds = time.perf_counter() - t0
        if verify:
            expected = eager(example)
            deployed.max_abs_diff = (y - expected).abs().max().item()
            scale = max(1.0, expected.abs().max().item())
            if not deployed.max_abs_diff <= TOLERANCE[torch.float32] * scale:
                raise RuntimeError(
                    f"deploy: OpenVINO differs from the eager generator by {deployed.max_abs_diff:.3g} on "
                    f"example_input (allowed {TOLERANCE[torch.float32] * scale:.3g})"
                )
    return deployed


def deploy(
    generator: nn.Module, example_input: Tensor, *, method: str = "auto", verify: bool = True
) -> DeployedGenerator:
    """A compiled fast path for `generator` (in eval mode) on inputs like `example_input` (measured figures: README).

    generator: an nn.Module mapping (B, C, H, W) to images (ackd_fast's generators, or any other); it is copied,
        cast to the example's device and dtype, and left untouched.
    example_input: a floating-point (B, C, H, W) tensor on the device, in the dtype and of the shape to serve.
    method: "auto" (the module docstring), or one of "kernels+inductor", "inductor", "kernels", "openvino" to force
        a path.
    verify: compare with the eager generator on the example and raise when float32/float64 results differ by more
        than 1e-4 / 1e-10 of the output's scale (the difference is kept in `.max_abs_diff` either way).

    Compiling takes about a minute on a 2-core CPU (the first call would otherwise pay it): deploy does it now.
    """
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be an nn.Module, got {type(generator).__name__}")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a Tensor of shape (B, C, H, W), got {type(example_input).__name__}")
    if not example_input.is_floating_point():
        raise TypeError(f"example_input must be floating point, got dtype {example_input.dtype}")
    if example_input.dim() != 4 or example_input.numel() == 0:
        raise ValueError(f"example_input must be a non-empty (B, C, H, W), got shape {tuple(example_input.shape)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    device, dtype = example_input.device, example_input.dtype
    asked = method
    method = _resolve(method, device, dtype)
    t0 = time.perf_counter()
    if asked == "auto" and device.type == "cpu" and dtype == torch.float32 and openvino_available():
        # two candidates on a CPU: ours and OpenVINO's; the one that runs the example faster is kept
        ours = deploy(generator, example_input, method=method, verify=verify)
        theirs = deploy(generator, example_input, method="openvino", verify=verify)
        seconds = time_paths({"ours": ours, "openvino": theirs}, example_input, AUTO_TIMING_ROUNDS)
        best = theirs if seconds["openvino"] < seconds["ours"] else ours
        best.method = (f"{best.method} (auto: {seconds['ours'] * 1e3:.3g} ms {ours.method.split(' (')[0]}, "
                       f"{seconds['openvino'] * 1e3:.3g} ms OpenVINO on the example)")  # fmt: skip
        best.setup_seconds = time.perf_counter() - t0
        return best
    if method == "openvino":
        return _deploy_openvino(generator, example_input, verify, t0)

    eager = copy.deepcopy(generator).to(device=device, dtype=dtype).eval().requires_grad_(False)
    model, fused = with_kernels(eager) if "kernels" in method else (eager, {})
    model = model.to(memory_format=torch.channels_last)
    cuda_graphs = device.type == "cuda"
    options = {}
    if method == "kernels":
        run, described = model, "eager"
    else:
        options = {"freezing": True}  # weights become constants: folded, prepacked for oneDNN
        if cuda_graphs:
            options.update({"max_autotune": True, "triton.cudagraphs": True})
        run = torch.compile(model, dynamic=False)
        described = "inductor (" + ", ".join(k.replace("triton.", "") for k in options) + ", channels_last)"
    swapped = [f"ackd_fast.{name} x{n}" for name, n in fused.items() if n]
    description = described + (" + " + ", ".join(swapped) if swapped else "")
    if "kernels" in method and not swapped:
        raise ValueError(f"method {method!r}: the generator has no module the inference kernels compute")
    deployed = DeployedGenerator(run, description, fused, example_input, channels_last=True,
                                 cuda_graphs=cuda_graphs and method != "kernels", inductor_config=options)  # fmt: skip

    with torch.no_grad(), ieee_fp32(device):
        y = deployed(example_input)  # compiles
        deployed(example_input)  # CUDA graphs record on a later call
        deployed.setup_seconds = time.perf_counter() - t0
        if verify:
            expected = eager(example_input)
            deployed.max_abs_diff = (y.float() - expected.float()).abs().max().item()
            scale = max(1.0, expected.abs().max().item())
            tolerance = TOLERANCE.get(dtype)
            if tolerance is not None and not deployed.max_abs_diff <= tolerance * scale:
                raise RuntimeError(
                    f"deploy: {description} differs from the eager generator by {deployed.max_abs_diff:.3g} on "
                    f"example_input (allowed {tolerance * scale:.3g}); this is a bug, please report it"
                )
    return deployed


# ---------------------------------------------------------------------------------------- measuring the paths

PATHS = ("eager", "compile", "onnxruntime", "openvino", "deploy")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_dtypes(device: torch.device) -> tuple[str, ...]:
    """fp32, plus the half types the device computes natively (bf16/fp16 on CUDA; bf16 on CPUs with AVX-512 BF16 or
    AMX, where oneDNN has bf16 kernels)."""
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16")
    return ("fp32", "bf16") if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() \
        else ("fp32",)  # fmt: skip


def _onnx_export(model: nn.Module, example: Tensor, path: str) -> None:
    """`model` to ONNX at `path` by torch.onnx.export(dynamo=True), on the CPU in float32 (what both ONNX runtimes
    read)."""
    for module in ("onnx", "onnxscript"):
        optional_import(module, "the ONNX export")
    with torch.no_grad():
        torch.onnx.export(model, (example,), path, dynamo=True, verbose=False)


def onnxruntime_session(model: nn.Module, example: Tensor) -> Callable[[Tensor], Tensor]:
    """`model` exported to ONNX and run by onnxruntime with its full graph optimisation and torch's thread count,
    as a callable on float32 tensors (onnxruntime's CUDA provider when it has one and the example is on CUDA)."""
    import tempfile

    onnxruntime = optional_import("onnxruntime", "the onnxruntime path")

    device = example.device
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError("this onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)")
        providers.insert(0, "CUDAExecutionProvider")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        _onnx_export(model, example, path)
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
    import tempfile

    ov = optional_import("openvino", "the OpenVINO path")
    if example.device.type != "cpu" or example.dtype != torch.float32:
        raise RuntimeError(f"the OpenVINO path runs float32 on the CPU here; the example is {example.dtype} on "
                           f"{example.device}")  # fmt: skip
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(torch.get_num_threads()),
              "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        _onnx_export(model, example, path)
        compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: Tensor) -> Tensor:
        request.infer({0: x.detach().contiguous().numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    run.request = request  # its profiling counters, for the closing note's profiles
    return run


def build_path(path: str, model: nn.Module, example: Tensor) -> Callable[[Tensor], Tensor]:
    """One of PATHS for `model` (already on the example's device and dtype, in eval mode), compiled and warm."""
    if path == "eager":
        run = model
    elif path == "compile":
        run = torch.compile(model, dynamic=False)  # what a user would try first
    elif path == "onnxruntime":
        run = onnxruntime_session(model, example)
    elif path == "openvino":
        run = openvino_model(model, example)
    elif path == "deploy":
        run = deploy(model, example)
    else:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    with torch.no_grad():
        run(example)
    return run


def time_paths(runs: dict[str, Callable[[Tensor], Tensor]], x: Tensor, rounds: int, turn: int = 5,
               settle: int = 2) -> dict[str, float]:  # fmt: skip
    """Median seconds of `rounds` timed calls of each callable on x. The callables take turns of `settle` untimed
    then `turn` timed back-to-back calls, so that the machine's load falls on all of them alike, while no call is
    timed right after another path's: onnxruntime's and OpenMP's worker threads spin for a while after a call, and
    on 2 cores a path timed inside that window (as a call-by-call alternation does) loses a core to them (measured:
    the deploy path's 24 ms became 68 ms beside an onnxruntime session)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in runs}
    # every path in full fp32 on CUDA, as deploy runs (cuDNN's default would give the others TF32 convolutions)
    with torch.no_grad(), ieee_fp32(x.device):
        while any(len(ts) < rounds for ts in times.values()):
            for name, run in runs.items():
                if len(times[name]) >= rounds:
                    continue
                for i in range(settle + min(turn, rounds - len(times[name]))):
                    sync()
                    t = time.perf_counter()
                    run(x)
                    sync()
                    if i >= settle:
                        times[name].append(time.perf_counter() - t)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def compare_paths(
    generators: dict[str, nn.Module],
    device: str | torch.device = "cpu",
    size: int = 256,
    batches: tuple[int, ...] = (1, 4),
    dtypes: tuple[str, ...] | None = None,
    paths: tuple[str, ...] = PATHS,
    rounds: int = 20,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Times every path of every generator ({name: module}) on random (batch, 3, size, size) inputs; per generator,
    dtype and batch the paths are built, then timed alternately. A path that cannot run there (onnxruntime in
    bf16) gets a row with its reason instead of a time. Rows: name, dtype, batch, size, path, ms, images_per_s,
    gmacs, gmac_per_s, setup_s, max_abs_diff (from eager), error."""
    from ackd_fast import metrics

    device = torch.device(device)
    rows, peaks = [], {}
    for name, generator in generators.items():
        in_channels = next(m for m in generator.modules() if isinstance(m, nn.Conv2d)).in_channels
        for dtype_name in dtypes or device_dtypes(device):
            dtype = DTYPES[dtype_name]
            if dtype_name not in peaks:  # the device's matmul rate in this dtype, measured once
                with ieee_fp32(device):
                    peaks[dtype_name] = metrics.compute_peak_gflops(device, dtype)
                log(f"{metrics.device_name(device)} {dtype_name} peak (best of matmul, 3x3 conv): "
                    f"{peaks[dtype_name]:.0f} GFLOP/s")  # fmt: skip
            model = copy.deepcopy(generator).to(device=device, dtype=dtype).eval().requires_grad_(False)
            for batch in batches:
                x = torch.randn(batch, in_channels, size, size, device=device, dtype=dtype)
                gmacs = metrics.count_macs(model, x) / 1e9
                actual_gflops = 2 * metrics.count_macs(model, x, convention="actual") / 1e9
                with torch.no_grad():
                    expected = model(x).float()
                runs, info = {}, {}
                for path in paths:
                    t0 = time.perf_counter()
                    if path in ("onnxruntime", "openvino") and dtype != torch.float32:
                        info[path] = {"error": f"not measured: the export and {path}'s kernels are fp32 here"}
                        continue
                    try:
                        runs[path] = build_path(path, model, x)
                    except (RuntimeError, ImportError, TypeError) as exc:  # a path this device/dtype cannot run
                        info[path] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
                        log(f"{name} {dtype_name} b{batch} {path}: cannot run ({info[path]['error']})")
                        continue
                    with torch.no_grad():
                        diff = (runs[path](x).float() - expected).abs().max().item()
                    info[path] = {"setup_s": time.perf_counter() - t0, "max_abs_diff": diff}
                    if path == "deploy":
                        info[path]["method"] = runs[path].method
                medians = time_paths(runs, x, rounds)
                for path in paths:
                    seconds = medians.get(path)
                    row = {"name": name, "dtype": dtype_name, "batch": batch, "size": size, "path": path,
                           "device": metrics.device_name(device), "gmacs": gmacs, "ms": None, "images_per_s": None,
                           "gmac_per_s": None, **info[path]}  # fmt: skip
                    row["peak_gflops"] = peaks[dtype_name]
                    if seconds is not None:
                        row.update(ms=seconds * 1e3, images_per_s=batch / seconds, gmac_per_s=gmacs / seconds,
                                   peak_fraction=actual_gflops / seconds / peaks[dtype_name])  # fmt: skip
                        log(f"{name} {dtype_name} b{batch} {path}: {seconds * 1e3:.2f} ms")
                    rows.append(row)
    return rows


def speed_ratios(rows: list[dict]) -> list[dict]:
    """Per dtype and batch: the generator with the most MACs (teacher) against the one with the fewest (student):
    their MAC ratio, each path's teacher/student time ratio, and the eager teacher against the deployed student."""
    out = []
    keys = sorted({(r["dtype"], r["batch"]) for r in rows})
    for dtype, batch in keys:
        group = [r for r in rows if (r["dtype"], r["batch"]) == (dtype, batch)]
        by_name = {r["name"]: r["gmacs"] for r in group}
        if len(by_name) < 2:
            continue
        teacher, student = max(by_name, key=by_name.get), min(by_name, key=by_name.get)
        ms = {(r["name"], r["path"]): r["ms"] for r in group}
        ratio = {}
        for path in PATHS:
            t, s = ms.get((teacher, path)), ms.get((student, path))
            ratio[path] = t / s if t and s else None
        t, s = ms.get((teacher, "eager")), ms.get((student, "deploy"))
        out.append({"dtype": dtype, "batch": batch, "teacher": teacher, "student": student,
                    "mac_ratio": by_name[teacher] / by_name[student], "speed_ratio": ratio,
                    "eager_teacher_over_deployed_student": t / s if t and s else None})  # fmt: skip
    return out


def deploy_leads(rows: list[dict]) -> list[dict]:
    """Per generator, dtype and batch: the deploy path's time over the best other path's (below 1: deploy is
    faster), and which path that is."""
    out = []
    for key in dict.fromkeys((r["name"], r["dtype"], r["batch"], r["size"]) for r in rows):
        group = {r["path"]: r["ms"] for r in rows if (r["name"], r["dtype"], r["batch"], r["size"]) == key and r["ms"]}
        others = {p: ms for p, ms in group.items() if p != "deploy"}
        if "deploy" in group and others:
            best = min(others, key=others.get)
            out.append({"name": key[0], "dtype": key[1], "batch": key[2], "size": key[3], "best_other": best,
                        "deploy_over_best_other": group["deploy"] / others[best]})  # fmt: skip
    return out


def markdown(rows: list[dict], ratios: list[dict]) -> str:
    """The rows and ratios of compare_paths as markdown tables."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lines = [
        "| generator | dtype | batch | path | ms | images/s | GMAC/s | % of peak | GMACs | max abs diff | "
        "setup s | note |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        note = r.get("error") or r.get("method") or ""
        lines.append(
            f"| {r['name']} | {r['dtype']} | {r['batch']} | {r['path']} | {fmt(r['ms'], '.2f')} | "
            f"{fmt(r['images_per_s'], '.1f')} | {fmt(r['gmac_per_s'], '.1f')} | "
            f"{fmt(r.get('peak_fraction') and 100 * r['peak_fraction'], '.0f')} | {r['gmacs']:.2f} | "
            f"{fmt(r.get('max_abs_diff'), '.1e')} | {fmt(r.get('setup_s'), '.0f')} | {note.replace('|', '/')} |"
        )
    leads = deploy_leads(rows)
    if leads:
        lines += ["", "| generator | dtype | batch | size | deploy / best other path | best other path |",
                  "|---|---|---:|---:|---:|---|"]  # fmt: skip
        lines += [f"| {q['name']} | {q['dtype']} | {q['batch']} | {q['size']} | {q['deploy_over_best_other']:.2f}x | "
                  f"{q['best_other']} |" for q in leads]  # fmt: skip
    if ratios:
        lines += [
            "",
            "| dtype | batch | teacher / student | MAC ratio | "
            + " | ".join(PATHS)
            + " | eager teacher / deployed student |",
            "|---|---:|---|---:|" + "---:|" * (len(PATHS) + 1),
        ]
        for q in ratios:
            cells = [fmt(q["speed_ratio"][p], ".1f") + ("x" if q["speed_ratio"][p] else "") for p in PATHS]
            last = q["eager_teacher_over_deployed_student"]
            lines.append(
                f"| {q['dtype']} | {q['batch']} | {q['teacher']} / {q['student']} | {q['mac_ratio']:.1f}x | "
                + " | ".join(cells)
                + f" | {fmt(last, '.1f')}{'x' if last else ''} |"
            )
    return "\n".join(lines) + "\n"


def bench_deploy(
    generators: dict[str, nn.Module], out_dir: str | os.PathLike, device: str = "auto", **options
) -> tuple[list[dict], list[dict]]:
    """compare_paths (options: its keywords) and speed_ratios, written to OUT_DIR/bench_deploy.md and .json
    (atomically) and printed. device: "auto" (CUDA when present), "cpu" or "cuda"."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be one of ('auto', 'cpu', 'cuda'), got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = compare_paths(generators, device=device, **options)
    ratios = speed_ratios(rows)
    table = markdown(rows, ratios)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("bench_deploy.md", table),
        ("bench_deploy.json", json.dumps({"rows": rows, "ratios": ratios, "deploy_leads": deploy_leads(rows)},
                                         indent=1)),
    ):
        write_atomic(out / name, lambda f, text=text: f.write(text.encode()))
    print(table, end="")
    print(f"wrote {out / 'bench_deploy.md'} and {out / 'bench_deploy.json'}")
    return rows, ratios
