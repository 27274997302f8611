"""Scoring generators and reporting them beside the published figures.

- `evaluate_generator`: PSNR/SSIM (paired data) and FID/KID of a generator on a split, streaming batch by batch.
- `reference_stats`: the real images' Inception statistics under the peers' protocol (ANCHORS.md): paired tasks
  against the real test images, CycleGAN against the real train+test images of the target domain.
- `write_report`: results.md, results.json and fid_vs_macs.png, our rows beside the published rows of ANCHORS.md.

Selection: the peers pick their best checkpoint on the test split. `--select-on val` (train.py) picks ours on a split
carved from the training data instead, and the report gives the final and that best checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ackd_fast import data as data_lib
from ackd_fast import metrics

# ANCHORS.md: FID (lower is better) at 256x256, MACs in torchprofile's convention. "~" values are read off figures.
SOURCES = {
    "GAN Compression": "Li et al., GAN Compression, CVPR 2020",
    "CAT": "Jin et al., Teachers Do More Than Teach (CAT), CVPR 2021",
    "OMGD": "Ren et al., Online Multi-Granularity Distillation, ICCV 2021",
    "ACKD": "Gao & Long, ACKD, ICCV 2023 Workshops",
    "DCD": "as quoted by OMGD/ACKD at OMGD's budget",
    "CRD": "as quoted by OMGD/ACKD at OMGD's budget",
}
PUBLISHED = {
    "edges2shoes": {
        "title": "edges→shoes (pix2pix, ResNet generator)",
        "rows": [
            {"method": "original teacher", "fid": 24.18, "params_M": 11.4, "GMACs": 56.8, "source": "GAN Compression"},
            {"method": "GAN Compression", "fid": 26.60, "params_M": None, "GMACs": 4.81, "source": "GAN Compression"},
            {"method": "OMGD", "fid": 25.9, "approx": True, "params_M": 0.137, "GMACs": 1.41, "source": "OMGD"},
            {"method": "ACKD", "fid": 22.10, "params_M": 0.137, "GMACs": 1.41, "source": "ACKD"},
            {"method": "ACKD w/o ACK-F residual", "fid": 23.67, "params_M": 0.137, "GMACs": 1.41, "source": "ACKD"},
        ],
    },
    "horse2zebra": {
        "title": "horse→zebra (CycleGAN, ResNet generator)",
        "rows": [
            {"method": "original teacher", "fid": 61.53, "params_M": 11.4, "GMACs": 56.8, "source": "GAN Compression"},
            {"method": "GAN Compression", "fid": 64.95, "params_M": None, "GMACs": 2.67, "source": "GAN Compression"},
            {"method": "CAT", "fid": 60.2, "approx": True, "params_M": None, "GMACs": 2.55, "source": "CAT"},
            {"method": "OMGD", "fid": 51.92, "params_M": 0.137, "GMACs": 1.41, "source": "OMGD"},
            {"method": "DCD", "fid": 48.24, "params_M": 0.137, "GMACs": 1.41, "source": "DCD"},
            {"method": "CRD", "fid": 46.61, "params_M": 0.137, "GMACs": 1.41, "source": "CRD"},
        ],
    },
    "map2aerial": {
        "title": "map→aerial (pix2pix, ResNet generator)",
        "rows": [
            {"method": "original teacher", "fid": 47.91, "params_M": 11.4, "GMACs": 56.8, "source": "GAN Compression"},
            {"method": "GAN Compression", "fid": 48.02, "params_M": None, "GMACs": 4.68, "source": "GAN Compression"},
            {
                "method": "CAT (unconfirmed)",
                "fid": 44.9,
                "approx": True,
                "params_M": None,
                "GMACs": None,
                "source": "CAT",
            },
        ],
    },
}
TASK_ALIASES = {
    "edges2shoes": "edges2shoes",
    "horse2zebra": "horse2zebra",
    "maps": "map2aerial",
    "map2aerial": "map2aerial",
}


def task_of(dataroot: str | os.PathLike) -> str | None:
    """The published task a dataset folder holds, from its name (edges2shoes, horse2zebra, maps), or None."""
    return TASK_ALIASES.get(Path(dataroot).resolve().name.lower())


# --------------------------------------------------------------------------------------- real images


class ImageFiles(Dataset):
    """uint8 (3, size, size) images from files, resized as the datasets' evaluation transform does (bicubic);
    `size` None keeps each image's own size."""

    def __init__(self, files: list[Path], size: int | None = None):
        self.files, self.size = list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image

        im = data_lib.read_image(self.files[index])
        if self.size and im.size != (self.size, self.size):
            im = im.resize((self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def real_target_images(dataset, phases=("train", "test")) -> Dataset:
    """The real target-domain images FID compares with: B of every pair of an aligned dataset (its own split), or
    for an unaligned one the target folders of `phases` (the peers use train+test)."""
    if dataset.paired:
        return _TargetsOf(dataset)
    dst = "B" if dataset.direction == "AtoB" else "A"
    files = []
    for phase in phases:
        folder = dataset.root / f"{phase}{dst}"
        if folder.is_dir():
            files += data_lib.list_images(folder)
    if not files:
        raise FileNotFoundError(f"no real target images in {dataset.root} for phases {phases} (folders *{dst})")
    return ImageFiles(files, dataset.augment.crop_size)


class _TargetsOf(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        return data_lib.to_uint8(self.dataset[index]["B"])


@torch.no_grad()
def image_stats(
    images: Dataset, inception: nn.Module, batch_size: int = 50, keep_features: bool = True, workers: int = 0
) -> dict:
    """Inception statistics (and features, for KID) of a dataset of uint8 images."""
    stats = metrics.FeatureStats(keep_features)
    for batch in DataLoader(images, batch_size=batch_size, num_workers=workers):
        stats.update(metrics.inception_features(inception, batch))
    return stats.result()


# --------------------------------------------------------------------------------------- generators


@torch.no_grad()
def evaluate_generator(
    generator: nn.Module,
    dataset,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    inception: nn.Module | None = None,
    reference: dict | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> dict:
    """generator(A) over `dataset` (not shuffled): mean PSNR/SSIM against B when the data is paired, and FID/KID
    against `reference` (from `reference_stats` or `metrics.load_stats`) when `inception` is given. Images are
    dropped after their batch; only the 2048-d features are kept, for KID (when the reference has features)."""
    was_training = generator.training
    generator = generator.to(device).eval()
    if inception is not None and reference is None:
        raise ValueError("evaluate_generator: inception is given but reference is None; pass the real statistics")
    stats = metrics.FeatureStats(keep_features=reference is not None and reference.get("features") is not None)
    psnr, ssim, n = [], [], 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        fake = metrics.quantize(generator(batch["A"].to(device)))
        n += fake.shape[0]
        if dataset.paired:
            p, s = metrics.psnr_ssim(fake.cpu(), data_lib.to_uint8(batch["B"]))
            psnr += p
            ssim += s
        if inception is not None:
            stats.update(metrics.inception_features(inception, fake))
    generator.train(was_training)
    scores: dict = {"images": n}
    if dataset.paired:
        scores |= {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}
    if inception is not None:
        fake_stats = stats.result()
        scores["fid"] = metrics.frechet_distance(
            fake_stats["mu"], fake_stats["sigma"], reference["mu"], reference["sigma"]
        )
        if fake_stats["features"] is not None:
            kid, kid_std = metrics.kernel_inception_distance(
                fake_stats["features"], reference["features"], kid_subsets, kid_subset_size
            )
            scores |= {"kid": kid, "kid_std": kid_std}
    return scores


def reference_stats(dataset, inception: nn.Module, batch_size: int = 50, phases=("train", "test")) -> dict:
    """The real statistics for `dataset` under the peers' protocol, with the protocol recorded beside them."""
    real = real_target_images(dataset, phases)
    stats = image_stats(real, inception, batch_size)
    stats["protocol"] = {
        "dataroot": str(dataset.root),
        "split": dataset.phase if dataset.paired else "+".join(phases),
        "domain": "B of each pair" if dataset.paired else ("B" if dataset.direction == "AtoB" else "A"),
        "images": stats["n"],
        "size": dataset.augment.crop_size,
        "resize": "bicubic to size (evaluation transform), then bilinear to 299 inside pytorch-fid's InceptionV3",
    }
    return stats


# --------------------------------------------------------------------------------------- the report


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out_dir: str | os.PathLike, rows: list[dict], info: dict, task: str | None) -> dict:
    """results.md, results.json and fid_vs_macs.png in out_dir. `rows`: ours (one per checkpoint and selection);
    `info`: protocol, device, Inception weights, notes. Returns the JSON written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    published = PUBLISHED.get(task or "", {"title": None, "rows": []})
    result = {"info": info, "rows": rows, "task": task, "published": published}
    _write_atomic(out / "results.json", json.dumps(result, indent=1, default=float))
    plot = out / "fid_vs_macs.png"
    plot_fid_vs_macs(plot, rows, published)

    size = info.get("size")
    ours = [
        c
        for c in [
            "model",
            "selected",
            "params_M",
            "GMACs@256",
            f"GMACs@{size}",
            "FID",
            "KID",
            "KID_std",
            "PSNR",
            "SSIM",
        ]
        if any(c in r for r in rows)
    ]
    speed = [c for c in rows[0] if c.startswith(("ms_", "img_s_"))] if rows else []
    md = [f"# Evaluation: {info.get('dataroot')}", ""]
    md += [f"- {k}: {v}" for k, v in info.items() if k not in ("notes",)]
    md += [f"- note: {n}" for n in info.get("notes", [])]
    md += ["", "## Ours", "", format_table(rows, ours)]
    if speed:
        md += [
            "",
            f"Latency on {info.get('device')} at {info.get('latency_size')}x{info.get('latency_size')}: "
            "`ms_<dtype>_b<batch>` is the median forward time at that batch size, `img_s_...` the images per second.",
            "",
            format_table(rows, ["model", "selected", *speed]),
        ]
    md += ["", f"## Published ({published['title'] or 'no task matches this data'})", ""]
    if published["rows"]:
        pub = [
            {**r, "FID": ("~" if r.get("approx") else "") + f"{r['fid']:.2f}", "source": SOURCES[r["source"]]}
            for r in published["rows"]
        ]
        md += [format_table(pub, ["method", "FID", "params_M", "GMACs", "source"]), ""]
        md += [
            "Figures as quoted in ANCHORS.md; the peers select their best checkpoint on the test split, so their "
            "FIDs are best-of-many on the test set. Ours give the final checkpoint and, with `--select-on val`, "
            "the one chosen on a split carved from the training data."
        ]
    md += ["", f"![FID against MACs]({plot.name})", ""]
    _write_atomic(out / "results.md", "\n".join(md))
    return result


def plot_fid_vs_macs(path: Path, rows: list[dict], published: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    pub = [r for r in published["rows"] if r.get("GMACs")]
    if pub:
        ax.scatter([r["GMACs"] for r in pub], [r["fid"] for r in pub], marker="s", c="gray", label="published")
        for r in pub:
            ax.annotate(r["method"], (r["GMACs"], r["fid"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    mine = [r for r in rows if r.get("FID") is not None]
    if mine:
        ax.scatter([r["GMACs@256"] for r in mine], [r["FID"] for r in mine], marker="o", c="C0", label="ours")
        for r in mine:
            ax.annotate(
                f"{r['model']} ({r['selected'].split(' ')[0]})",
                (r["GMACs@256"], r["FID"]),
                fontsize=7,
                xytext=(3, -9),
                textcoords="offset points",
            )
    else:
        ax.set_title("ours: no FID computed", fontsize=9)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([0.5, 1, 2, 5, 10, 20, 50, 100])
    ax.set_xlabel("GMACs at 256x256 (torchprofile convention)")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3)
    if pub or mine:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + ("\n" if not text.endswith("\n") else ""))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------- during training


class PeriodicEvaluation:
    """What the training loop calls every `eval_every` steps: scores the generator on `dataset` (split `split`), and
    with `select` tracks the best step by FID (when the Inception weights are there) or else PSNR (paired data).

    inception_weights: a file, or "" for the torch hub cache; training never downloads, and without weights it
    scores PSNR/SSIM only (a weights file that was named but is missing raises)."""

    def __init__(
        self,
        dataset,
        split: str,
        device: torch.device,
        inception_weights: str = "",
        select: bool = False,
        batch_size: int = 8,
    ):
        self.dataset, self.split, self.device, self.batch_size = dataset, split, device, batch_size
        self.inception, self.reference, self.note = None, None, None
        try:
            self.inception = metrics.load_inception(inception_weights or None, device, download=False)
        except metrics.InceptionWeightsError as e:
            if inception_weights:
                raise
            self.note = f"no FID/KID during training: {e}"
        self.metric = "fid" if self.inception is not None else ("psnr" if dataset.paired else None)
        if select and self.metric is None:
            raise ValueError(
                "select_on='val' on unpaired data needs FID, and no Inception weights were found: pass "
                f"--inception-weights PATH or put {metrics.INCEPTION_FILE} in {metrics.inception_cache_path().parent}"
            )
        self.select = select
        self.best: dict | None = None  # {"metric", "value", "step"}

    def __call__(self, generator: nn.Module, step: int) -> tuple[dict, bool]:
        """(scores, whether this step is the new best)."""
        if self.inception is not None and self.reference is None:
            # unpaired: the real side of a validation split is the training target folder; of the test split, the
            # peers' train+test
            phases = (self.dataset.phase,) if self.split == "val" else ("train", "test")
            self.reference = reference_stats(self.dataset, self.inception, phases=phases)
        scores = evaluate_generator(
            generator, self.dataset, self.device, self.batch_size, self.inception, self.reference
        )
        value = scores[self.metric] if self.metric else None
        better = value is not None and (
            self.best is None or (value < self.best["value"] if self.metric == "fid" else value > self.best["value"])
        )
        if self.select and better:
            self.best = {"metric": self.metric, "value": value, "step": step, "split": self.split}
        return scores, self.select and better

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")


# --------------------------------------------------------------------------------------- `ackd-fast evaluate`


def describe_run(config: dict) -> str:
    """A row label from a run's config: what was trained and how."""
    if config.get("job") == "teacher":
        return f"teacher {config['generator']} ngf {config['ngf']}"
    kd = config.get("kd", "ackd") if config.get("ackd", True) else "none"
    kind = {"ackd": "ACKD", "plain": "plain-KD", "none": "baseline"}.get(kd, kd)
    if config.get("recipe") == "self":
        return f"{kind} self-distilled"
    return f"{kind} student ngf {config.get('student_ngf')}"


def evaluate_checkpoints(
    checkpoints: list[str],
    dataroot: str = "",
    phase: str = "test",
    dataset_mode: str = "auto",
    direction: str = "AtoB",
    crop_size: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    fid: bool = True,
    inception_weights: str = "",
    fid_stats: str = "",
    download: bool = True,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    latency_runs: int = 20,
    latency_batch: int = 8,
    latency_size: int = 0,
    latency_dtypes: tuple[str, ...] = ("fp32", "bf16"),
    task: str = "auto",
    out_dir: str = "",
) -> dict:
    """Scores every checkpoint (and the best.pt beside it, when training selected one) and writes the report.
    Defaults come from the first checkpoint's run: its dataset, its crop size, its folder for the report."""
    from ackd_fast.train import BEST, load_checkpoint, load_generator

    if not checkpoints:
        raise ValueError("checkpoints: give at least one ckpt.pt")
    first = load_checkpoint(checkpoints[0])["config"]
    root = dataroot or first["dataroot"]
    if root == "sample":  # the run built the sample set in its own folder
        root = str(Path(first["out_dir"]) / "data")
    mode = dataset_mode
    if mode == "auto":
        mode = "aligned" if (Path(root) / phase).is_dir() else "unaligned"
    size = crop_size or first["crop_size"]
    dataset = data_lib.make_dataset(root, mode, phase, train=False, direction=direction, load_size=size, crop_size=size)
    out = Path(out_dir or Path(checkpoints[0]).parent)
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    latency_size = latency_size or size
    info: dict = {
        "dataroot": root,
        "split": phase,
        "images": len(dataset),
        "size": size,
        "mode": mode,
        "device": metrics.device_name(dev),
        "latency_size": latency_size,
        "notes": [],
    }

    inception, reference = None, None
    if fid:
        inception = metrics.load_inception(inception_weights or None, dev, download=download)
        published = metrics.weights_are_published(inception_weights or None)
        info["inception_weights"] = str(inception_weights or metrics.inception_cache_path())
        if not published:
            info["notes"].append(
                "the Inception weights are not pytorch-fid's published file: FID/KID are not "
                "comparable with published figures"
            )
        if fid_stats:
            reference = metrics.load_stats(fid_stats)
            info["fid_reference"] = f"{fid_stats} ({json.dumps(reference['protocol'])})"
            if reference.get("features") is None:
                info["notes"].append(f"{fid_stats} has no features: no KID")
        else:
            reference = reference_stats(dataset, inception, batch_size=max(batch_size, 16))
            saved = out / "fid_reference.npz"
            metrics.save_stats(saved, reference, reference["protocol"])
            info["fid_reference"] = f"{saved} ({json.dumps(reference['protocol'])})"
    else:
        info["notes"].append("FID/KID not computed (--no-fid)")

    rows = []
    for ckpt in checkpoints:
        candidates = [(ckpt, "final")]
        best = Path(ckpt).parent / BEST
        if best.is_file():
            candidates.append((str(best), "best"))
        for path, which in candidates:
            state = load_checkpoint(path)
            g, config = load_generator(path)
            selected = f"final (step {state['step']})"
            if which == "best":
                sel = state["selection"]
                selected = f"best on {sel['split']} (step {sel['step']}, {sel['metric']} {sel['value']:.3f})"
            scores = evaluate_generator(g, dataset, dev, batch_size, inception, reference, kid_subsets, kid_subset_size)
            row = {
                "model": describe_run(config),
                "selected": selected,
                "checkpoint": path,
                "params_M": metrics.count_params(g) / 1e6,
                "GMACs@256": metrics.count_macs(g.cpu(), torch.zeros(1, 3, 256, 256)) / 1e9,
                f"GMACs@{size}": metrics.count_macs(g, torch.zeros(1, 3, size, size)) / 1e9,
            }
            row |= {
                "FID": scores.get("fid"),
                "KID": scores.get("kid"),
                "KID_std": scores.get("kid_std"),
                "PSNR": scores.get("psnr"),
                "SSIM": scores.get("ssim"),
                "images": scores["images"],
            }
            if latency_runs > 0:
                batches = (1, latency_batch)
                for lat in metrics.measure_latency(g, latency_size, dev, batches, latency_dtypes, runs=latency_runs):
                    row[f"ms_{lat['dtype']}_b{lat['batch']}"] = lat["median_ms"]
                    row[f"img_s_{lat['dtype']}_b{lat['batch']}"] = lat["images_per_s"]
            rows.append(row)
    if task == "auto":
        task = task_of(root)
        if task is None:
            task = "edges2shoes"
            info["notes"].append(
                "this data is none of the published tasks; the edges→shoes rows are shown for "
                "scale only, not for comparison"
            )
    elif task not in PUBLISHED and task != "none":
        raise ValueError(f"task must be 'auto', 'none' or one of {tuple(PUBLISHED)}, got {task!r}")
    return write_report(out, rows, info, None if task == "none" else task)
