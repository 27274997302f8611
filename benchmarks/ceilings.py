"""The device's ceilings, measured once per suite run: copy bandwidth and matmul rate. summary.md reports every
benchmark's rate as a percentage of these (memory-bound ops against the copy, compute-bound ones against the matmul).

    python benchmarks/ceilings.py OUT/ceilings.json          # cuda when present, else cpu
    python benchmarks/ceilings.py OUT/ceilings.json --tiny   # seconds-long sizes, to check the code (CI)

copy:   dst.copy_(src) of one large buffer; bandwidth = bytes read + bytes written per second (what a memory-bound
        kernel moves is counted the same way).
matmul: a @ b of square matrices, 2*n^3 FLOPs; bf16 on CUDA, fp32 on CPU (what the CPU benchmarks run in).
Each is the best of several timed repeats, after warm-up: a ceiling is what the device reaches, not a typical call.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# device: (copy buffer bytes, matmul n, matmul dtype); the tiny sizes only exercise the code
SIZES = {
    "cuda": (1 << 30, 8192, torch.bfloat16),  # 1 GiB: far beyond L2; 8192^3: enough tiles for every SM
    "cpu": (64 << 20, 2048, torch.float32),  # 64 MiB: beyond the last-level cache of most CPUs
}
TINY = {"cuda": (16 << 20, 1024, torch.bfloat16), "cpu": (1 << 20, 128, torch.float32)}
REPEATS = 10


def best_seconds(fn, device: str, repeats: int = REPEATS) -> float:
    """The fastest of `repeats` calls of fn(), after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times)


def copy_seconds(device: str, nbytes: int) -> float:
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return best_seconds(lambda: dst.copy_(src), device)


def matmul_seconds(device: str, n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return best_seconds(lambda: a @ b, device)


def measure(device: str, tiny: bool = False) -> dict:
    copy_bytes, n, dtype = (TINY if tiny else SIZES)[device]
    copy_s, matmul_s = copy_seconds(device, copy_bytes), matmul_seconds(device, n, dtype)
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "tiny": tiny,
        "copy_bytes": copy_bytes,
        "copy_gb_per_s": 2 * copy_bytes / copy_s / 1e9,  # read + write
        "matmul_n": n,
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_tflops": 2 * n**3 / matmul_s / 1e12,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the JSON file to write")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the code, measures nothing useful")
    args = parser.parse_args()
    result = measure(args.device, args.tiny)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['device']}: copy {result['copy_gb_per_s']:.1f} GB/s, "
        f"{result['matmul_dtype']} matmul {result['matmul_tflops']:.3f} TFLOP/s"
    )


if __name__ == "__main__":
    main()
