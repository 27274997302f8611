"""`ackd-fast bench-deploy`'s harness: every inference path of a generator (eager, torch.compile, onnxruntime,
OpenVINO, `ackd_fast.deploy`) built, checked against eager and timed in turns in one run, with each path's share of
the device's peak; the tables and JSON it writes. benchmarks/bench_deploy.py times the same paths under
pytest-benchmark."""

from __future__ import annotations

import copy
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ackd_fast import metrics
from ackd_fast.checkpoint import check_writable, write_atomic
from ackd_fast.deploy import deploy
from ackd_fast.errors import UsageError
from ackd_fast.export import size_multiple
from ackd_fast.metrics import ieee_fp32, time_paths
from ackd_fast.runtimes import onnxruntime_session, openvino_model

PATHS = ("eager", "compile", "onnxruntime", "openvino", "deploy")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_dtypes(device: torch.device) -> tuple[str, ...]:
    """fp32, plus the half types the device computes natively (bf16/fp16 on CUDA; bf16 on CPUs with AVX-512 BF16 or
    AMX, where oneDNN has bf16 kernels)."""
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16")
    return ("fp32", "bf16") if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() \
        else ("fp32",)  # fmt: skip


def parse_batches(text: str) -> tuple[int, ...]:
    """--batch's value: comma-separated positive ints; UsageError naming the flag otherwise."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise UsageError(f"--batch takes comma-separated positive ints (e.g. 1,4), got {text!r}")
    return tuple(int(part) for part in parts)


def check_options(generators: dict[str, nn.Module], device: str, size: int, batches: tuple[int, ...],
                  dtypes: tuple[str, ...] | None, paths: tuple[str, ...], rounds: int) -> None:  # fmt: skip
    """UsageError naming the flag for any value compare_paths could not run with, before anything is timed."""
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be one of auto, cpu, cuda; got {device!r}")
    for generator_name, generator in generators.items():
        multiple = size_multiple(generator)
        if isinstance(size, bool) or not isinstance(size, int) or size < multiple or size % multiple:
            raise UsageError(f"--size must be a positive multiple of {multiple} for {generator_name}, got {size!r}")
    if not batches or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in batches):
        raise UsageError(f"--batch takes comma-separated positive ints (e.g. 1,4), got {batches!r}")
    for flag, values, allowed in (("--dtypes", dtypes or (), DTYPES), ("--paths", paths, PATHS)):
        unknown = [v for v in values if v not in allowed]
        if unknown or (flag == "--paths" and not values):
            raise UsageError(f"{flag} takes comma-separated names among {', '.join(allowed)}; got {unknown or values}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UsageError(f"--rounds must be an int >= 1 (timed calls per path), got {rounds!r}")


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
    given = {k: p.default for k, p in inspect.signature(compare_paths).parameters.items()} | options
    check_options(generators, device, *(given[k] for k in ("size", "batches", "dtypes", "paths", "rounds")))
    out = Path(out_dir)
    check_writable(out, "the results folder (--out)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = compare_paths(generators, device=device, **options)
    ratios = speed_ratios(rows)
    table = markdown(rows, ratios)
    for name, text in (
        ("bench_deploy.md", table),
        ("bench_deploy.json", json.dumps({"rows": rows, "ratios": ratios, "deploy_leads": deploy_leads(rows)},
                                         indent=1)),
    ):
        write_atomic(out / name, lambda f, text=text: f.write(text.encode()))
    print(table, end="")
    print(f"wrote {out / 'bench_deploy.md'} and {out / 'bench_deploy.json'}")
    return rows, ratios
