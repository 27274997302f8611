"""The report: our checkpoints scored beside the published figures (`ackd-fast evaluate`).

- `evaluate_checkpoints`: scores runs' checkpoints (and the best.pt beside each) with `ackd_fast.evaluation` and
  writes the report.
- `write_report`: results.md, results.json and fid_vs_macs.png, our rows beside the published rows (`PUBLISHED`, with
  their `SOURCES`) of the task the data holds (`task_of`, `TASK_ALIASES`).

The peers pick their best checkpoint on the test split; the report gives our final checkpoint and, when training ran
with `--select-on val`, the one chosen on a split carved from the training data.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ackd_fast import data as data_lib
from ackd_fast import metrics
from ackd_fast.assembly import check_device, file_config
from ackd_fast.checkpoint import BEST, check_writable, write_atomic
from ackd_fast.errors import UsageError
from ackd_fast.evaluation import cached_reference_stats, evaluate_generator
from ackd_fast.flags import flag, flag_name
from ackd_fast.models import GENERATORS, GeneratorSpec
from ackd_fast.peers import read_generator
from ackd_fast.results_page import write_index

# The papers' own figures: FID (lower is better) at 256x256, MACs in torchprofile's convention; "approx" ones ("~" in
# the report) are read off a figure. SOURCES names the paper behind each row.
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
TASK_ALIASES = {  # dataset folder names, ours and GAN Compression's (edges2shoes-r, map2sat), -> published task
    "edges2shoes": "edges2shoes",
    "edges2shoes-r": "edges2shoes",
    "horse2zebra": "horse2zebra",
    "maps": "map2aerial",
    "map2aerial": "map2aerial",
    "map2sat": "map2aerial",
    "sat2map": "map2aerial",
}


def task_of(dataroot: str | os.PathLike) -> str | None:
    """The published task a dataset folder holds, from its name (edges2shoes, edges2shoes-r, horse2zebra, maps,
    map2sat, sat2map), or its parent's for a single-mode folder such as horse2zebra/valA; else None."""
    folder = Path(dataroot).resolve()
    return TASK_ALIASES.get(folder.name.lower()) or TASK_ALIASES.get(folder.parent.name.lower())


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
            "Figures as published by the sources named in the table ('~': read off a figure). The peers select their "
            "best checkpoint on the test split, so their FIDs are best-of-many on the test set. Ours give the final "
            "checkpoint and, with `--select-on val`, the one chosen on a split carved from the training data."
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
    text += "" if text.endswith("\n") else "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


# --------------------------------------------------------------------------------------- `ackd-fast evaluate`


def _model_label(name: str, ngf: int, kwargs: str | None) -> str:
    """GeneratorSpec.label from a run config's flags (a built-in keeps its ngf, an import path its kwargs)."""
    return GeneratorSpec(name, ngf if name in GENERATORS else None, kwargs or {}).label


def describe_run(config: dict) -> str:
    """A row label from a run's config: what was trained and how."""
    if config.get("job") == "teacher":
        return f"teacher {_model_label(config['generator'], config['ngf'], config.get('generator_kwargs'))}"
    kd = config.get("kd", "ackd") if config.get("ackd", True) else "none"  # "ackd": the field of older runs
    ackd = kd == "ackd"
    if config.get("student"):
        student = f"student {_model_label(config['student'], config.get('student_ngf'), config.get('student_kwargs'))}"
    elif config.get("recipe") == "self":
        student = "self-distilled"
    else:
        student = f"student ngf {config.get('student_ngf')}"
    label = f"{ {'ackd': 'ACKD', 'plain': 'plain-KD', 'none': 'baseline'}.get(kd, kd)} {student}"
    if ackd and config.get("mode", "both") != "both":
        label += {"attention": ", ACK-A only", "fusion": ", ACK-F only"}[config["mode"]]
    if ackd and not config.get("residual", True):
        label += ", w/o ACK-F residual"  # the paper's ablation (--no-residual); ACK-A keeps its own
    return label


