"""Host time per call of the fast ops: what an eager GPU user pays on the CPU side of every call (input checks,
launch-cache lookup, dispatch, output allocation, autograd), measured on the CPU where the kernels take no time.

Rows (forward+backward, and ACK-A's forward without grad), each with what a user would run instead:
  ack_attention       `ops.ack_attention` in plain eager mode (the kernels under an autograd.Function), against
                      `op`: the same call through the `ackd_fast::ack_attention` custom op and its registered
                      autograd (what compile, tracing and dispatch modes take). The kernels run once in the Triton
                      interpreter so the launch cache holds their plans, then the launches are removed: what is
                      timed is everything else.
  ack_accumulate      the C++ op (CPU kernel) on 3 tiny sources, against the PyTorch composition
                      (F.interpolate per source, weighted sum)
  instance_norm_act_residual   the C++ op on a tiny map, against relu(F.instance_norm(x, w, b)) + residual
Tiny maps (8 channels, 8x8; ACK-A: 4 heads of 64 on 8x8 maps, 3 sources) keep the kernels' own time to a few
microseconds. A GPU run adds a few microseconds per kernel launch and has the CUDA caching allocator where this has
the CPU allocator's.

Rows are timed alternately in one process; processes alternate between this tree and, with --baseline DIR, a
directory that holds another build of ackd_fast (an older commit's, say) first on PYTHONPATH.

    python benchmarks/host_overhead_cpu.py --out DIR [--baseline DIR] [--repeats 3] [--rounds 10] [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import report  # benchmarks/report.py, beside this script

BATCH, HEADS, HEAD_DIM, SIDE, SOURCES, CHANNELS = 1, 4, 64, 8, 3, 8


def _attention_calls():
    import torch

    from ackd_fast import ops
    from ackd_fast.ops import attention

    c = HEADS * HEAD_DIM
    q = torch.randn(BATCH, c, SIDE, SIDE, requires_grad=True)
    keys = [torch.randn(BATCH, c, SIDE, SIDE, requires_grad=True) for _ in range(SOURCES)]
    values = [torch.randn(BATCH, c, SIDE, SIDE, requires_grad=True) for _ in range(SOURCES)]
    grad = torch.randn(BATCH, c, SIDE, SIDE)
    eager = getattr(attention, "_plain_eager", None)  # absent in a build from before the eager path

    def path(plain_eager):
        def choose():
            if eager is not None:
                attention._plain_eager = plain_eager

        def forward():
            choose()
            with torch.no_grad():
                ops.ack_attention(q, keys, values, HEADS)

        def forward_backward():
            choose()
            ops.ack_attention(q, keys, values, HEADS).backward(grad)

        return forward, forward_backward

    calls = {}
    for name, plain_eager in (("", eager), (" (op)", lambda: False)):
        forward, forward_backward = path(plain_eager)
        calls[f"ack_attention forward{name}"] = forward
        calls[f"ack_attention forward+backward{name}"] = forward_backward
    for fn in calls.values():  # the interpreter runs each path's kernels once: their plans are cached
        fn()
    from ackd_fast.kernels import ack_attention as kernels

    kernels._launch_plan = lambda plan, tensors: None
    return calls


def _fusion_calls():
    import torch
    import torch.nn.functional as F

    from ackd_fast import ops

    sources = [torch.randn(BATCH, CHANNELS, s, s, requires_grad=True) for s in (SIDE // 2, 3 * SIDE // 4, SIDE)]
    weights = torch.randn(len(sources), requires_grad=True)
    x, residual = (torch.randn(BATCH, CHANNELS, SIDE, SIDE, requires_grad=True) for _ in range(2))
    w, b = torch.randn(CHANNELS, requires_grad=True), torch.randn(CHANNELS, requires_grad=True)
    grad = torch.randn(BATCH, CHANNELS, SIDE, SIDE)
    size = (SIDE, SIDE)

    def accumulate_torch():
        return sum(weights[j] * F.interpolate(s, size, mode="bilinear") for j, s in enumerate(sources))

    return {
        "ack_accumulate forward+backward": lambda: ops.ack_accumulate(sources, weights, size).backward(grad),
        "ack_accumulate forward+backward (torch)": lambda: accumulate_torch().backward(grad),
        "instance_norm_act_residual forward+backward": lambda: ops.instance_norm_act_residual(
            x, w, b, residual
        ).backward(grad),
        "instance_norm_act_residual forward+backward (torch)": lambda: (
            F.relu(F.instance_norm(x, weight=w, bias=b)) + residual
        ).backward(grad),
    }


def child(rounds: int, calls: int) -> None:
    """Times every row in this process, rows alternating; prints {row: [us per call, one per round]}."""
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    torch.manual_seed(0)
    todo = {**_attention_calls(), **_fusion_calls()}
    for fn in todo.values():
        for _ in range(20):
            fn()
    us: dict[str, list[float]] = {row: [] for row in todo}
    for _ in range(rounds):
        for row, fn in todo.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            us[row].append((time.perf_counter() - start) / calls * 1e6)
    import ackd_fast

    print(json.dumps({"ackd_fast": ackd_fast.__file__, "torch": torch.__version__, "us": us}))


def run_child(pythonpath: str | None, rounds: int, calls: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--child", "--rounds", str(rounds), "--calls", str(calls)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/" if pythonpath else None)
    if out.returncode:
        raise SystemExit(f"host_overhead_cpu.py: a timing process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for host_overhead_cpu.json and .md")
    parser.add_argument("--baseline", help="a folder holding another build's ackd_fast package, timed alternately")
    parser.add_argument("--repeats", type=int, default=3, help="processes per build, alternated")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per row in a process")
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.child:
        return child(a.rounds, a.calls)
    if not a.out:
        parser.error("--out is required")
    builds = {"this": None, **({"baseline": str(Path(a.baseline).resolve())} if a.baseline else {})}
    runs: dict[str, list[dict]] = {name: [] for name in builds}
    for _ in range(a.repeats):
        for name, path in builds.items():
            runs[name].append(run_child(path, a.rounds, a.calls))
    median = {
        name: {row: statistics.median(t for r in rs for t in r["us"].get(row, [])) for row in rs[0]["us"]}
        for name, rs in runs.items()
    }
    this = median["this"]
    header = "| row | this build us |" + (" baseline us | this / baseline |" if a.baseline else "")
    lines = [
        f"Host time per call (us, median of {a.repeats} processes x {a.rounds} rounds of {a.calls} calls), "
        f"torch {runs['this'][0]['torch']}, {os.cpu_count()} CPUs, one thread" + (
            f"; baseline: {a.baseline}" if a.baseline else ""),
        "",
        header,
        "|---|---:|" + ("---:|---:|" if a.baseline else ""),
    ]  # fmt: skip
    for row, us in this.items():
        line = f"| {row} | {us:.1f} |"
        if a.baseline:
            base = median["baseline"].get(row)
            line += f" {base:.1f} | {us / base:.2f}x |" if base else " - | - |"
        lines.append(line)
    report.write_result(a.out, "host_overhead_cpu", {"median_us": median, "runs": runs}, lines)


if __name__ == "__main__":
    main()
