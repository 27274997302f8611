"""Committed tuning results per GPU architecture, kernels/tuned/sm<arch>.json, and the size classes they use.

A file holds three lists (format 1):
  candidates  per (kernel, dot class, BLOCK_D class): the tiles of the wide search space (configs.SEARCH_SPACE)
              that compile for the arch without spills or stack and within shared memory (`python -m
              ackd_fast.kernels.tuning --prune`, on a CPU); what benchmarks/gpu_tune.py times. Not a timing.
  winners     per (kernel, dot class, BLOCK_D class, size class): the fastest tile, with its time, written by
              gpu_tune.py on a GPU. The autotuner then runs that tile alone for the class (configs.prune), so a
              user never waits for autotuning.
  backends    per (dtype, mode, BLOCK_D class, size class): which of the Triton kernels and PyTorch's SDPA was
              faster end to end, with both times; ACKAttention(backend="auto") follows it (ops.dispatch).
  backward    per (dtype, BLOCK_D class, size class): whether the fused backward (dQ by fp32 atomics) or the
              two-kernel one was faster, with both times; the backward follows it outside deterministic mode.
  forward_kernel  per (dtype, BLOCK_D class, size class): whether the forward through tensor descriptors (TMA,
              warp-specialised) or through pointers was faster, with both times; the forward follows it where the
              TMA kernel can read the inputs.
Every winners/backends entry carries "measured": true, the device and the times it was measured with; entries
without them are refused, so the file never holds an invented timing. The size class is `tune_bucket`, the
autotuner's key. This module imports neither Triton nor the kernels: ops.dispatch reads it on any machine.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

FORMAT = 1
# ACKD_TUNED_DIR: another folder of sm<arch>.json files (gpu_tune.py's baselines run the op with the new winners)
TUNED_DIR = Path(os.environ.get("ACKD_TUNED_DIR") or Path(__file__).resolve().parent / "tuned")
BLOCK_D_CLASSES = ("small", "large")  # BLOCK_D <= 64, 128 (configs.block_d_class)
MODES = ("forward", "forward_backward")


def tune_bucket(q_tokens: int, kv_tokens: int, batch_heads: int) -> int:
    """The size class of a launch: the next powers of two of the query tokens, all key tokens and batch x heads in
    one int (the autotuner's key), so a new image size retunes only when it changes class."""

    def log2_ceil(n: int) -> int:
        return max(0, n - 1).bit_length()

    return (log2_ceil(q_tokens) * 64 + log2_ceil(kv_tokens)) * 64 + log2_ceil(batch_heads)


def head_dim_class(head_dim: int) -> str:
    return "small" if head_dim <= 64 else "large"


class Tuned(NamedTuple):
    arch: int
    path: str | None  # None: no file for this arch
    candidates: dict[tuple[str, str, str], tuple[tuple[int, int, int, int], ...]]
    winners: dict[tuple[str, str, str, int], tuple[int, int, int, int]]
    backends: dict[tuple[str, str, str, int], str]
    raw: dict[str, Any]
    backward: dict[tuple[str, str, int], str]  # (dtype, BLOCK_D class, size class): "fused" or "two_kernel"
    forward_kernel: dict[tuple[str, str, int], str]  # (dtype, BLOCK_D class, size class): "tma" or "pointer"

    @property
    def measured(self) -> bool:
        return bool(self.winners or self.backends or self.backward or self.forward_kernel)

    def summary(self) -> dict[str, Any]:
        """What `ackd_fast.backends()` reports."""
        return {
            "file": self.path,
            "measured": self.measured,
            "device": self.raw.get("device"),
            "winners": len(self.winners),
            "backend_rules": len(self.backends),
            "backward_rules": len(self.backward),
            "forward_kernel_rules": len(self.forward_kernel),
            "candidates": sum(len(t) for t in self.candidates.values()),
        }


def path_for(arch: int) -> Path:
    return TUNED_DIR / f"sm{arch}.json"


def _measured(entry: dict, times: tuple[str, ...], where: str) -> None:
    if entry.get("measured") is not True or not entry.get("device"):
        raise ValueError(f"{where}: an entry without \"measured\": true and its device: {entry}")
    for t in times:
        if not isinstance(entry.get(t), (int, float)) or entry[t] <= 0:
            raise ValueError(f"{where}: an entry without a measured time {t!r}: {entry}")


def parse(data: dict[str, Any], arch: int, where: str = "tuned file") -> Tuned:
    """A Tuned from a file's JSON, checked: format, arch, and a measured time on every winner and backend rule."""
    if data.get("format") != FORMAT or data.get("arch") != arch:
        raise ValueError(f"{where}: expected format {FORMAT} for arch {arch}, got {data.get('format')}, "
                         f"{data.get('arch')}")  # fmt: skip
    candidates = {
        (c["kernel"], c["dot_class"], c["block_d_class"]): tuple(tuple(t) for t in c["tiles"])
        for c in data.get("candidates", [])
    }
    winners = {}
    for w in data.get("winners", []):
        _measured(w, ("ms",), where)
        winners[w["kernel"], w["dot_class"], w["block_d_class"], int(w["bucket"])] = tuple(w["tile"])
    backends = {}
    for b in data.get("backends", []):
        _measured(b, ("triton_ms", "sdpa_ms"), where)
        if b["winner"] not in ("triton", "sdpa") or b["mode"] not in MODES:
            raise ValueError(f"{where}: a backend rule with winner {b['winner']!r}, mode {b['mode']!r}")
        backends[b["dtype"], b["mode"], b["block_d_class"], int(b["bucket"])] = b["winner"]
    backward = {}
    for b in data.get("backward", []):
        _measured(b, ("fused_ms", "two_kernel_ms"), where)
        if b["winner"] not in ("fused", "two_kernel"):
            raise ValueError(f"{where}: a backward rule with winner {b['winner']!r}")
        backward[b["dtype"], b["block_d_class"], int(b["bucket"])] = b["winner"]
    forward_kernel = {}
    for f in data.get("forward_kernel", []):
        _measured(f, ("tma_ms", "pointer_ms"), where)
        if f["winner"] not in ("tma", "pointer"):
            raise ValueError(f"{where}: a forward_kernel rule with winner {f['winner']!r}")
        forward_kernel[f["dtype"], f["block_d_class"], int(f["bucket"])] = f["winner"]
    return Tuned(arch, where, candidates, winners, backends, data, backward, forward_kernel)


@functools.cache
def load(arch: int) -> Tuned:
    """The committed results for `arch` (80 or 90, configs.arch_of), empty when there is no file."""
    path = path_for(arch)
    if not path.exists():
        return Tuned(arch, None, {}, {}, {}, {}, {}, {})
    return parse(json.loads(path.read_text()), arch, str(path))


def backend_winner(arch: int, dtype: str, training: bool, head_dim: int, bucket: int) -> str | None:
    """"triton" or "sdpa" where the committed measurements of `arch` decide this call's class, else None."""
    mode = "forward_backward" if training else "forward"
    return load(arch).backends.get((dtype, mode, head_dim_class(head_dim), bucket))


def write(path: Path, data: dict[str, Any]) -> None:
    """Writes a tuned file after checking it parses (so a malformed one is never committed)."""
    parse(data, data["arch"], str(path))
    path.write_text(json.dumps(data, indent=1) + "\n")


def prune_search_space(arch: int, workers: int | None = None) -> list[dict[str, Any]]:
    """The `candidates` list: every tile of configs.SEARCH_SPACE that compiles for `arch` (bf16, head dim 64, 3
    sources, both layouts: the benchmarked case) with no problems (kernels/aot.py: no spills or stack, shared
    memory within the limit, tensor cores, warp specialisation kept where asked)."""
    from ackd_fast.kernels import aot, configs

    todo = [
        (aot.Case(kernel, "bf16", 64, layout, 3, tile, arch), ())
        for (kernel, dot_class), tiles in configs.SEARCH_SPACE.items()
        for tile in tiles
        for layout in aot.LAYOUTS
    ]
    reports = aot.compile_cases(todo, workers)
    bad = {(r.kernel, r.tile) for r in reports if aot.problems(r)}
    out = []
    for (kernel, dot_class), tiles in configs.SEARCH_SPACE.items():
        kept = [list(t) for t in tiles if (kernel, t) not in bad]
        out.append({"kernel": kernel, "dot_class": dot_class, "block_d_class": "small", "tiles": kept,
                    "measured": False, "searched": len(tiles)})  # fmt: skip
    return out


def main() -> None:
    """`python -m ackd_fast.kernels.tuning --prune [--arch 90] [--workers N]`: compile the search space for the
    arch on this machine (no GPU needed) and write the surviving tiles as the file's `candidates`, keeping its
    measured winners and backend rules."""
    import argparse
    import datetime

    import triton

    parser = argparse.ArgumentParser(prog="python -m ackd_fast.kernels.tuning")
    parser.add_argument("--prune", action="store_true", required=True)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    path = path_for(args.arch)
    data = json.loads(path.read_text()) if path.exists() else {"format": FORMAT, "arch": args.arch}
    data["candidates"] = prune_search_space(args.arch, args.workers)
    data["candidates_note"] = (
        f"compiled for sm_{args.arch} with Triton {triton.__version__} on "
        f"{datetime.date.today().isoformat()} (no GPU): tiles without spills, stack or shared memory over the limit; "
        "not timed"
    )
    data.setdefault("winners", [])
    data.setdefault("backends", [])
    write(path, data)
    kept = sum(len(c["tiles"]) for c in data["candidates"])
    print(f"{path}: {kept} of {sum(c['searched'] for c in data['candidates'])} tiles compile cleanly")


if __name__ == "__main__":
    main()
