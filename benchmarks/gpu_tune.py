"""One short GPU run that tunes ACK-A and measures it against PyTorch, in phases that each keep what they measured.

    python benchmarks/gpu_tune.py [OUT_DIR] [--budget-s 450]    # on a GPU (H100/H200): about 7-8 minutes
    python benchmarks/gpu_tune.py --dry-run [OUT_DIR]            # on a CPU: the whole plan, interpreter, tiny shapes

Phases, in order of value, each under its share of the budget (a phase past its share stops and the next starts):
  env        device, capability, SMs, clocks and power (nvidia-smi), driver, torch, Triton, Python, commit
  compile    every kernel the later phases launch, compiled in a process pool before anything is timed (the
             workers warm Triton's cache, which the timing process then reads)
  correct    every candidate tile of the forward, dK/dV and dQ kernels against the fp64 reference at an odd shape
             (masked kernels) and at the paper shape (full-block kernels; SDPA's error there sets the tolerance);
             outputs start as NaN; a failing tile is excluded from the sweeps
  forward    kernel-only time (CUDA events over back-to-back launches) of every surviving forward tile at the
             paper, student and hi-res shapes of bench_ack_attention.py, through pointers and (16-bit, Hopper)
             through tensor descriptors (forward_tma); which forward is faster per shape goes into the tuned file
  backward   the same for the dK/dV and dQ tiles, and for the fused backward (dK, dV and dQ's fp32 sum in one
             kernel, then its conversion); which backward is faster per shape goes into the tuned file
  winners    the fastest tile per kernel and shape class, written in the kernels/tuned format (OUT_DIR/sm<arch>.json,
             the committed file's candidates kept): copy it to kernels/tuned/ to ship it
  baselines  per shape, forward and forward+backward: ackd_fast's op with the winners (a fresh process that reads
             the new file) and SDPA's cuDNN, flash and efficient backends, each end to end as a user calls it
             (the cat/transposes SDPA needs included), both synced per call (host clock, what an eager user pays)
             and kernel-only (CUDA events over back-to-back calls); SDPA kernel-only on token-major inputs prepared
             outside the timing; the backend rules (triton vs sdpa per shape class) go into the tuned file
  fp32       the paper shape in fp32: our kernels as tf32x3 (full fp32 requested), tf32, and on the FMA units
             ("ieee", the old path), against SDPA in full fp32 and TF32
  profile    torch.profiler table (top CUDA kernels, CPU total) of one bf16 eager training step per path
             (bench_train_step.py's Task: ackd and reference)

Output: OUT_DIR/results.jsonl, one JSON object per measurement, flushed line by line (a run cut off still returns
what it measured); OUT_DIR/sm<arch>.json (the tuned file); OUT_DIR/profile.txt; OUT_DIR/summary.md and a short
table printed last. OUT_DIR defaults to $OUT, else benchmarks/results/<date>-<device>-tune. Ratios are PyTorch's
best time / ours (above 1: ackd_fast is faster). No time is ever written into the tuned file that was not measured
in this run; the dry run writes no winners.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DRY = "--dry-run" in sys.argv
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton or the kernels are imported
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

PHASES = {  # name: share of the budget (seconds of a 450 s budget)
    "env": 5, "compile": 60, "correct": 50, "forward": 60, "backward": 90, "winners": 5, "baselines": 90,
    "fp32": 40, "profile": 50,
}  # fmt: skip
# dkdv_fused: the fused backward (its dq_convert at its default); forward_tma: the forward through tensor descriptors,
# where the inputs allow it (16-bit maps on Hopper; absent from the dry run's fp32 shapes)
KERNELS = ("forward", "forward_tma", "dkdv", "dq", "dkdv_fused")
OUTPUTS = {"forward": ("Out",), "forward_tma": ("Out",), "dkdv": ("DK", "DV"), "dq": ("DQ",),
           "dkdv_fused": ("DK", "DV")}  # fmt: skip
# The odd shape of the correctness phase (test_gpu_tiles.py's): B, heads, d, query (H, W), sources' (H, W)
ODD = (2, 2, 64, (9, 7), ((5, 9), (13, 10), (3, 3)))
DRY_SHAPES = {  # bench_ack_attention's shape tuples, tiny: fp32 (the interpreter computes bf16 wrongly)
    "paper": (1, 2, 16, (8, 8), (4, 8), 2, torch.float32),
    "student": (2, 1, 16, (8, 4), (4, 4), 3, torch.float32),
}
DRY_ODD = (1, 2, 16, (5, 3), ((3, 5), (2, 2)))


class Run:
    """The run's output folder, budget and measurements."""

    def __init__(self, out: Path, budget_s: float, dry: bool):
        self.out, self.dry, self.start = out, dry, time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.results = (out / "results.jsonl").open("a")
        scale = budget_s / sum(PHASES.values())
        self.shares = {name: share * scale for name, share in PHASES.items()}
        self.phase, self.phase_end = "", 0.0
        self.rows: list[dict] = []

    def begin(self, phase: str) -> None:
        self.phase = phase
        self.phase_end = time.monotonic() + self.shares[phase]
        self.record(event="phase", elapsed_s=round(time.monotonic() - self.start, 1), share_s=self.shares[phase])
        print(f"[{time.monotonic() - self.start:6.1f} s] {phase}", flush=True)

    def time_left(self) -> bool:
        return self.dry or time.monotonic() < self.phase_end

    def record(self, **fields) -> dict:
        row = {"phase": self.phase, **fields}
        self.rows.append(row)
        self.results.write(json.dumps(row, default=str) + "\n")
        self.results.flush()
        os.fsync(self.results.fileno())
        return row

    def skipped(self, what: str) -> None:
        self.record(event="skipped", what=what, reason="phase budget spent")


