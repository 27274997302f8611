"""summary.md from a suite run: for every benchmark group, ackd_fast's path against the best PyTorch path.

    python benchmarks/report.py OUT_DIR          # OUT_DIR/*.json (+ ceilings.json, phases.tsv) -> OUT_DIR/summary.md
    python benchmarks/report.py results.json     # one pytest --benchmark-json file: the table on stdout

Per group (one shape, device, dtype and pass of one benchmark): the fast path (the fastest path whose extra_info
says `ackd_fast`), the best PyTorch path (the fastest of the others), their median times and ratio (PyTorch / fast:
above 1 means ackd_fast is faster), the fast path's rate and its share of the device's ceiling (ceilings.py,
measured in the same run): FLOP/s against the matmul rate when the benchmark records `flops`, bytes/s against the
copy bandwidth when it records `bytes`; images/s when it records `images`; and both paths' peak memory.

The header (device, torch/triton/CUDA versions, commit) comes from `environment()`, which benchmarks/conftest.py
stores in every JSON's machine_info, so a summary can be rebuilt from committed JSON on any machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Paths that are ackd_fast's in JSON written before the benchmarks recorded extra_info["ackd_fast"].
LEGACY_FAST_PATHS = {"extension", "ackd_triton", "ackd"}
NOT_BENCHMARKS = {"ceilings.json"}


def write_result(out: str | Path, stem: str, data, lines: list[str]) -> None:
    """What a CPU benchmark script leaves: OUT/stem.json (`data`) and OUT/stem.md (`lines`), the table also on
    stdout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------------- environment


