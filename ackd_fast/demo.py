"""The demo: on the built-in edges->photo sample set, train a small pix2pix teacher, distill it into the compressed
student with ACKD, train the same student for the same steps without ACKD, and compare them on the held-out photos.

Writes under `out_dir`: data/ (the sample set, cached), teacher/, ackd/, baseline/ (each a training run: ckpt.pt,
log.jsonl, samples/), grid.png (input / teacher / ACKD student / baseline / ground truth), losses.png and
results.json; prints the table.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ackd_fast import data as data_lib
from ackd_fast.evaluation import evaluate_generator
from ackd_fast.metrics import count_macs, count_params
from ackd_fast.peers import load_generator
from ackd_fast.report import format_table
from ackd_fast.train import Config, save_grid, train

# Small enough for ~4 minutes of training on 2 CPU cores (see README): 64x64 crops of 72x72 samples, a ResNet
# teacher at ngf 16, GAN Compression's student at ngf 16, and ACK-A keys pooled by 2.
SAMPLE_SIZE = 72
CROP_SIZE = 64


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    teacher_steps: int = 400
    student_steps: int = 300
    teacher_ngf: int = 16
    student_ngf: int = 16
    ndf: int = 32
    batch_size: int = 4
    kv_stride: int = 2
    workers: int = 0
    seed: int = 0
    progress: bool = True


def _run_config(dc: DemoConfig, data_root: Path, name: str, **kw) -> Config:
    steps = kw.pop("steps")
    return Config(
        out_dir=str(Path(dc.out_dir) / name),
        dataroot=str(data_root),
        load_size=SAMPLE_SIZE,
        crop_size=CROP_SIZE,
        batch_size=dc.batch_size,
        ndf=dc.ndf,
        workers=dc.workers,
        seed=dc.seed,
        steps=steps,
        log_every=10,
        sample_every=steps,
        ckpt_every=steps,
        progress=dc.progress,
        **kw,
    )


def _loss_plot(path: Path, runs: dict[str, tuple[Path, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, (log, key) in runs.items():
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        axes[0].plot([r["step"] for r in rows], [r[key] for r in rows], label=f"{label} ({key})")
        if "g_feat" in rows[0]:
            axes[1].plot([r["step"] for r in rows], [r["g_feat"] for r in rows], label=f"{label} feature MSE")
            axes[1].plot([r["step"] for r in rows], [r["ack_path"] for r in rows], label=f"{label} teacher-path L1")
    axes[0].set(xlabel="step", ylabel="L1 to ground truth", title="reconstruction")
    axes[1].set(xlabel="step", title="ACKD terms")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(dc: DemoConfig) -> dict:
    start = time.perf_counter()
    out = Path(dc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("teacher", "ackd", "baseline"):  # fresh runs; the sample set is kept
        shutil.rmtree(out / name, ignore_errors=True)
    torch.manual_seed(dc.seed)
    data_root = data_lib.build_sample_set(out / "data", size=SAMPLE_SIZE, seed=dc.seed)

    timings = {}
    t = time.perf_counter()
    teacher_cfg = _run_config(dc, data_root, "teacher", job="teacher", ngf=dc.teacher_ngf, steps=dc.teacher_steps)
    train(teacher_cfg)
    timings["teacher"] = time.perf_counter() - t
    teacher_ckpt = str(out / "teacher" / "ckpt.pt")
    for name, ackd in (("ackd", True), ("baseline", False)):
        t = time.perf_counter()
        cfg = _run_config(
            dc,
            data_root,
            name,
            job="distill",
            teacher=teacher_ckpt,
            recipe="compress",
            student_ngf=dc.student_ngf,
            ackd=ackd,
            kv_stride=dc.kv_stride,
            steps=dc.student_steps,
        )
        train(cfg)
        timings[name] = time.perf_counter() - t

    # held-out comparison: the test photographs never gave a training crop
    test = data_lib.make_dataset(data_root, "aligned", "test", train=False, crop_size=CROP_SIZE, load_size=CROP_SIZE)
    labels = {"teacher": "teacher (resnet_9blocks)", "ackd": "ACKD student", "baseline": "baseline student"}
    rows, generators = [], {}
    for name in labels:
        g = load_generator(out / name / "ckpt.pt")
        generators[name] = g
        scores = evaluate_generator(g, test)
        x64, x256 = torch.zeros(1, 3, CROP_SIZE, CROP_SIZE), torch.zeros(1, 3, 256, 256)
        rows.append(
            {
                "model": labels[name],
                "params_M": count_params(g) / 1e6,
                f"GMACs@{CROP_SIZE}": count_macs(g, x64) / 1e9,
                "GMACs@256": count_macs(g, x256) / 1e9,
                "PSNR": scores["psnr"],
                "SSIM": scores["ssim"],
                "train_s": timings[name],
                "steps": dc.teacher_steps if name == "teacher" else dc.student_steps,
            }
        )

    batch = next(
        iter(torch.utils.data.DataLoader(test, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(0)))
    )
    with torch.no_grad():
        cols = [batch["A"], *(generators[n](batch["A"]) for n in labels), batch["B"]]
    save_grid(out / "grid.png", cols, rows=6)
    _loss_plot(
        out / "losses.png",
        {
            "teacher": (out / "teacher" / "log.jsonl", "g_l1"),
            "ACKD": (out / "ackd" / "log.jsonl", "g_recon"),
            "baseline": (out / "baseline" / "log.jsonl", "g_recon"),
        },
    )
    result = {"rows": rows, "test_images": len(test), "wall_s": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = format_table(rows, list(rows[0]))
    (out / "results.md").write_text(table + "\n")
    print("\n" + table)
    print(
        f"\nheld-out: {len(test)} crops of {', '.join(data_lib.SAMPLE_TEST_PHOTOS)}; outputs in {out}/ "
        f"(grid.png, losses.png, results.json); demo wall time {result['wall_s']:.0f} s"
    )
    return result