# ---------------------------------------------------------------------------------------------- timing


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def kernel_ms(fn, dry: bool) -> float:
    """Median time per call of fn over back-to-back calls (CUDA events: the device's time, the host's launch
    overhead hidden where the device is the bottleneck). Dry run: one host-timed call."""
    if dry:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def synced_ms(fn, dry: bool, calls: int = 20) -> float:
    """Median host time of fn() + synchronize: what an eager user pays per call, Python and launches included."""
    fn()
    sync()
    times = []
    for _ in range(1 if dry else calls):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# ------------------------------------------------------------------------------------------- the kernels


def kernels():
    from ackd_fast.kernels import ack_attention

    return ack_attention


def candidates(kernel: str, arch: int, dry: bool, element_size: int = 2, precision: str = "ieee") -> list:
    """The tiles to tune: the committed candidates (kernels/tuned, pruned by compiling) and the shipped list."""
    from ackd_fast.kernels import configs, tuning

    if dry:
        return [configs.Tile(32, 32, 1, 1), configs.Tile(16, 32, 1, 1)]
    shipped = configs.gpu_candidates(kernel, element_size, 64, precision, arch)
    pruned = tuning.load(arch).candidates.get((kernel, configs.dot_class(element_size, precision), "small"), ())
    if element_size != 2:
        pruned = ()
    return list(dict.fromkeys([*shipped, *(configs.Tile(*t) for t in pruned)]))


def launch_args(launch, tile) -> tuple[dict, tuple]:
    """All arguments of `launch` at `tile` (meta-parameters and heuristics' flags included) and its grid."""
    meta = {"BLOCK_M": tile.block_m, **({"BLOCK_N": tile.block_n} if tile.block_n else {})}
    args = {**launch.args, **meta}
    args.update({name: rule(args) for name, rule in kernels().HEURISTICS[launch.kernel].items()})
    return args, launch.grid(args)


def jit_fn(kernel: str):
    return kernels().KERNELS[kernel].fn.fn  # autotuner -> heuristics -> JITFunction


def launcher(launch, tile):
    """A callable that launches `launch` at `tile`: the compiled kernel with positional arguments after a first
    launch through the JIT (which compiles or reads Triton's cache)."""
    fn = jit_fn(launch.kernel)
    args, grid = launch_args(launch, tile)
    options = {"num_warps": tile.num_warps, "num_stages": tile.num_stages}
    compiled = fn[grid](**args, **options)
    if compiled is None:  # the interpreter
        return lambda: fn[grid](**args, **options)
    ordered = [args[name] for name in fn.arg_names]
    return lambda: compiled[grid](*ordered)


def maps(shape, device, layout="contiguous", requires_grad=False, generator=None):
    batch, heads, head_dim, q_hw, kv_hw, count, dtype = shape
    c = heads * head_dim
    kv_hws = kv_hw if isinstance(kv_hw[0], tuple) else [kv_hw] * count
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def rand(hw):
        x = torch.randn(batch, c, *hw, device=device, generator=generator).to(dtype).contiguous(memory_format=fmt)
        return x.requires_grad_(requires_grad)

    return rand(q_hw), [rand(hw) for hw in kv_hws], [rand(hw) for hw in kv_hws]


def staged_launches(q, keys, values, heads, grad=None):
    """Forward launch, and the backward's launches with their inputs computed once (out, lse, grad, Delta)."""
    k = kernels()
    (out, lse), (forward,) = k.forward_launches(q, keys, values, heads, tma=False)
    k._run(q, [forward])
    _, (forward_tma,) = k.forward_launches(q, keys, values, heads, tma=True)
    grad = torch.randn_like(q) if grad is None else grad
    _, backward = k.backward_launches(grad, q, keys, values, out, lse, heads, fused=False)
    k._run(q, backward[:1])  # Delta, which dK/dV and dQ read
    _, fused = k.backward_launches(grad, q, keys, values, out, lse, heads, fused=True)
    k._run(q, fused[:1])
    launches = {"forward": forward, "dkdv": backward[1], "dq": backward[2], "dkdv_fused": fused[1]}
    if forward_tma.kernel == "forward_tma":  # the inputs allow it
        launches["forward_tma"] = forward_tma
    return {**launches, "dq_convert": fused[2]}, grad