@dataclass
class EvaluationSettings:
    """How `ackd-fast evaluate` scores checkpoints: every field is one of its flags."""

    dataroot: str = flag("", "dataset folder (default: the first run's own)")
    phase: str = flag("auto", "split to score; auto = test, else val")
    dataset_mode: str = flag(
        "auto",
        "aligned, unaligned, single (DATAROOT is a folder of inputs, e.g. horse2zebra/testA), or auto (the run's "
        "objective, else the folder layout)",
    )
    direction: str = flag("auto", "AtoB, BtoA, or auto = the run's, else AtoB")
    crop_size: int = flag(0, "images are resized to this size; 0 = the run's crop size, else 256")
    batch_size: int = flag(8, "images per forward")
    device: str = flag("auto", "auto, cpu, cuda or cuda:N")
    fid: bool = flag(True, "FID and KID (--no-fid: skip them, and the Inception weights they need)")
    inception_weights: str = flag(
        "", "pytorch-fid's pt_inception-2015-12-05 weights file; default: the torch hub cache"
    )
    inception_sha256: str = flag(metrics.INCEPTION_SHA256, metrics.INCEPTION_SHA256_HELP)
    download: bool = flag(True, "download the Inception weights into the torch hub cache when they are not there")
    fid_stats: str = flag(
        "",
        "real statistics .npz (ours or GAN Compression's, keys mu, sigma); default: computed from the data (paired: "
        "the split's B images; unpaired: train+test B), or reused from --fid-cache",
    )
    fid_cache: str = flag(
        "",
        "folder of computed reference statistics, reused while the real files (paths, sizes, times), split, size "
        "and Inception weights are the same; empty = $ACKD_FAST_CACHE/fid_stats or ~/.cache/ackd_fast/fid_stats; "
        "none = no cache",
    )
    kid_subsets: int = flag(100, "KID subsets")
    kid_subset_size: int = flag(1000, "KID subset size")
    latency_runs: int = flag(20, "timed forwards per latency figure; 0 = no latency")
    latency_batch: int = flag(8, "throughput batch size")
    latency_size: int = flag(0, "square input size for latency; 0 = the evaluation size")
    latency_dtypes: str = flag(
        "auto",
        "comma-separated among fp32, bf16; auto = what the model would be deployed in on this device (fp32 on a "
        "CPU; fp32 and bf16 on a GPU that computes bf16)",
    )
    task: str = flag(
        "auto", "published rows to show: auto (from the data folder's name), none, edges2shoes, horse2zebra or "
        "map2aerial",
    )  # fmt: skip
    out_dir: str = flag("", "report folder (default: the first checkpoint's folder)")
    save_images: str = flag(
        "",
        "folder for the images scored, as PNG: each checkpoint's outputs in a folder of its own (the input's path "
        "relative to the split, and its name), the inputs and targets as scored, and index.html with them side by "
        "side; files there are never replaced; empty = none",
    )
    progress: bool = flag(True, "progress and an estimate for long metric passes")


def latency_dtypes_for(spec: str | tuple, device: torch.device) -> tuple[str, ...]:
    """The latency dtypes a spec names; "auto": fp32, and bf16 on a CUDA device that computes it natively (on a
    CPU bf16 is emulated and slow, and nobody deploys it there)."""
    if not isinstance(spec, str):
        return tuple(spec)
    if spec == "auto":
        native = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
        return ("fp32", "bf16") if native else ("fp32",)
    names = tuple(d.strip() for d in spec.split(",") if d.strip())
    for d in names:
        if d not in ("fp32", "bf16"):
            raise UsageError(f"--latency-dtypes takes auto or a comma-separated list of fp32, bf16; got {spec!r}")
    return names


