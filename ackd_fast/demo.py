"""The demo: train a small pix2pix teacher on the built-in tile set, then the same compressed student three ways for
the same steps (ACKD; GAN Compression's plain feature distillation on the same taps; no distillation), each with
`seeds` seeds, and compare them on held-out tiles with the trivial predictors beside them.

The task (`data.build_tile_set`, `sample_set="sketch"`, the default): photo -> line drawing on tiles of the
photographs scikit-image ships, split by region (the right quarter of every photograph is held out). The target is
a white page with dark strokes where the photo has edges, a function of the photo's relative gradients, which the
generators' instance norms keep; tasks that must copy the input's absolute colours (denoising, false-colour labels
-> photo) did not beat the trivial predictors at this budget (README). `"edges"` is the earlier edges->photo set
(`data.build_sample_set`), whose test photographs no model learns at this budget (issue 14).

Writes under `out_dir`: data/ (the sample set, cached), teacher/, ackd/seedN/, plain/seedN/, none/seedN/ (each a
training run: ckpt.pt, log.jsonl, samples/), grid.png (input / teacher / the three students of the first seed /
ground truth), losses.png, results.json and results.md; prints the table.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ackd_fast import data as data_lib
from ackd_fast import metrics
from ackd_fast.assembly import Config
from ackd_fast.errors import UsageError
from ackd_fast.evaluation import evaluate_generator
from ackd_fast.flags import flag
from ackd_fast.loggers import check_loggers
from ackd_fast.metrics import count_macs, count_params
from ackd_fast.peers import load_generator
from ackd_fast.plots import read_log
from ackd_fast.report import format_table
from ackd_fast.study import paired
from ackd_fast.train import save_grid, train

SAMPLE_SETS = ("sketch", "edges")
STUDENTS = {"ackd": "ACKD student", "plain": "plain-KD student", "none": "no-KD student"}
# Training tiles are 72 px (the edges set's samples too); random crops of CROP_SIZE; the test tiles are scored whole.
SAMPLE_SIZE = 72
TEST_SIZE = 64  # the edges set's test crops are resized to it


@dataclass
class DemoConfig:
    """The demo's settings: every field is a flag of `ackd-fast demo`."""

    out_dir: str = flag("runs/demo", "output folder")
    sample_set: str = flag("sketch", "sketch (photo -> line drawing, region-split tiles) or edges (the earlier "
                           "edges->photo set)")  # fmt: skip
    tile_stride: int = flag(16, "px between training tiles")
    teacher_steps: int = flag(1200, "teacher steps")
    student_steps: int = flag(600, "steps of each student (600 at batch 2: where distillation's effect shows, README)")
    seeds: int = flag(3, "runs of each student, seeds SEED..")
    crop_size: int = flag(64, "training crop size (taps of crop/4)")
    teacher_ngf: int = flag(32, "teacher width")
    student_ngf: int = flag(16, "student width")
    ndf: int = flag(32, "discriminator width")
    batch_size: int = flag(2, "batch size")
    lr: float = flag(5e-4, "Adam learning rate of every run (the teacher learned faster than at pix2pix's 2e-4)")
    kv_stride: int = flag(1, "ACK-A key/value pooling")
    workers: int = flag(0, "data workers")
    seed: int = flag(0, "random seed")
    progress: bool = flag(True, "progress bars on a terminal (else status lines)")
    logger: str = flag("none", "as train-teacher's --logger: tensorboard, wandb, trackio for every run (each in its "
                       "own folder), or none")  # fmt: skip


