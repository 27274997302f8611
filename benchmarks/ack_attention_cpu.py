"""ACK-A off the GPU at the paper's shape: the path `auto` runs there (`ops.sdpa_attention`, PyTorch's fused
attention over the sources' tokens) against the materialising composition of the spec (`reference.ack_attention`,
which held the whole score matrix before the SDPA path existed), forward+backward, time and peak memory.

Shape: the deepest tap of a 256x256 image, one image: queries 64x64 (4,096 tokens), three sources of 64x64
(12,288 keys), 4 heads of 64, fp32. Each path runs in a fresh process (so that one's allocations cannot lower the
other's peak): `rounds` timed calls after one untimed, the peak resident size (VmHWM, reset after the inputs are
made) beyond the inputs; paths alternate process by process. The peak includes what a first call loads and keeps
(about 40 MiB here, what `--side 8` shows for both paths).

    python benchmarks/ack_attention_cpu.py --out DIR [--rounds 3] [--repeats 2]    # about 2 minutes on 2 cores
    python benchmarks/ack_attention_cpu.py --out DIR --side 8 --rounds 1 --repeats 1   # CI: seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import report  # benchmarks/report.py, beside this script

PATHS = ("sdpa", "reference")
BATCH, HEADS, HEAD_DIM = 1, 4, 64

_CHILD = r"""
import json, re, sys, time
import torch
from ackd_fast import ops, reference

def peak_mib():
    return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) / 1024

path, rounds, b, heads, d, side, n = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:8])
torch.manual_seed(0)
q = torch.randn(b, heads * d, side, side, requires_grad=True)
keys = [torch.randn(b, heads * d, side, side, requires_grad=True) for _ in range(n)]
values = [torch.randn(b, heads * d, side, side, requires_grad=True) for _ in range(n)]
grad = torch.randn(b, heads * d, side, side)
fn = ops.sdpa_attention if path == "sdpa" else reference.ack_attention
with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) from here on
    f.write("5")
before = peak_mib()
times = []
for i in range(rounds + 1):
    t = time.perf_counter()
    fn(q, keys, values, heads).backward(grad)
    if i:
        times.append(time.perf_counter() - t)
    for x in (q, *keys, *values):
        x.grad = None
print(json.dumps({"path": path, "seconds": times, "peak_mib": peak_mib() - before}))
"""


def run(path: str, rounds: int, side: int, sources: int) -> dict:
    args = [str(v) for v in (rounds, BATCH, HEADS, HEAD_DIM, side, sources)]
    out = subprocess.run([sys.executable, "-c", _CHILD, path, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for ack_attention_cpu.json and .md")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per process")
    parser.add_argument("--repeats", type=int, default=2, help="processes per path, alternated")
    parser.add_argument("--side", type=int, default=64, help="the maps' side (64: a 256x256 image's taps)")
    parser.add_argument("--sources", type=int, default=3, help="source maps (3: the deepest tap's)")
    a = parser.parse_args(argv)
    results: dict[str, list[dict]] = {p: [] for p in PATHS}
    for _ in range(a.repeats):
        for path in PATHS:
            results[path].append(run(path, a.rounds, a.side, a.sources))
            print(results[path][-1], flush=True)
    nq, nkv = a.side * a.side, a.sources * a.side * a.side
    flops = 3.5 * 4 * BATCH * HEADS * nq * nkv * HEAD_DIM  # forward 4*B*h*Nq*Nkv*d, backward 2.5x that
    rows = []
    for path, runs in results.items():
        seconds = statistics.median(s for r in runs for s in r["seconds"])
        rows.append({"path": path, "median_s": seconds, "gflop_per_s": flops / seconds / 1e9,
                     "peak_mib": max(r["peak_mib"] for r in runs), "runs": runs})  # fmt: skip
    sdpa, ref = rows
    lines = [
        f"ACK-A forward+backward, fp32 CPU, B {BATCH}, {HEADS} heads of {HEAD_DIM}, Nq {nq}, Nkv {nkv} "
        f"({a.sources} sources): {flops / 1e9:.0f} GFLOP a call",
        "",
        "| path | median s | GFLOP/s | peak MiB beyond the inputs |",
        "|---|---:|---:|---:|",
        *(f"| {r['path']} | {r['median_s']:.2f} | {r['gflop_per_s']:.0f} | {r['peak_mib']:.0f} |" for r in rows),
        "",
        f"sdpa / reference: time {sdpa['median_s'] / ref['median_s']:.2f}x, peak memory "
        f"{sdpa['peak_mib'] / ref['peak_mib']:.3f}x",
    ]
    report.write_result(a.out, "ack_attention_cpu", {"flops": flops, "rows": rows}, lines)


if __name__ == "__main__":
    main()