# ------------------------------------------------------------------------------------------------ phases


def phase_env(run: Run) -> dict:
    import platform

    import triton

    env = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "cuda": torch.version.cuda, "dry_run": run.dry}  # fmt: skip
    try:
        from report import git_commit

        env["commit"] = git_commit()
    except Exception as exc:
        env["commit"] = f"unknown ({exc})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=list(torch.cuda.get_device_capability()),
                   sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))  # fmt: skip
        query = ("name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,"
                 "temperature.gpu")
        try:
            smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()  # fmt: skip
            env["nvidia_smi"] = dict(zip(query.split(","), (v.strip() for v in smi.split(",")), strict=False))
        except (OSError, subprocess.TimeoutExpired) as exc:
            env["nvidia_smi"] = f"unavailable: {exc}"
    else:
        env["device"] = "cpu (dry run: Triton interpreter, tiny shapes; no figure here is a measurement)"
    from ackd_fast import ops

    env["backends"] = ops.backends()
    run.record(event="env", **env)
    return env


def _warm_one(item) -> str:
    """A compile worker: launches nothing, compiles `kernel` at `tile` for the example maps of `shape` through the
    JIT's warm-up path, which writes Triton's cache exactly as a launch would."""
    kernel, tile, shape, layout, precision = item
    os.environ.pop("TRITON_INTERPRET", None)
    k = kernels()
    k._precision = lambda dtype: precision if dtype == torch.float32 else "ieee"
    try:
        q, keys, values = maps(shape, "meta", layout)
        heads = shape[1]
        (out, lse), launches = k.forward_launches(q, keys, values, heads, tma=False)
        launches += k.forward_launches(q, keys, values, heads, tma=True)[1]
        for fused in (False, True):
            launches += k.backward_launches(torch.empty_like(q), q, keys, values, out, lse, heads, fused=fused)[1]
        launch = {x.kernel: x for x in launches}[kernel]
        args, _grid = launch_args(launch, tile)
        jit_fn(kernel).warmup(**args, grid=(1,), num_warps=tile.num_warps, num_stages=tile.num_stages)
    except Exception as exc:
        return f"{kernel} {tuple(tile)}: {type(exc).__name__}: {str(exc).splitlines()[-1][:200]}"
    return ""


def phase_compile(run: Run, plan: list) -> None:
    """Compiles every (kernel, tile, shape, layout, precision) of the plan in a process pool."""
    if run.dry:
        run.record(event="skipped", what="compile", reason="the interpreter compiles nothing")
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(len(plan), (os.cpu_count() or 2) - 1))
    start = time.monotonic()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        errors = [e for e in pool.map(_warm_one, plan) if e]
    run.record(event="compiled", kernels=len(plan), workers=workers, seconds=round(time.monotonic() - start, 1),
               errors=errors)  # fmt: skip


def _errors(got: list, exact: list, scale: list) -> list[tuple[float, float, bool]]:
    """Per tensor: (normwise relative error of got, of the scale path, whether every element is finite)."""

    def rel(x, e):
        return ((x.double() - e).norm() / e.norm().clamp_min(1e-30)).item()

    return [(rel(g, e), rel(s, e), bool(torch.isfinite(g).all())) for g, e, s in zip(got, exact, scale, strict=True)]


def _reference(q, keys, values, heads, grad):
    from ackd_fast import reference

    leaves = [t.detach().double().requires_grad_() for t in (q, *keys, *values)]
    n = len(keys)
    out = reference.ack_attention(leaves[0], leaves[1 : 1 + n], leaves[1 + n :], heads)
    grads = torch.autograd.grad(out, leaves, grad.double())
    return [out.detach(), *grads]


def _scale_path(q, keys, values, heads, grad, dry: bool):
    """The error scale: PyTorch in the inputs' dtype (SDPA on a GPU, the reference in the dtype on the CPU)."""
    from ackd_fast import ops, reference

    leaves = [t.detach().requires_grad_() for t in (q, *keys, *values)]
    n = len(keys)
    fn = reference.ack_attention if dry else ops.sdpa_attention
    out = fn(leaves[0], leaves[1 : 1 + n], leaves[1 + n :], heads)
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return [out.detach(), *grads]