def _check(dc: DemoConfig) -> None:
    check_loggers(dc.logger)
    if dc.sample_set not in SAMPLE_SETS:
        raise UsageError(f"sample_set must be one of {SAMPLE_SETS}, got {dc.sample_set!r}")
    for name in ("teacher_steps", "student_steps", "seeds", "crop_size", "batch_size", "tile_stride"):
        value = getattr(dc, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive int, got {value!r}")
    if dc.crop_size > SAMPLE_SIZE or dc.crop_size % 4:
        raise UsageError(f"crop_size must be a multiple of 4 and <= {SAMPLE_SIZE}, got {dc.crop_size}")


def _sample_set(dc: DemoConfig, root: Path) -> Path:
    if dc.sample_set == "edges":
        return data_lib.build_sample_set(root, size=SAMPLE_SIZE, seed=dc.seed)
    return data_lib.build_tile_set(root, tile=SAMPLE_SIZE, test_tile=TEST_SIZE, stride=dc.tile_stride)


def _run_config(dc: DemoConfig, data_root: Path, out: Path, steps: int, seed: int, **kw) -> Config:
    return Config(
        out_dir=str(out),
        dataroot=str(data_root),
        load_size=SAMPLE_SIZE,
        crop_size=dc.crop_size,
        batch_size=dc.batch_size,
        ndf=dc.ndf,
        lr=dc.lr,
        workers=dc.workers,
        seed=seed,
        steps=steps,
        log_every=10,
        sample_every=steps,
        ckpt_every=steps,
        progress=dc.progress,
        logger=dc.logger,
        **kw,
    )


def _trivial_rows(train_set, test_set) -> list[dict]:
    """The trivial predictors on the test set, scored as the models are: the training targets' per-channel mean
    everywhere, and the input itself."""
    total, pixels = torch.zeros(3, dtype=torch.float64), 0
    for i in range(len(train_set)):
        b = train_set[i]["B"].double()
        total += b.sum((1, 2))
        pixels += b.shape[1] * b.shape[2]
    mean = (total / pixels).float().view(1, 3, 1, 1)
    scores = {"mean": ([], []), "input": ([], [])}
    for i in range(len(test_set)):
        sample = test_set[i]
        real = data_lib.to_uint8(sample["B"][None])
        guesses = {
            "mean": metrics.quantize(mean.expand_as(sample["B"][None])),
            "input": data_lib.to_uint8(sample["A"][None]),
        }
        for name, guess in guesses.items():
            p, s = metrics.psnr_ssim(guess, real)
            scores[name][0].extend(p)
            scores[name][1].extend(s)
    labels = {"mean": "trivial: training targets' mean colour", "input": "trivial: the input itself"}
    return [
        {"model": labels[name], "role": "trivial", "PSNR": statistics.fmean(p), "SSIM": statistics.fmean(s)}
        for name, (p, s) in scores.items()
    ]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _loss_plot(path: Path, runs: dict[str, tuple[Path, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, (log, key) in runs.items():
        rows = [r for r in read_log(log) if key in r]  # loss records (not diagnostics or evaluations)
        axes[0].plot([r["step"] for r in rows], [r[key] for r in rows], label=f"{label} ({key})")
        if "g_feat" in rows[0]:
            axes[1].plot([r["step"] for r in rows], [r["g_feat"] for r in rows], label=f"{label} feature MSE")
        if "ack_path" in rows[0]:
            axes[1].plot([r["step"] for r in rows], [r["ack_path"] for r in rows], label=f"{label} teacher-path L1")
    axes[0].set(xlabel="step", ylabel="L1 to ground truth", title="reconstruction")
    axes[1].set(xlabel="step", title="distillation terms")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid_batch(test_set, rows: int) -> dict:
    """One test tile per photograph (the middle one of its held-out region); the edges set: a fixed random draw."""
    files = [p.stem for p in test_set.files]
    by_photo: dict[str, list[int]] = {}
    for i, stem in enumerate(files):
        by_photo.setdefault(stem.rsplit("_", 2)[0] if stem.count("_") >= 2 else stem, []).append(i)
    if set(by_photo) <= set(data_lib.TILE_PHOTOS):
        picks = [v[len(v) // 2] for v in by_photo.values()][:rows]
    else:
        picks = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))[:rows].tolist()
    samples = [test_set[i] for i in picks]
    return {k: torch.stack([s[k] for s in samples]) for k in ("A", "B")}


def run_demo(dc: DemoConfig) -> dict:
    _check(dc)
    start = time.perf_counter()
    out = Path(dc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("teacher", *STUDENTS, "baseline"):  # fresh runs (baseline/: an earlier demo's); the data is kept
        shutil.rmtree(out / name, ignore_errors=True)
    torch.manual_seed(dc.seed)
    data_root = _sample_set(dc, out / "data")

    timings: dict[str, list[float]] = {}
    t = time.perf_counter()
    train(_run_config(dc, data_root, out / "teacher", dc.teacher_steps, dc.seed, job="teacher", ngf=dc.teacher_ngf))
    timings["teacher"] = [time.perf_counter() - t]
    teacher_ckpt = str(out / "teacher" / "ckpt.pt")
    seeds = [dc.seed + i for i in range(dc.seeds)]
    # Seed-major order, so a demo stopped early has whole seeds; each seed gives the three students the same
    # initial weights and data order: their differences pair by seed.
    for seed in seeds:
        for kd in STUDENTS:
            t = time.perf_counter()
            run = out / kd / f"seed{seed}"
            train(
                _run_config(
                    dc, data_root, run, dc.student_steps, seed, job="distill", teacher=teacher_ckpt,
                    recipe="compress", student_ngf=dc.student_ngf, kd=kd, kv_stride=dc.kv_stride,
                )
            )  # fmt: skip
            timings.setdefault(kd, []).append(time.perf_counter() - t)

    # held-out comparison: no test pixel ever gave a training crop
    test = data_lib.make_dataset(data_root, "aligned", "test", train=False, crop_size=TEST_SIZE, load_size=TEST_SIZE)
    train_targets = data_lib.make_dataset(
        data_root, "aligned", "train", train=False, crop_size=SAMPLE_SIZE, load_size=SAMPLE_SIZE
    )
    rows = _trivial_rows(train_targets, test)
    x64, x256 = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 256, 256)

    def model_row(label: str, role: str, checkpoints: list[Path], times: list[float], steps: int) -> dict:
        g = load_generator(checkpoints[0])
        psnr, ssim = [], []
        for ckpt in checkpoints:
            scores = evaluate_generator(load_generator(ckpt), test)
            psnr.append(scores["psnr"])
            ssim.append(scores["ssim"])
        row = {
            "model": label,
            "role": role,
            "params_M": count_params(g) / 1e6,
            "GMACs@64": count_macs(g, x64) / 1e9,
            "GMACs@256": count_macs(g, x256) / 1e9,
            "PSNR": statistics.fmean(psnr),
            "SSIM": statistics.fmean(ssim),
            "train_s": statistics.fmean(times),
            "steps": steps,
        }
        if role == "student":
            (pm, ps), (sm, ss), (tm, ts) = _mean_std(psnr), _mean_std(ssim), _mean_std(times)
            row |= {"PSNR_mean": pm, "PSNR_std": ps, "SSIM_mean": sm, "SSIM_std": ss, "train_s_mean": tm,
                    "train_s_std": ts, "seeds": len(checkpoints), "PSNR_runs": psnr, "SSIM_runs": ssim,
                    "train_s_runs": times}  # fmt: skip
        return row

    teacher_row = model_row(
        "teacher (resnet_9blocks)", "teacher", [out / "teacher" / "ckpt.pt"], timings["teacher"], dc.teacher_steps
    )
    rows.append(teacher_row)
    for kd, label in STUDENTS.items():
        ckpts = [out / kd / f"seed{s}" / "ckpt.pt" for s in seeds]
        rows.append(model_row(label, "student", ckpts, timings[kd], dc.student_steps))
    by_kd = dict(zip(STUDENTS, rows[-len(STUDENTS) :], strict=True))
    leads = {}
    for a, b in (("ackd", "plain"), ("ackd", "none"), ("plain", "none")):
        d = paired(dict(enumerate(by_kd[a]["PSNR_runs"])), dict(enumerate(by_kd[b]["PSNR_runs"])))
        diffs = [x - y for x, y in zip(by_kd[a]["PSNR_runs"], by_kd[b]["PSNR_runs"], strict=True)]
        mean, std = _mean_std(diffs)
        leads[f"{a}_minus_{b}"] = {"PSNR_mean": mean, "PSNR_std": std, "PSNR_runs": diffs, "seeds": len(diffs),
                                   "PSNR_ci95": d["ci95"] if d else None}  # fmt: skip

    generators = {"teacher": load_generator(out / "teacher" / "ckpt.pt")}
    generators |= {kd: load_generator(out / kd / f"seed{seeds[0]}" / "ckpt.pt") for kd in STUDENTS}
    batch = _grid_batch(test, rows=len(data_lib.TILE_PHOTOS))
    with torch.no_grad():
        cols = {"input": batch["A"]} | {n: generators[n](batch["A"]) for n in generators} | {"target": batch["B"]}
    # 2x nearest: the tiles are small, and the grid is for looking at
    save_grid(out / "grid.png", {k: F.interpolate(c, scale_factor=2, mode="nearest") for k, c in cols.items()})
    _loss_plot(
        out / "losses.png",
        {"teacher": (out / "teacher" / "log.jsonl", "g_l1")}
        | {STUDENTS[kd]: (out / kd / f"seed{seeds[0]}" / "log.jsonl", "g_recon") for kd in STUDENTS},
    )
    best_trivial = max((r for r in rows if r["role"] == "trivial"), key=lambda r: r["PSNR"])
    result = {
        "rows": rows,
        "trivial": best_trivial,
        "leads": leads,
        "sample_set": dc.sample_set,
        "seeds": seeds,
        "test_images": len(test),
        "wall_s": time.perf_counter() - start,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = format_table([_table_row(r) for r in rows], list(_table_row(rows[-1])))
    (out / "results.md").write_text(table + "\n")
    print("\n" + table)
    def lead(name: str) -> str:
        d = leads[name]
        ci = d["PSNR_ci95"]
        interval = f", 95 % CI [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
        return f"{d['PSNR_mean']:+.2f} ± {d['PSNR_std']:.2f} dB{interval}"

    print(
        f"\nstudents: {len(seeds)} seed(s) each ({', '.join(map(str, seeds))}); mean ± sample std over seeds.\n"
        f"paired by seed (PSNR): ACKD - plain KD {lead('ackd_minus_plain')}; ACKD - no KD {lead('ackd_minus_none')}; "
        f"plain KD - no KD {lead('plain_minus_none')}"
        f"\nteacher - best trivial predictor: {teacher_row['PSNR'] - best_trivial['PSNR']:+.2f} dB PSNR"
        f"\nheld-out: {len(test)} tiles; outputs in {out}/ (grid.png, losses.png, results.json); "
        f"demo wall time {result['wall_s']:.0f} s"
    )
    return result


def _table_row(row: dict) -> dict:
    """The printed row: students' PSNR, SSIM and training time as mean ± std over seeds."""
    shown = {k: row.get(k) for k in ("model", "params_M", "GMACs@64", "GMACs@256")}
    if row["role"] == "student":
        shown |= {
            "PSNR": f"{row['PSNR_mean']:.2f} ± {row['PSNR_std']:.2f}",
            "SSIM": f"{row['SSIM_mean']:.3f} ± {row['SSIM_std']:.3f}",
            "train_s": f"{row['train_s_mean']:.1f} ± {row['train_s_std']:.1f}",
            "seeds": row["seeds"],
        }
    else:
        shown |= {"PSNR": f"{row['PSNR']:.2f}", "SSIM": f"{row['SSIM']:.3f}", "train_s": row.get("train_s")}
        shown["seeds"] = 1 if row["role"] == "teacher" else None
    return shown | {"steps": row.get("steps")}