def _check_settings(s: EvaluationSettings) -> None:
    metrics.check_sha256(s.inception_sha256)
    for name, low in (("batch_size", 1), ("kid_subsets", 1), ("kid_subset_size", 1), ("latency_runs", 0),
                      ("latency_batch", 1), ("latency_size", 0), ("crop_size", 0)):  # fmt: skip
        if getattr(s, name) < low:
            raise UsageError(f"{flag_name(name)} must be >= {low}; got {getattr(s, name)}")
    for name, allowed in (("dataset_mode", ("auto", *data_lib.MODES)), ("direction", ("auto", *data_lib.DIRECTIONS)),
                          ("phase", ("auto", *data_lib.EVAL_PHASES, "train"))):  # fmt: skip
        if getattr(s, name) not in allowed:
            raise UsageError(f"{flag_name(name)} must be one of {', '.join(allowed)}; got {getattr(s, name)!r}")
    check_device(s.device)


def _check_layout(checkpoint: str, objective: str, root: str, mode: str, phase: str, direction: str) -> None:
    """ValueError when `root` lacks the layout the checkpoint's objective is scored on and holds the other one:
    which layout the checkpoint needs, which one the folder holds, and the flags that say otherwise."""
    src = "A" if direction == "AtoB" else "B"
    phases = data_lib.EVAL_PHASES if phase == "auto" else (phase,)
    layouts = {"aligned": list(phases), "unaligned": [f"{p}{src}" for p in phases]}
    if mode not in layouts or any((Path(root) / name).is_dir() for name in layouts[mode]):
        return
    other = "unaligned" if mode == "aligned" else "aligned"
    held = [name for name in layouts[other] if (Path(root) / name).is_dir()]
    if not held:
        return  # neither layout: evaluation_phase / make_dataset say what was looked for
    needs = {"aligned": "aligned pairs (A|B side by side: " + " or ".join(f"{p}/" for p in layouts["aligned"]) + ")",
             "unaligned": "unaligned folders (" + " or ".join(f"{p}{src}/" for p in phases) + ")"}  # fmt: skip
    raise ValueError(
        f"{checkpoint} is a --model {objective} run, scored on {needs[mode]}, and {root} holds {other} data "
        f"({', '.join(n + '/' for n in held)}): pass --dataroot of {mode} data, or --dataset-mode {other} to score it "
        "on this data"
    )


class ScoredImages:
    """What `--save-images DIR` writes: DIR/<checkpoint>/<path of the input relative to the split>.png (each
    checkpoint's outputs), DIR/inputs/... and DIR/targets/... (as scored: resized to the evaluation size), and
    DIR/index.html (results_page.write_index). Every check runs when it is made, before anything is scored: DIR is
    not inside the data, is writable, and none of the files exists."""

    RESERVED = ("inputs", "targets")

    def __init__(self, folder: str | os.PathLike, dataset, checkpoints: list[str], dataroot: str):
        from ackd_fast.translate import check_output

        self.folder = Path(folder)
        check_output(self.folder, [Path(dataroot)])
        files = [Path(p) for p in getattr(dataset, dataset.INPUTS)]
        split = Path(os.path.commonpath([p.parent for p in files]))
        self.names = [p.relative_to(split).with_suffix(".png").as_posix() for p in files]
        if len(set(self.names)) < len(self.names):
            twice = next(n for n in self.names if self.names.count(n) > 1)
            raise UsageError(f"--save-images: two inputs of the split would be saved as {twice} (one name, two "
                             "formats)")  # fmt: skip
        self.labels = []
        for path in checkpoints:
            label = f"{Path(path).resolve().parent.name}_{Path(path).stem}"
            while label in (*self.labels, *self.RESERVED):
                label += "_"
            self.labels.append(label)
        self.paired = dataset.paired
        kinds = ["inputs", *self.labels, *(["targets"] if self.paired else [])]
        planned = [self.folder / "index.html", *(self.folder / k / n for k in kinds for n in self.names)]
        existing = [p for p in planned if p.exists()]
        if existing:
            raise UsageError(f"--save-images {folder}: {len(existing)} of the files it would write exist "
                             f"({existing[0]}{', ...' if len(existing) > 1 else ''}); they are kept: choose another "
                             "folder")  # fmt: skip
        check_writable(self.folder, "the images folder (--save-images)")
        self.scored = [0] * len(checkpoints)

    def saver(self, which: int):
        """The on_batch callback of evaluate_generator for checkpoint number `which`."""
        from PIL import Image

        from ackd_fast.translate import save_image

        def save(indices: list[int], inputs, outputs, targets) -> None:
            columns = [(self.labels[which], outputs)]
            if which == 0:
                columns += [("inputs", inputs)] + ([("targets", targets)] if targets is not None else [])
            for kind, images in columns:
                for i, image in zip(indices, images, strict=True):
                    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
                    save_image(self.folder / kind / self.names[i], picture)
            self.scored[which] += len(indices)

        return save

    def write_index(self, title: str) -> Path:
        """index.html over the checkpoints scored so far: input, each one's output, target."""
        done = [label for label, n in zip(self.labels, self.scored, strict=True) if n]
        columns = ["input", *done, *(["target"] if self.paired else [])]
        rows = []
        for name in self.names:
            row = {"name": name, "input": self.folder / "inputs" / name}
            row |= {label: self.folder / label / name for label in done}
            if self.paired:
                row["target"] = self.folder / "targets" / name
            rows.append(row)
        return write_index(self.folder, title, rows, columns)