def phase_correct(run: Run, tiles: dict, shapes: dict, device: str) -> dict:
    """Every tile of every kernel on the odd shape and the paper shape; returns the tiles that passed."""
    passed = {kernel: list(ts) for kernel, ts in tiles.items()}
    odd = DRY_ODD if run.dry else ODD
    dtype = torch.float32 if run.dry else torch.bfloat16
    checks = {"odd": (*odd[:4], odd[4], len(odd[4]), dtype), "paper": shapes["paper"]}
    for check, shape in checks.items():
        g = torch.Generator(device).manual_seed(0)
        q, keys, values = maps(shape, device, generator=g)
        heads, n = shape[1], len(keys)
        grad = torch.randn(q.shape, device=device, generator=g).to(q.dtype)
        exact = _reference(q, keys, values, heads, grad)
        scale = _scale_path(q, keys, values, heads, grad, run.dry)
        launches, _ = staged_launches(q, keys, values, heads, grad)
        for kernel in KERNELS:
            if kernel not in launches:
                continue
            for tile in list(passed[kernel]):
                if not run.time_left():
                    run.skipped(f"correct {check} {kernel} {tuple(tile)}")
                    continue
                launch = _fresh_outputs(launches[kernel])
                outputs = OUTPUTS[kernel]
                try:
                    run_tile = launcher(launch, tile)  # launches once (compiles): start again from here
                    for name in outputs:  # poison: every element must be written
                        for t in launch.args[name] if isinstance(launch.args[name], tuple) else (launch.args[name],):
                            t.fill_(float("nan"))
                    if kernel == "dkdv_fused":
                        launch.args["DQ_ACC"].zero_()  # the atomics add into it
                    run_tile()
                    if kernel == "dkdv_fused":  # dQ from the fp32 sum, by the conversion at its default tile
                        convert = launches["dq_convert"]
                        dq = torch.full_like(convert.args["DQ"], float("nan"))
                        kernels()._run(q, [convert._replace(args={**convert.args, "DQ": dq,
                                                                  "DQ_ACC": launch.args["DQ_ACC"]})])  # fmt: skip
                    sync()
                except Exception as exc:
                    run.record(event="correct", check=check, kernel=kernel, tile=list(tile), ok=False,
                               error=f"{type(exc).__name__}: {str(exc).splitlines()[-1][:300]}")  # fmt: skip
                    passed[kernel].remove(tile)
                    continue
                if kernel in ("forward", "forward_tma"):
                    got, idx = [launch.args["Out"]], [0]
                elif kernel == "dkdv":
                    got, idx = [*launch.args["DK"], *launch.args["DV"]], list(range(2, 2 + 2 * n))
                elif kernel == "dkdv_fused":
                    got, idx = [dq, *launch.args["DK"], *launch.args["DV"]], list(range(1, 2 + 2 * n))
                else:
                    got, idx = [launch.args["DQ"]], [1]
                errs = _errors(got, [exact[i] for i in idx], [scale[i] for i in idx])
                ok = all(finite and err <= 2 * ref + 1e-3 for err, ref, finite in errs)
                run.record(event="correct", check=check, kernel=kernel, tile=list(tile), ok=ok,
                           rel_errors=[round(e, 6) for e, _, _ in errs],
                           pytorch_rel_errors=[round(r, 6) for _, r, _ in errs])  # fmt: skip
                if not ok:
                    passed[kernel].remove(tile)
        _check_op(run, check, q, keys, values, heads, grad, exact, scale)
        del exact, scale, launches
        if device == "cuda":
            torch.cuda.empty_cache()
    return passed