def git_commit() -> str:
    """ACKD_GIT_COMMIT when set (a copy of the tree without .git), else `git describe`-like: the short hash, with
    "+dirty" when the tree has changes; "unknown" without git."""
    if os.environ.get("ACKD_GIT_COMMIT"):
        return os.environ["ACKD_GIT_COMMIT"]
    try:
        run = lambda *args: subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        commit = run("rev-parse", "--short", "HEAD")
        return commit + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What a result depends on besides the code: device, library versions, the built extension, commit, date."""
    import torch

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(),
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        env["gpu"] = f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    else:
        env["gpu"] = None
    try:
        from ackd_fast import ops
    except ImportError as exc:
        env["extension"] = f"not importable: {exc}"
        return env
    if not ops.EXTENSION_LOADED:
        env["extension"] = f"not loaded: {ops.EXTENSION_ERROR}"
    else:
        cuda = ops.extension_cuda_version()
        env["extension"] = f"built with CUDA {cuda // 1000}.{cuda % 1000 // 10}" if cuda else "built for CPU only"
    return env


# ----------------------------------------------------------------------------------------------- the summary


def _is_fast(bench: dict) -> bool:
    info = bench["extra_info"]
    return bool(info["ackd_fast"]) if "ackd_fast" in info else info.get("path") in LEGACY_FAST_PATHS


def _peak(bench: dict) -> float | None:
    info = bench["extra_info"]
    if info.get("peak_memory_bytes") is not None:
        return info["peak_memory_bytes"] / 2**20
    return info.get("peak_memory_mb")  # older JSON


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def rate(bench: dict, ceilings: dict | None) -> tuple[str, str]:
    """(the fast path's rate, its percentage of the matching ceiling) as table cells."""
    info, seconds = bench["extra_info"], bench["stats"]["median"]
    cells, percent = [], "-"
    if info.get("images"):
        cells.append(f"{info['images'] / seconds:.3g} img/s")
    if info.get("flops"):
        flop_rate = info["flops"] / seconds
        cells.append(_si(flop_rate, "FLOP/s"))
        if ceilings:
            percent = f"{100 * flop_rate / (ceilings['matmul_tflops'] * 1e12):.1f}% mm"
    elif info.get("bytes"):
        byte_rate = info["bytes"] / seconds
        cells.append(_si(byte_rate, "B/s"))
        if ceilings:
            percent = f"{100 * byte_rate / (ceilings['copy_gb_per_s'] * 1e9):.1f}% copy"
    return ", ".join(cells) or "-", percent


def _kernel_only_ratio(fast: dict | None, benches: list[dict]) -> str:
    """The best PyTorch path's kernel-only time over the fast path's (extra_info["kernel_ms"]: CUDA events over
    back-to-back calls, the host's per-call overhead hidden), beside the synced per-call ratio; "-" where not
    recorded."""
    others = [b["extra_info"]["kernel_ms"] for b in benches if not _is_fast(b) and b["extra_info"].get("kernel_ms")]
    if not fast or not fast["extra_info"].get("kernel_ms") or not others:
        return "-"
    return f"{min(others) / fast['extra_info']['kernel_ms']:.2f}x"


def table(data: dict, ceilings: dict | None) -> list[str]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        if bench.get("stats") and bench["stats"].get("median"):  # --benchmark-disable writes no timings
            groups[bench["group"] or bench["name"]].append(bench)
    lines = [
        "| group | fast path | ms | best PyTorch path | ms | ratio | kernel-only ratio | fast path rate | of ceiling "
        "| peak MiB fast | peak MiB PyTorch |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, benches in groups.items():
        fast = min((b for b in benches if _is_fast(b)), key=lambda b: b["stats"]["median"], default=None)
        other = min((b for b in benches if not _is_fast(b)), key=lambda b: b["stats"]["median"], default=None)
        cells = [name]
        for b in (fast, other):
            cells += [b["extra_info"]["path"], f"{b['stats']['median'] * 1e3:.3g}"] if b else ["-", "-"]
        cells.append(f"{other['stats']['median'] / fast['stats']['median']:.2f}x" if fast and other else "-")
        cells.append(_kernel_only_ratio(fast, benches))
        cells += rate(fast, ceilings) if fast else ["-", "-"]
        cells += [_mib(_peak(fast)) if fast else "-", _mib(_peak(other)) if other else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def role_ratios(data: dict) -> list[str]:
    """bench_deploy: per batch and dtype, the teacher's time over the student's beside their MAC ratio (same path,
    and the eager teacher against the deployed student); empty when no benchmark records a `role`."""
    times: dict[tuple, float] = {}
    flops: dict[tuple, float] = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "role" in info and b.get("stats") and b["stats"].get("median"):
            times[(info["batch"], info["dtype"], info["role"], info["path"])] = b["stats"]["median"]
            flops[(info["batch"], info["dtype"], info["role"])] = info["flops"]
    cases = sorted({(batch, dtype) for batch, dtype, role, _ in times if role == "teacher"})
    lines = [
        "| batch | dtype | MAC ratio | eager | deploy | eager teacher / deployed student |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for batch, dtype in cases:
        macs = flops.get((batch, dtype, "teacher"), 0) / flops.get((batch, dtype, "student"), float("inf"))
        cells = [f"{macs:.1f}x"]
        for teacher_path, student_path in (("eager", "eager"), ("deploy", "deploy"), ("eager", "deploy")):
            t = times.get((batch, dtype, "teacher", teacher_path))
            s = times.get((batch, dtype, "student", student_path))
            cells.append(f"{t / s:.1f}x" if t and s else "-")
        lines.append(f"| {batch} | {dtype} | " + " | ".join(cells) + " |")
    return ["", "Teacher / student: speed ratio beside the MAC ratio", "", *lines] if cases else []


def header(env: dict | None, data: dict, ceilings: dict | None) -> list[str]:
    if env is None:  # JSON written before conftest stored the environment
        commit = data.get("commit_info", {})
        env = {
            "date": data.get("datetime", "?"),
            "commit": commit.get("id", "unknown")[:7] + ("+dirty" if commit.get("dirty") else ""),
            "cpu": data["machine_info"].get("cpu", {}).get("brand_raw", "?"),
        }
    lines = [f"- device: {env.get('gpu') or 'CPU: ' + env.get('cpu', '?')}"]
    if "torch" in env:
        lines.append(
            f"- torch {env['torch']} (CUDA {env['torch_cuda'] or '-'}), triton {env['triton'] or '-'}, "
            f"python {env['python']}; ackd_fast._C {env['extension']}"
        )
    lines.append(f"- commit {env['commit']}, {env['date']}" + (f", host {env['host']}" if "host" in env else ""))
    if ceilings:
        lines.append(
            f"- ceilings, measured in this run: copy {ceilings['copy_gb_per_s']:.1f} GB/s "
            f"({ceilings['copy_bytes'] / 2**20:.0f} MiB, read + write); {ceilings['matmul_dtype']} matmul "
            f"{ceilings['matmul_tflops']:.3g} TFLOP/s (n = {ceilings['matmul_n']})"
            + (" [tiny sizes: a code check, not a measurement]" if ceilings.get("tiny") else "")
        )
    return lines


PREAMBLE = (
    "Times are medians. Ratio = best PyTorch path's time / fast path's time (above 1: ackd_fast is faster), both "
    "measured in this run. Rate: the fast path's FLOP/s (% of the measured matmul rate, `mm`) or bytes moved per "
    "second (every input read once and every output written once per pass; % of the measured copy bandwidth); "
    "training steps also give images/s. Peak memory: kernels, beyond their inputs; training step, everything the "
    "step holds (models, optimizer states, activations). `-`: not recorded on this device."
)


def phases_table(path: Path) -> list[str]:
    """phases.tsv (suite_lib.sh: name, exit code, seconds, the last line of the phase's log) as a table."""
    lines = ["| phase | exit code | seconds | last line of its log |", "|---|---:|---:|---|"]
    for row in path.read_text().splitlines():
        name, code, seconds, last = row.split("\t", 3)
        code = code if code == "0" else f"**{code}**" + (" (time cap)" if code == "124" else "")
        code = "partial (time cap; results so far kept)" if code == "**partial**" else code
        lines.append(f"| {name} | {code} | {seconds} | {last.replace('|', '/')} |")
    return lines


def summarize(files: list[Path], ceilings: dict | None = None, phases: Path | None = None, title: str = "") -> str:
    datas = [(f, json.loads(f.read_text())) for f in files]
    env = next((d["machine_info"]["ackd_env"] for _, d in datas if "ackd_env" in d["machine_info"]), None)
    lines = [f"# {title or 'Benchmark summary'}", ""]
    lines += header(env, datas[0][1] if datas else {"machine_info": {}}, ceilings)
    if phases is not None and phases.is_file():
        lines += ["", "## Phases", "", *phases_table(phases)]
    lines += ["", "## Results", "", PREAMBLE]
    for f, data in datas:
        lines += ["", f"### {f.stem}", "", *table(data, ceilings), *role_ratios(data)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a suite's output folder, or one --benchmark-json file")
    parser.add_argument("--title", default="", help="the summary's heading")
    args = parser.parse_args()
    if args.path.is_dir():
        files = sorted(f for f in args.path.glob("*.json") if f.name not in NOT_BENCHMARKS)
        ceilings_file = args.path / "ceilings.json"
        ceilings = json.loads(ceilings_file.read_text()) if ceilings_file.is_file() else None
        text = summarize(files, ceilings, args.path / "phases.tsv", args.title)
        (args.path / "summary.md").write_text(text)
    else:
        text = summarize([args.path], title=args.title)
    print(text, end="")


if __name__ == "__main__":
    main()
