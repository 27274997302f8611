"""The `ackd-fast` command. It only parses flags and calls into the package."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ackd_fast
from ackd_fast.modules import ACKAttention, ACKFusion, ACKRefiner

# The paper's setting (DESIGN.md): a ResNet teacher with ngf 64 at 256x256 has 4*ngf = 256 channels at
# H/4 x W/4 = 64x64 in every tap, and the last deep stage reads the three taps before it.
PAPER_CHANNELS = 256
PAPER_SIZE = 64
PAPER_SOURCES = 3


def _time_ms(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call, synchronised on CUDA."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def demo(args: argparse.Namespace) -> None:
    """Runs the three ACK modules on random feature maps of the paper's shapes; prints backends and timings."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    c, s, k = args.channels, args.size, PAPER_SOURCES
    deep = torch.randn(args.batch, c, s, s, device=device)
    sources = [torch.randn(args.batch, c, s, s, device=device) for _ in range(k)]
    print("backends:", json.dumps(ackd_fast.backends(), indent=2))
    print(f"\nfeature maps: deep {tuple(deep.shape)}, {k} sources {tuple(sources[0].shape)}, {device}, fp32")
    print(f"{'module':<14} {'params':>10} {'forward ms':>11} {'fwd+bwd ms':>11}")
    modules = {
        "ACKAttention": ACKAttention(c, [c] * k, heads=args.heads),
        "ACKFusion": ACKFusion(c, [c] * k),
        "ACKRefiner": ACKRefiner(c, [c] * k, heads=args.heads),
    }
    for name, module in modules.items():
        module.to(device)
        params = sum(p.numel() for p in module.parameters())
        with torch.no_grad():
            fwd = _time_ms(lambda m=module: m(deep, sources), args.repeats, device)
        fwd_bwd = _time_ms(lambda m=module: m(deep, sources).square().mean().backward(), args.repeats, device)
        print(f"{name:<14} {params:>10,} {fwd:>11.1f} {fwd_bwd:>11.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ackd-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="run the ACK modules on random feature maps of the paper's shapes")
    p.add_argument("--batch", type=int, default=1, help="batch size B (default 1)")
    p.add_argument("--channels", type=int, default=PAPER_CHANNELS, help="channels of every map (default 256)")
    p.add_argument("--size", type=int, default=PAPER_SIZE, help="height and width of every map (default 64)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is shown")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