def _check_op(run: Run, check: str, q, keys, values, heads, grad, exact, scale) -> None:
    """The op as users call it, twice with fresh inputs of the same layout: the first call plans (autotuner,
    binder), the second launches the cached plan's compiled kernels with positional arguments. Both must match the
    reference; a failure here means the launch cache is broken on this stack (ACKD_LAUNCH_CACHE=0 turns it off)."""
    from ackd_fast import ops

    for call in ("first call (plans)", "second call (cached plan)"):
        leaves = [t.detach().clone().requires_grad_() for t in (q, *keys, *values)]
        n = len(keys)
        try:
            out = ops.ack_attention(leaves[0], leaves[1 : 1 + n], leaves[1 + n :], heads)
            got = [out.detach(), *torch.autograd.grad(out, leaves, grad.to(out.dtype))]
            sync()
        except Exception as exc:
            run.record(event="correct_op", check=check, call=call, ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
            continue
        errs = _errors(got, exact, scale)
        ok = all(finite and err <= 2 * ref + 1e-3 for err, ref, finite in errs)
        run.record(event="correct_op", check=check, call=call, ok=ok, rel_errors=[round(e, 6) for e, _, _ in errs],
                   pytorch_rel_errors=[round(r, 6) for _, r, _ in errs])  # fmt: skip


def _fresh_outputs(launch):
    """`launch` writing into new buffers: a tile under test never overwrites what the later launches read (the
    forward's out and lse, which the backward's launches were given)."""
    args = dict(launch.args)
    written = {"forward": ("Out", "LSE"), "forward_tma": ("Out", "LSE"), "dkdv": ("DK", "DV"), "dq": ("DQ",),
               "dkdv_fused": ("DK", "DV"), "dq_convert": ("DQ",)}
    for name in written[launch.kernel]:
        value = args[name]
        args[name] = tuple(map(torch.empty_like, value)) if isinstance(value, tuple) else torch.empty_like(value)
    if launch.kernel == "dkdv_fused":
        args["DQ_ACC"] = torch.zeros_like(args["DQ_ACC"])  # the atomics add into it
    return launch._replace(args=args)


def phase_sweep(run: Run, kernels_to_time: tuple[str, ...], tiles: dict, shapes: dict, device: str) -> list[dict]:
    """Kernel-only time of every tile of each kernel at every shape."""
    rows = []
    for shape_name, shape in shapes.items():
        q, keys, values = maps(shape, device)
        launches, _ = staged_launches(q, keys, values, shape[1])
        for kernel in kernels_to_time:
            if kernel not in launches:
                continue
            for tile in tiles[kernel]:
                if not run.time_left():
                    run.skipped(f"{kernel} {shape_name} {tuple(tile)}")
                    continue
                try:
                    ms = kernel_ms(launcher(_fresh_outputs(launches[kernel]), tile), run.dry)
                except Exception as exc:
                    run.record(event="time", kernel=kernel, shape=shape_name, tile=list(tile),
                               error=f"{type(exc).__name__}: {str(exc).splitlines()[-1][:300]}")  # fmt: skip
                    continue
                rows.append(run.record(event="time", kernel=kernel, shape=shape_name, tile=list(tile),
                                       ms=round(ms, 5), bucket=_bucket(shape)))  # fmt: skip
        del q, keys, values, launches
    return rows


def _bucket(shape) -> int:
    from ackd_fast.kernels import tuning

    batch, heads, _, (hq, wq), (hk, wk), count, _ = shape
    return tuning.tune_bucket(hq * wq, hk * wk * count, batch * heads)


def phase_winners(run: Run, rows: list[dict], arch: int, env: dict) -> Path:
    """The fastest tile per (kernel, shape) into OUT/sm<arch>.json, the committed file's candidates kept."""
    from ackd_fast.kernels import tuning

    path = run.out / f"sm{arch}.json"
    base = tuning.path_for(arch)
    data = json.loads(base.read_text()) if base.exists() else {"format": tuning.FORMAT, "arch": arch}
    data.update(format=tuning.FORMAT, arch=arch, winners=[], backends=data.get("backends", []))
    best: dict[tuple, dict] = {}
    for r in rows:
        if "ms" in r and ((r["kernel"], r["shape"]) not in best or r["ms"] < best[r["kernel"], r["shape"]]["ms"]):
            best[r["kernel"], r["shape"]] = r
    device = env.get("device")
    date = datetime.date.today().isoformat()
    data["backward"] = []
    data["forward_kernel"] = []
    if not run.dry:  # the dry run's host timings of interpreted kernels are no measurement
        for (kernel, shape), r in sorted(best.items()):
            data["winners"].append({"kernel": kernel, "dot_class": "16bit", "block_d_class": "small",
                                    "bucket": r["bucket"], "shape": shape, "tile": r["tile"], "ms": r["ms"],
                                    "measured": True, "device": device, "date": date})  # fmt: skip
    for shape in dict.fromkeys(shape for _, shape in best):
        parts = {kernel: best.get((kernel, shape)) for kernel in ("dkdv", "dq", "dkdv_fused", "dq_convert")}
        if not all(parts.values()):
            continue
        two = parts["dkdv"]["ms"] + parts["dq"]["ms"]
        fused = parts["dkdv_fused"]["ms"] + parts["dq_convert"]["ms"]  # + zeroing the fp32 sum: a memset, ~us
        rule = {"dtype": "bfloat16", "block_d_class": "small", "bucket": parts["dkdv"]["bucket"], "shape": shape,
                "winner": "fused" if fused < two else "two_kernel", "fused_ms": round(fused, 5),
                "two_kernel_ms": round(two, 5)}  # fmt: skip
        run.record(event="backward_rule", **rule)
        if not run.dry:
            data["backward"].append({**rule, "measured": True, "device": device, "date": date})
    for shape in dict.fromkeys(shape for _, shape in best):
        pointer, tma = best.get(("forward", shape)), best.get(("forward_tma", shape))
        if not (pointer and tma):
            continue
        rule = {"dtype": "bfloat16", "block_d_class": "small", "bucket": pointer["bucket"], "shape": shape,
                "winner": "tma" if tma["ms"] < pointer["ms"] else "pointer", "tma_ms": tma["ms"],
                "pointer_ms": pointer["ms"]}  # fmt: skip
        run.record(event="forward_rule", **rule)
        if not run.dry:
            data["forward_kernel"].append({**rule, "measured": True, "device": device, "date": date})
    tuning.write(path, data)
    for (kernel, shape), r in sorted(best.items()):
        run.record(event="winner", kernel=kernel, shape=shape, tile=r["tile"], ms=r["ms"], written=not run.dry)
    return path


def _e2e_rows(run: Run, shapes: dict, device: str) -> list[dict]:
    """ackd_fast's op and SDPA's backends end to end, synced and kernel-only, forward and forward+backward."""
    from bench_ack_attention import SDPA_BACKENDS, attention_call, sdpa_path

    from ackd_fast import ops

    rows = []
    sdpa = {name: sdpa_path(backend) for name, backend in SDPA_BACKENDS.items() if name != "sdpa_math"}
    paths = {"ackd_triton": ops.ack_attention, **sdpa}
    for shape_name, shape in shapes.items():
        for mode in ("forward", "forward_backward"):
            backward = mode == "forward_backward"
            q, keys, values = maps(shape, device, requires_grad=backward)
            grad = torch.randn_like(q)
            heads = shape[1]
            for path, attention in paths.items():
                if not run.time_left():
                    run.skipped(f"e2e {shape_name} {mode} {path}")
                    continue

                step = attention_call(attention, q, keys, values, heads, grad if backward else None)

                try:
                    step()
                    sync()
                    row = {"synced_ms": round(synced_ms(step, run.dry), 5),
                           "kernel_ms": round(kernel_ms(step, run.dry), 5)}  # fmt: skip
                except RuntimeError as exc:  # an SDPA backend that does not run here
                    row = {"error": str(exc).splitlines()[0][:300]}
                rows.append(run.record(event="e2e", shape=shape_name, mode=mode, path=path, bucket=_bucket(shape),
                                       dtype=str(shape[-1]).removeprefix("torch."), **row))  # fmt: skip
            if not backward:
                rows.extend(_sdpa_kernel_only(run, shape, shape_name, q, keys, values, heads))
            del q, keys, values, grad
    return rows


def _sdpa_kernel_only(run: Run, shape, shape_name, q, keys, values, heads) -> list[dict]:
    """SDPA on token-major inputs prepared outside the timing (the kernel alone, no cat/transposes)."""
    import torch.nn.functional as F
    from bench_ack_attention import SDPA_BACKENDS
    from torch.nn.attention import sdpa_kernel

    b, c = q.shape[:2]
    d = c // heads

    def tokens(ms):
        return torch.cat([m.detach().reshape(b, heads, d, -1) for m in ms], dim=-1).transpose(-1, -2).contiguous()

    tq, tk, tv = tokens([q]), tokens(keys), tokens(values)
    rows = []
    for name, backend in SDPA_BACKENDS.items():
        if name == "sdpa_math" or not run.time_left():
            continue

        def call(backend=backend):
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(tq, tk, tv)

        try:
            call()
            row = {"kernel_ms": round(kernel_ms(call, run.dry), 5)}
        except RuntimeError as exc:
            row = {"error": str(exc).splitlines()[0][:300]}
        rows.append(run.record(event="sdpa_kernel_only", shape=shape_name, mode="forward", path=name, **row))
    return rows


def phase_baselines(run: Run, shapes: dict, device: str, tuned: Path, arch: int) -> list[dict]:
    """End to end in a fresh process that reads the new tuned file (ACKD_TUNED_DIR: the op runs the winners), then
    the backend rules into the tuned file."""
    results = run.out / "results.jsonl"
    before = len(results.read_text().splitlines())
    budget = max(10.0, run.phase_end - time.monotonic())
    cmd = [sys.executable, __file__, "--e2e-only", str(run.out), "--budget-s", str(budget)]
    env = {**os.environ, "ACKD_TUNED_DIR": str(tuned.parent)}
    try:
        subprocess.run(cmd + (["--dry-run"] if run.dry else []), env=env, timeout=budget + 90, check=False)
    except subprocess.TimeoutExpired:
        run.record(event="error", what="the baselines' process ran past its budget")
    # the child's lines: what it appended to results.jsonl after `before`
    child = [json.loads(line) for line in results.read_text().splitlines()[before:]]
    run.rows.extend(r for r in child if r.get("event") != "phase")
    rows = [r for r in run.rows if r.get("event") == "e2e"]
    _backend_rules(run, rows, tuned, arch)
    return rows


def _backend_rules(run: Run, rows: list[dict], tuned: Path, arch: int) -> None:
    from ackd_fast.kernels import tuning

    data = json.loads(tuned.read_text())
    env = next((r for r in run.rows if r.get("event") == "env"), {})
    data["backends"] = []
    by_case: dict[tuple, dict] = {}
    for r in rows:
        if "synced_ms" in r:
            by_case.setdefault((r["shape"], r["mode"], r["bucket"], r["dtype"]), {})[r["path"]] = r["synced_ms"]
    for (shape, mode, bucket, dtype), times in sorted(by_case.items()):
        sdpa = {p: t for p, t in times.items() if p.startswith("sdpa_")}
        if "ackd_triton" not in times or not sdpa:
            continue
        sdpa_ms = min(sdpa.values())  # what "auto" falls back to: sdpa_attention, whose backend torch picks
        winner = "triton" if times["ackd_triton"] <= sdpa_ms else "sdpa"
        rule = {"dtype": dtype, "mode": mode, "block_d_class": "small", "bucket": bucket, "shape": shape,
                "winner": winner, "triton_ms": times["ackd_triton"], "sdpa_ms": sdpa_ms,
                "ratio": round(sdpa_ms / times["ackd_triton"], 3)}  # fmt: skip
        run.record(event="backend_rule", **rule)
        if not run.dry:
            data["backends"].append({**rule, "measured": True, "device": env.get("device"),
                                     "date": datetime.date.today().isoformat()})  # fmt: skip
    tuning.write(tuned, data)


@contextlib.contextmanager
def _fp32_precision(setting: str):
    knobs = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    saved = [k.fp32_precision for k in knobs]
    for k in knobs:
        k.fp32_precision = setting
    try:
        yield
    finally:
        for k, value in zip(knobs, saved, strict=True):
            k.fp32_precision = value


def phase_fp32(run: Run, shapes: dict, device: str) -> None:
    """The paper shape in fp32: ours as tf32x3, tf32 and on the FMA units (ieee), SDPA in full fp32 and TF32."""
    from bench_ack_attention import attention_call

    from ackd_fast import ops

    k = kernels()
    shape = (*shapes["paper"][:-1], torch.float32)
    heads = shape[1]
    for mode in ("forward", "forward_backward"):
        backward = mode == "forward_backward"
        q, keys, values = maps(shape, device, requires_grad=backward)
        grad = torch.randn_like(q)
        cases = [("ackd tf32x3", "ieee", None), ("ackd tf32", "tf32", None), ("sdpa ieee", "ieee", "sdpa"),
                 ("sdpa tf32", "tf32", "sdpa")]  # fmt: skip
        if not backward:
            cases.append(("ackd ieee (FMA units)", "ieee", "fma"))
        for name, setting, which in cases:
            if not run.time_left():
                run.skipped(f"fp32 {mode} {name}")
                continue
            attention = ops.sdpa_attention if which == "sdpa" else ops.ack_attention
            saved = k._precision
            if which == "fma" and not run.dry:
                k._precision = lambda dtype: "ieee"

            step = attention_call(attention, q, keys, values, heads, grad if backward else None)

            try:
                with _fp32_precision(setting):
                    ms = kernel_ms(step, run.dry)
                run.record(event="fp32", mode=mode, path=name, fp32_precision=setting, kernel_ms=round(ms, 5))
            except Exception as exc:
                run.record(event="fp32", mode=mode, path=name, error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                k._precision = saved
        del q, keys, values, grad


def phase_profile(run: Run) -> None:
    """One bf16 eager training step per path under torch.profiler: the top kernels and the CPU total."""
    os.environ["ACKD_BENCH_SMOKE"] = "1" if run.dry else os.environ.get("ACKD_BENCH_SMOKE", "0")
    try:
        import bench_train_step as bts
    except Exception as exc:
        run.record(event="skipped", what="profile", reason=f"{type(exc).__name__}: {exc}"[:300])
        return
    from torch.profiler import ProfilerActivity, profile

    setting = next(iter(bts.SETTINGS))
    precision = "bf16" if "bf16" in bts.PRECISIONS else "fp32"
    text = []
    for path, backend in bts.PATHS.items():
        if not run.time_left():
            run.skipped(f"profile {path}")
            continue
        try:
            task = bts.Task(setting, backend, precision, compiled=False)
            task.step()  # warm-up: compiles, creates Adam's state
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            with profile(activities=activities) as prof:
                task.step()
        except Exception as exc:
            run.record(event="profile", path=path, error=f"{type(exc).__name__}: {exc}"[:300])
            continue
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=25)
        events = prof.key_averages()
        cpu_total = sum(e.self_cpu_time_total for e in events) / 1e3
        cuda_total = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e3
        device_kernels = sum(1 for e in events if getattr(e, "self_device_time_total", 0) > 0)
        run.record(event="profile", path=path, setting=setting, precision=precision, cpu_ms=round(cpu_total, 3),
                   device_ms=round(cuda_total, 3), distinct_device_ops=device_kernels)  # fmt: skip
        text += [f"## {path} ({setting}, {precision}, eager): CPU {cpu_total:.1f} ms, device {cuda_total:.1f} ms"]
        text.append(table)
        del task
    (run.out / "profile.txt").write_text("\n".join(text) + "\n")


# ------------------------------------------------------------------------------------------------- summary


def summary(run: Run) -> str:
    lines = [f"# gpu_tune {'dry run (no figure here is a measurement)' if run.dry else 'run'}", ""]
    env = next((r for r in run.rows if r.get("event") == "env"), {})
    lines.append(f"- device {env.get('device')}, torch {env.get('torch')}, triton {env.get('triton')}, "
                 f"commit {env.get('commit')}; {time.monotonic() - run.start:.0f} s")  # fmt: skip
    lines += ["", "| shape | mode | ackd synced ms | best SDPA synced ms | ratio synced | ackd kernel ms | "
              "best SDPA kernel ms | ratio kernel |", "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    e2e: dict[tuple, dict] = {}
    for r in run.rows:
        if r.get("event") in ("e2e", "sdpa_kernel_only") and "error" not in r:
            e2e.setdefault((r["shape"], r["mode"]), {}).setdefault(r["path"], {}).update(
                {k: v for k, v in r.items() if k.endswith("_ms")}
            )
    for (shape, mode), paths in e2e.items():
        ours = paths.get("ackd_triton", {})
        sdpa = [p for name, p in paths.items() if name.startswith("sdpa_")]
        best_s = min((p["synced_ms"] for p in sdpa if "synced_ms" in p), default=math.nan)
        best_k = min((p["kernel_ms"] for p in sdpa if "kernel_ms" in p), default=math.nan)
        s, kk = ours.get("synced_ms", math.nan), ours.get("kernel_ms", math.nan)
        lines.append(f"| {shape} | {mode} | {s:.4g} | {best_s:.4g} | {best_s / s:.2f}x | {kk:.4g} | {best_k:.4g} | "
                     f"{best_k / kk:.2f}x |")  # fmt: skip
    winners = [r for r in run.rows if r.get("event") == "winner"]
    if winners:
        lines += ["", "| kernel | shape | winning tile (BM, BN, warps, stages) | ms |", "|---|---|---|---:|"]
        lines += [f"| {w['kernel']} | {w['shape']} | {tuple(w['tile'])} | {w['ms']:.4g} |" for w in winners]
    fp32 = [r for r in run.rows if r.get("event") == "fp32" and "kernel_ms" in r]
    if fp32:
        lines += ["", "| fp32 paper | path | ms |", "|---|---|---:|"]
        lines += [f"| {r['mode']} | {r['path']} | {r['kernel_ms']:.4g} |" for r in fp32]
    failed = [r for r in run.rows if r.get("event") == "correct" and not r.get("ok")]
    lines += ["", f"correctness: {sum(r.get('event') == 'correct' for r in run.rows)} checks, {len(failed)} failed"]
    lines += [f"- {r['check']} {r['kernel']} {tuple(r['tile'])}: {r.get('error') or r.get('rel_errors')}"
              for r in failed]  # fmt: skip
    op_checks = [r for r in run.rows if r.get("event") == "correct_op"]
    for r in op_checks:
        verdict = "ok" if r["ok"] else f"FAILED {r.get('error') or r['rel_errors']}"
        lines.append(f"- op, {r['check']}, {r['call']}: {verdict}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="output folder (default $OUT, else benchmarks/results/...)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: interpreter, tiny shapes, the whole plan")
    parser.add_argument("--budget-s", type=float, default=450.0, help="seconds for all phases (default 450)")
    parser.add_argument("--e2e-only", action="store_true", help=argparse.SUPPRESS)  # the baselines' subprocess
    args = parser.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run to check the plan on the CPU")
    device = "cuda" if not dry else "cpu"
    name = "dry-run" if dry else torch.cuda.get_device_name().lower().replace(" ", "-")
    default = os.environ.get("OUT") or ROOT / "benchmarks" / "results" / f"{datetime.date.today()}-{name}-tune"
    run = Run(Path(args.out or default), args.budget_s, dry)
    from bench_ack_attention import GPU_SHAPES

    from ackd_fast.kernels import configs

    shapes = DRY_SHAPES if dry else GPU_SHAPES
    if args.e2e_only:
        run.shares = dict.fromkeys(PHASES, args.budget_s)
        run.begin("baselines")
        _e2e_rows(run, shapes, device)
        return
    arch = configs.arch_of(torch.cuda.get_device_capability()) if not dry else 90

    run.begin("env")
    env = phase_env(run)

    tiles = {kernel: candidates(kernel, arch, dry) for kernel in KERNELS}
    tiles["dq_convert"] = list(configs.gpu_candidates("dq_convert", 2, 64, "ieee", arch)) if not dry else [
        configs.Tile(32, 0, 1, 1)
    ]  # fmt: skip
    run.begin("compile")
    plan = [(kernel, tile, shape, "contiguous", "ieee") for kernel in KERNELS for tile in tiles[kernel]
            for shape in (shapes["paper"], (*ODD[:4], ODD[4], len(ODD[4]), torch.bfloat16))]  # fmt: skip
    for precision, element in (("tf32x3", 4), ("tf32", 4), ("ieee", 4)):
        fp32_shape = (*shapes["paper"][:-1], torch.float32)
        plan += [(kernel, tile, fp32_shape, "contiguous", precision) for kernel in KERNELS
                 for tile in configs.gpu_candidates(kernel, element, 64, precision, arch)]  # fmt: skip
    phase_compile(run, plan)

    run.begin("correct")
    tiles = phase_correct(run, tiles, shapes, device)

    run.begin("forward")
    rows = phase_sweep(run, ("forward", "forward_tma"), tiles, shapes, device)
    run.begin("backward")
    rows += phase_sweep(run, ("dkdv", "dq", "dkdv_fused", "dq_convert"), tiles, shapes, device)

    run.begin("winners")
    tuned = phase_winners(run, rows, arch, env)

    run.begin("baselines")
    phase_baselines(run, shapes, device, tuned, arch)

    run.begin("fp32")
    phase_fp32(run, shapes, device)

    run.begin("profile")
    phase_profile(run)

    text = summary(run)
    (run.out / "summary.md").write_text(text)
    print(text)
    print(f"results: {run.out}/results.jsonl; tuned file: {tuned} (copy to kernels/tuned/ to ship)")


if __name__ == "__main__":
    main()