def evaluate_checkpoints(checkpoints: list[str], settings: EvaluationSettings | None = None, *,
                         on_row: Callable[[dict, int, int], None] | None = None, **overrides) -> dict:  # fmt: skip
    """Scores every checkpoint (and the best.pt beside it, when training selected one) and writes the report.
    Checkpoints are any files `peers.read_generator` reads; `settings` (fields replaced by `overrides`) say how;
    `on_row(row, index, count)` gets each row as soon as it is scored. The report folder is checked writable first.
    Defaults come from the first checkpoint's run config when it carries one: its dataset, direction, objective
    (aligned or unaligned data) and crop size, its folder for the report. The split: "auto" = test when present,
    else val."""
    s = replace(settings or EvaluationSettings(), **overrides)
    _check_settings(s)
    if not checkpoints:
        raise UsageError("give at least one checkpoint (--checkpoint ckpt.pt ...)")
    batch_size, phase, direction = s.batch_size, s.phase, s.direction
    first = read_generator(checkpoints[0])
    file_config(checkpoints[0], first.config)  # its values size what is allocated below: checked as flags are
    config = first.config or {}
    root = s.dataroot or config.get("dataroot", "")
    if not root:
        raise UsageError(f"{checkpoints[0]} carries no run config to take the dataset from: pass --dataroot")
    if root == "sample":  # the run built the sample set in its own folder
        root = str(Path(config["out_dir"]) / "data")
    if direction == "auto":
        direction = first.direction or "AtoB"
    mode = s.dataset_mode
    if mode == "auto" and first.objective:
        mode = "aligned" if first.objective == "pix2pix" else "unaligned"
    elif mode == "auto":
        mode = "aligned" if any((Path(root) / p).is_dir() for p in ("train", *data_lib.EVAL_PHASES)) else "unaligned"
    if s.dataset_mode == "auto" and first.objective:
        _check_layout(checkpoints[0], first.objective, root, mode, phase, direction)
    notes = []
    if phase == "auto" and mode != "single":
        phase = data_lib.evaluation_phase(root, mode, direction)
        if phase != data_lib.EVAL_PHASES[0]:
            notes.append(f"{root} has no test split: scored on {phase}")
            print(notes[-1])
    size = s.crop_size or config.get("crop_size") or 256
    dataset = data_lib.make_dataset(root, mode, phase, train=False, direction=direction, load_size=size, crop_size=size)
    candidates = []  # (path, which), every one known before the first is scored (on_row says which is last)
    for ckpt in checkpoints:
        candidates.append((ckpt, "final"))
        best = Path(ckpt).parent / BEST
        if best.is_file() and best.resolve() != Path(ckpt).resolve():
            candidates.append((str(best), "best"))
    pages = ScoredImages(s.save_images, dataset, [path for path, _ in candidates], root) if s.save_images else None
    out = Path(s.out_dir or Path(checkpoints[0]).parent)
    check_writable(out, "the report folder (--out-dir)")
    dev = torch.device(s.device if s.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    latency_size = s.latency_size or size
    latency_dtypes = latency_dtypes_for(s.latency_dtypes, dev)
    info: dict = {
        "dataroot": root,
        "split": phase,
        "images": len(dataset),
        "size": size,
        "mode": mode,
        "direction": direction,
        "device": metrics.device_name(dev),
        "latency_size": latency_size,
        "notes": notes,
    }

    inception, reference = None, None
    fid_stats, inception_weights = s.fid_stats, s.inception_weights
    if s.fid:
        inception = metrics.load_inception(inception_weights or None, dev, s.download, s.inception_sha256)
        # load_inception read the file only after its digest matched: no second pass over its 95 MB to tell
        published = metrics.check_sha256(s.inception_sha256) == metrics.INCEPTION_SHA256
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
            reference = cached_reference_stats(dataset, inception, s.inception_sha256, s.fid_cache or None,
                                               batch_size=max(batch_size, 16), phases=("train", phase),
                                               progress=s.progress)  # fmt: skip
            saved = out / "fid_reference.npz"
            metrics.save_stats(saved, reference, reference["protocol"])
            info["fid_reference"] = f"{saved} ({json.dumps(reference['protocol'])})"
            protocol = reference["protocol"]
            info["fid_reference_split"] = f"{protocol['split']} ({protocol['domain']}, {protocol['images']} images)"
            info["fid_reference_cache"] = protocol["cache"]
            print(f"FID reference statistics of {protocol['split']}: {protocol['cache']}", file=sys.stderr)
    else:
        info["notes"].append("FID/KID not computed (--no-fid)")
        if not dataset.paired:
            info["notes"].append(
                f"no score: {mode} data has no targets for PSNR/SSIM, and FID/KID, its only scores, are off "
                "(--no-fid)"
            )
            print(info["notes"][-1])

    rows = []
    for index, (path, which) in enumerate(candidates):
        loaded = first if path == checkpoints[0] else read_generator(path)
        g = loaded.generator
        selected = f"final (step {loaded.step})" if loaded.step is not None else f"as loaded ({loaded.source})"
        if which == "best":
            sel = loaded.selection
            selected = f"best on {sel['split']} (step {sel['step']}, {sel['metric']} {sel['value']:.3f})"
        scores = evaluate_generator(g, dataset, dev, batch_size, inception, reference, s.kid_subsets,
                                    s.kid_subset_size, f"scoring {path}" if s.progress else "",
                                    on_batch=pages.saver(index) if pages else None)  # fmt: skip
        row = {
            "model": describe_run(loaded.config) if loaded.config else loaded.label,
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
        if s.latency_runs > 0:
            batches = (1, s.latency_batch)
            for lat in metrics.measure_latency(g, latency_size, dev, batches, latency_dtypes, runs=s.latency_runs):
                row[f"ms_{lat['dtype']}_b{lat['batch']}"] = lat["median_ms"]
                row[f"img_s_{lat['dtype']}_b{lat['batch']}"] = lat["images_per_s"]
        rows.append(row)
        if pages is not None:
            info["saved_images"] = str(pages.write_index(f"{root}: the images scored ({phase}, {size}x{size})"))
        if on_row is not None:
            on_row(row, index, len(candidates))
    task = s.task
    if task == "auto":
        task = task_of(root)
        if task == "map2aerial" and direction == "AtoB":
            info["notes"].append(
                "the published map→aerial rows are GAN Compression's map2sat (maps run BtoA); this run is AtoB"
            )
        if task is None:
            task = "edges2shoes"
            info["notes"].append(
                "this data is none of the published tasks; the edges→shoes rows are shown for "
                "scale only, not for comparison"
            )
    elif task not in PUBLISHED and task != "none":
        raise UsageError(f"--task must be auto, none or one of {', '.join(PUBLISHED)}; got {task!r}")
    return write_report(out, rows, info, None if task == "none" else task)
