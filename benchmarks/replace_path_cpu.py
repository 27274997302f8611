"""What replacing a teacher's tap costs through hooks (the whole forward runs, the tap's value swapped in) and
through the torch.fx split (only what the output still needs runs): `ModuleTaps(..., replace_path=...)`.

Each case times `teacher(x, replace={tap: t})` forward and backward to `t` (the distiller's teacher path: a frozen
teacher in eval mode, gradients only into the replacement), CPU fp32, batch 1, 2 threads. Cases: resnet_9blocks
(ngf 64, 256x256) at "stages.block6" and "stages.block9"; unet_256 (ngf 64, 256x256) at "stages.dec2" (the
decoder next to the output) and "stages.dec5" (mid-decoder: the split still runs encoders 1-4 for their skips).
The two paths alternate round by round (which one goes first swaps each round), one warm-up call each first; the
table gives each path's median, the median of the rounds' hook/split ratios, and the FLOPs of each path's forward
and backward (torch.utils.flop_counter), the ratio the time would have if every FLOP cost the same.

    python benchmarks/replace_path_cpu.py --out DIR [--rounds 7]   # about 2 minutes on 2 cores
    python benchmarks/replace_path_cpu.py --quick                  # smoke run: ngf 4, small images, 1 round
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ackd_fast.models import build_generator
from ackd_fast.models.module_taps import ModuleTaps

CASES = [("resnet_9blocks", "stages.block6"), ("resnet_9blocks", "stages.block9"),
         ("unet_256", "stages.dec2"), ("unet_256", "stages.dec5")]  # fmt: skip
PATHS = ("hook", "split")


def _step(tapped: ModuleTaps, x, tap: str, t: torch.Tensor, grad: torch.Tensor) -> float:
    start = time.perf_counter()
    tapped(x, replace={tap: t}).backward(grad)
    seconds = time.perf_counter() - start
    t.grad = None
    return seconds


def _step_flops(tapped: ModuleTaps, x, tap: str, t: torch.Tensor, grad: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        tapped(x, replace={tap: t}).backward(grad)
    t.grad = None
    return counter.get_total_flops()


def run_case(generator: str, tap: str, ngf: int, size: int, rounds: int) -> dict:
    torch.manual_seed(0)
    teacher = build_generator(generator, ngf).eval().requires_grad_(False)
    tapped = {path: ModuleTaps(teacher, [tap], replace_path=path) for path in PATHS}
    assert tapped["split"].replace_path_used == "split"
    x = torch.rand(1, 3, size, size) * 2 - 1
    with torch.no_grad():
        out, features = tapped["hook"](x, taps=[tap])
    t, grad = features[tap].clone().requires_grad_(True), torch.randn_like(out)
    for path in PATHS:  # warm-up; the split's graph is built here
        _step(tapped[path], x, tap, t, grad)
    seconds: dict[str, list[float]] = {path: [] for path in PATHS}
    for r in range(rounds):
        for path in PATHS if r % 2 == 0 else PATHS[::-1]:
            seconds[path].append(_step(tapped[path], x, tap, t, grad))
    ratios = [h / s for h, s in zip(seconds["hook"], seconds["split"], strict=True)]
    flops = {path: _step_flops(tapped[path], x, tap, t, grad) for path in PATHS}
    return {"generator": generator, "ngf": ngf, "size": size, "tap": tap, "seconds": seconds,
            "median_ms": {p: 1000 * statistics.median(s) for p, s in seconds.items()},
            "ratio_hook_over_split": statistics.median(ratios),
            "step_gflop": {p: f / 1e9 for p, f in flops.items()}}  # fmt: skip


def table(results: list[dict]) -> str:
    lines = ["| model | tap | hook (ms) | split (ms) | hook/split (median of rounds) | GFLOP fwd+bwd hook / split |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        ms, gf = r["median_ms"], r["step_gflop"]
        lines.append(f"| {r['generator']} ngf {r['ngf']}, {r['size']}x{r['size']} | {r['tap']} | {ms['hook']:.1f} | "
                     f"{ms['split']:.1f} | **{r['ratio_hook_over_split']:.2f}x** | {gf['hook']:.2f} / "
                     f"{gf['split']:.2f} ({gf['hook'] / gf['split']:.2f}x) |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for results.md and results.json (none: print only)")
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds per case")
    parser.add_argument("--quick", action="store_true", help="smoke run: ngf 4, 64x64 ResNet, 1 round")
    a = parser.parse_args(argv)
    torch.set_num_threads(2)
    ngf, rounds = (4, 1) if a.quick else (64, a.rounds)
    results = []
    for generator, tap in CASES:
        size = 64 if a.quick and generator.startswith("resnet") else 256  # unet_256 needs 256 px
        results.append(run_case(generator, tap, ngf, size, rounds))
        print(f"{generator} {tap}: {results[-1]['median_ms']}, hook/split "
              f"{results[-1]['ratio_hook_over_split']:.2f}x", flush=True)  # fmt: skip
    text = table(results)
    print(text)
    if a.out:
        from report import environment  # benchmarks/report.py, beside this script

        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        env = environment()
        (out / "results.json").write_text(json.dumps({"environment": env, "rounds": rounds, "results": results},
                                                     indent=1) + "\n")  # fmt: skip
        header = (f"# Replacing a tap: hook path vs torch.fx split (CPU, {torch.get_num_threads()} threads)\n\n"
                  f"`python benchmarks/replace_path_cpu.py --rounds {rounds}`: {env['cpu']}; torch {env['torch']}; "
                  f"commit {env['commit']}; {env['date']}. Forward + backward to the replacement, batch 1, fp32, "
                  f"frozen teacher in eval mode; paired rounds: {rounds}, the paths alternating.\n\n")  # fmt: skip
        (out / "results.md").write_text(header + text + "\n")


if __name__ == "__main__":
    main()
