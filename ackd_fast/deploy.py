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
  few GMAC/s. The kernels are float32/float64; other dtypes run inductor alone (`method` says so). The rewrite is
  `ackd_fast.rewrite`, the ops' Python side `ackd_fast.ops.inference`.
- CPU, float32, OpenVINO installed: "auto" builds the path above and "openvino" (the generator exported to ONNX and
  compiled by OpenVINO, f32) and keeps the one that runs the example faster, timed in turns.
- CUDA: inductor with freezing, max-autotune and CUDA graphs on channels_last maps; fp32 runs without TF32.

`method=` picks a path by name instead of "auto"; a path that cannot run raises rather than falling back.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ackd_fast.errors import optional_import
from ackd_fast.metrics import ieee_fp32, time_paths
from ackd_fast.ops.inference import KERNEL_DTYPES, kernels_available
from ackd_fast.rewrite import with_kernels
from ackd_fast.runtimes import openvino_available, openvino_model

# "kernels+inductor": CPU only; "kernels": the rewritten model without compiling (fast to set up; for tests and for
# measuring what the kernels alone give); "inductor": the unmodified model, compiled; "openvino": the model exported to
# ONNX and compiled by OpenVINO (CPU, float32; the [openvino] extra).
METHODS = ("auto", "kernels+inductor", "inductor", "kernels", "openvino")
AUTO_TIMING_ROUNDS = 5  # calls of each candidate when "auto" measures which runs faster
# The fast path's largest allowed difference from the eager generator on the example, relative to the output's
# scale (max(1, max |y|)); half types are recorded, not checked: their eager path rounds differently.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


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


def _eager_output(eager: nn.Module, example: Tensor) -> Tensor:
    """What the fast path is checked against; ValueError when it is not finite (then no difference means anything,
    and the cause is the generator, e.g. weights that hold NaN, not the fast path)."""
    expected = eager(example)
    if not torch.isfinite(expected).all():
        raise ValueError("the generator's own (eager) output on example_input holds NaN or inf, so the fast path "
                         "cannot be checked against it: are its weights finite?")  # fmt: skip
    return expected


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
            expected = _eager_output(eager, example)
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
    if example_input.device.type == "meta":
        raise ValueError("example_input is on the meta device, which holds no values: deploy compiles for and checks "
                         "against real inputs; give it a tensor on cpu or cuda")  # fmt: skip
    first_conv = next((m for m in generator.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and example_input.shape[1] != first_conv.in_channels:
        raise ValueError(f"example_input has {example_input.shape[1]} channels (shape {tuple(example_input.shape)}); "
                         f"the generator takes {first_conv.in_channels} (its first convolution)")  # fmt: skip
    if not torch.isfinite(example_input).all():
        raise ValueError("example_input holds NaN or inf values: deploy checks the fast path against the eager "
                         "generator on it; give finite values, e.g. an image scaled to [-1, 1]")  # fmt: skip
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
            expected = _eager_output(eager, example_input)
            deployed.max_abs_diff = (y.float() - expected.float()).abs().max().item()
            scale = max(1.0, expected.abs().max().item())
            tolerance = TOLERANCE.get(dtype)
            if tolerance is not None and not deployed.max_abs_diff <= tolerance * scale:
                raise RuntimeError(
                    f"deploy: {description} differs from the eager generator by {deployed.max_abs_diff:.3g} on "
                    f"example_input (allowed {tolerance * scale:.3g}); this is a bug, please report it"
                )
    return deployed
