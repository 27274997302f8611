"""The method study: one teacher, then every arm (ACKD variants, plain KD, no KD) for N seeds paired by seed, scored
on held-out data, with paired differences against plain KD and their 95 % confidence intervals.

    ackd-fast study                       # the committed CPU configuration (preset "cpu"), under runs/study
    ackd-fast study --gpu                 # paper scale (256 px, ngf-64 teacher, the ngf-16 student) on a GPU
    ackd-fast study --arms ackd,plain --main-seeds 3 --student-steps 300   # any subset, any scale

Data: the built-in photo -> sketch tile set with three regions per photograph: training tiles on the left, a
validation band, and the held-out test quarter on the right. Choices (which arm wins, the defaults) are read off the
validation split; the test split is reported beside it and never used to choose.

Pairing: seed s gives every arm the same student initialisation and the same data order (and augmentation draws),
so the differences between arms at one seed are paired. Arms run seed-major, so a study stopped early has whole
seeds, and the arms that are not `Arm.main` (fewer seeds) stop sooner.

Resumable: every run keeps its checkpoint (`--resume` semantics) and a finished run leaves `score.json`; running the
same command again skips finished runs and continues an interrupted one from its last checkpoint. Writes, under
`out_dir`: data/, teacher/, <arm>/seed<N>/ (runs), results.json, results.md, study.png; `ackd-fast study --report`
rewrites the report from the runs that have finished (their score.json; log.jsonl for the curves and diagnostics).

Records: a study meant for the repository runs with `--out-dir benchmarks/results/DATE-study-PRESET/runs`, where
.gitignore keeps each run's score.json and log.jsonl and the report for the commit and leaves out the checkpoints,
the tile set, the samples and the loss plots (runs/ at the top level, the default, is not committed at all).
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ackd_fast import data as data_lib
from ackd_fast.assembly import Config
from ackd_fast.checkpoint import CHECKPOINT, write_atomic
from ackd_fast.errors import UsageError
from ackd_fast.flags import flag
from ackd_fast.plots import read_log

BASELINE_ARM = "plain"


@dataclass(frozen=True)
class Arm:
    """One way of training the student: Config overrides on top of the study's distill config."""

    label: str
    overrides: dict
    main: bool = False  # the arms that get the full seed count (the others get `other_seeds`)


# The arms a study can run, by name. "ackd" is the configuration the CLI and the demo default to.
ARMS = {
    "ackd": Arm("ACKD (parallel, default init, teacher path)", {"kd": "ackd"}, main=True),
    "plain": Arm("plain KD (GAN Compression's)", {"kd": "plain"}, main=True),
    "none": Arm("no KD", {"kd": "none"}, main=True),
    "ackd-chained": Arm("ACKD chained", {"kd": "ackd", "composition": "chained"}),
    "ackd-chained-nores": Arm(
        "ACKD chained w/o ACK-F residual", {"kd": "ackd", "composition": "chained", "residual": False}
    ),
    "ackd-identity": Arm("ACKD identity init", {"kd": "ackd", "refiner_init": "identity"}),
    "ackd-normal": Arm("ACKD normal(0, 0.02) init", {"kd": "ackd", "refiner_init": "normal"}),
    "ackd-masked": Arm("ACKD masked teacher path", {"kd": "ackd", "ack_train": "masked"}),
    "ackd-every8": Arm("ACKD, teacher path every 8th step", {"kd": "ackd", "ack_path_every": 8}),
}
# What a study runs when --arms is not given: every arm but "ackd-normal" (GAN Compression's init is already every
# generator's and connector's; for the refiners it is one more variant, left to --arms for want of CPU hours).
DEFAULT_ARMS = ("ackd", "plain", "none", "ackd-chained", "ackd-chained-nores", "ackd-identity", "ackd-masked",
                "ackd-every8")


@dataclass
class StudyConfig:
    """The study's settings: every field is a flag of `ackd-fast study`."""

    out_dir: str = flag("runs/study", "study folder")
    preset: str = flag("cpu", "scale: cpu, gpu or tiny (--gpu: alias of --preset gpu)")
    arms: str = flag("", f"comma-separated among {', '.join(ARMS)}; empty = {','.join(DEFAULT_ARMS)}")
    main_seeds: int = flag(0, "seeds of ackd, plain, none; 0 = the preset's")
    other_seeds: int = flag(0, "seeds of the other arms; 0 = the preset's")
    teacher_steps: int = flag(0, "0 = the preset's")
    student_steps: int = flag(0, "0 = the preset's")
    report: bool = flag(False, "only rewrite the report from the finished runs")
    progress: bool = flag(False, "progress bars on a terminal (else status lines)")


@dataclass(frozen=True)
class Scale:
    """What a preset fixes: the data, the models and the training budget."""

    short_side: int  # the photographs' short side in the tile set
    tile: int  # training tiles (and load size); crops of `crop`
    crop: int
    eval_tile: int  # val and test tiles
    tile_stride: int
    val: float  # the validation band's share of the width
    teacher_ngf: int
    student_ngf: int
    ndf: int
    batch_size: int
    lr: float
    teacher_steps: int
    student_steps: int
    main_seeds: int
    other_seeds: int
    eval_points: int = 6  # validation scores logged per run (the learning curves)
    kv_stride: int = 1
    heads: int = 4


PRESETS = {
    # The committed CPU study (2 cores): taps 16x16 (64 px crops), teacher 4x the student's width.
    "cpu": Scale(short_side=384, tile=72, crop=64, eval_tile=64, tile_stride=16, val=0.25, teacher_ngf=32,
                 student_ngf=8, ndf=32, batch_size=4, lr=5e-4, teacher_steps=1500, student_steps=500,
                 main_seeds=10, other_seeds=3),
    # Paper scale on a GPU: 256 px crops (taps 64x64), the ngf-64 teacher and GAN Compression's ngf-16 student.
    "gpu": Scale(short_side=1280, tile=286, crop=256, eval_tile=256, tile_stride=32, val=0.25, teacher_ngf=64,
                 student_ngf=16, ndf=64, batch_size=4, lr=2e-4, teacher_steps=20000, student_steps=10000,
                 main_seeds=10, other_seeds=3),
    # Seconds, for tests.
    "tiny": Scale(short_side=200, tile=32, crop=32, eval_tile=32, tile_stride=32, val=0.2, teacher_ngf=4,
                  student_ngf=2, ndf=4, batch_size=2, lr=5e-4, teacher_steps=3, student_steps=2, main_seeds=2,
                  other_seeds=1, eval_points=1, heads=2),
}  # fmt: skip


def _check(sc: StudyConfig) -> list[str]:
    if sc.preset not in PRESETS:
        raise UsageError(f"preset must be one of {tuple(PRESETS)}, got {sc.preset!r}")
    for name in ("main_seeds", "other_seeds", "teacher_steps", "student_steps"):
        value = getattr(sc, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"{name} must be an int >= 0 (0: the preset's), got {value!r}")
    arms = [a.strip() for a in sc.arms.split(",") if a.strip()] or list(DEFAULT_ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise UsageError(f"arms must be names from {tuple(ARMS)}, got {unknown}")
    return list(dict.fromkeys(arms))


def _scale(sc: StudyConfig) -> Scale:
    given = {k: getattr(sc, k) for k in ("main_seeds", "other_seeds", "teacher_steps", "student_steps")}
    return replace(PRESETS[sc.preset], **{k: v for k, v in given.items() if v})


def _base_config(scale: Scale, data_root: Path, out: Path, steps: int, seed: int, progress: bool) -> Config:
    every = max(1, steps // scale.eval_points)
    return Config(
        out_dir=str(out),
        dataroot=str(data_root),
        load_size=scale.tile,
        crop_size=scale.crop,
        batch_size=scale.batch_size,
        ndf=scale.ndf,
        lr=scale.lr,
        workers=0,
        seed=seed,
        steps=steps,
        log_every=max(1, min(10, steps)),
        sample_every=steps,
        ckpt_every=max(1, steps // 4),
        eval_every=every,
        eval_split="val",
        resume=True,
        progress=progress,
    )


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=1)
    write_atomic(path, lambda f: f.write(text.encode()))


def _score(ckpt: Path, splits: dict) -> dict:
    from ackd_fast.evaluation import evaluate_generator
    from ackd_fast.peers import load_generator

    g = load_generator(ckpt)
    out = {}
    for split, dataset in splits.items():
        scores = evaluate_generator(g, dataset)
        out[split] = {"psnr": scores["psnr"], "ssim": scores["ssim"]}
    return out


def _run(cfg: Config, splits: dict) -> dict:
    """Trains cfg (resuming a started run) unless its score.json says it finished; returns that score."""
    from ackd_fast.train import train

    out = Path(cfg.out_dir)
    done = out / "score.json"
    if done.is_file():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    result = train(cfg)
    score = _score(out / CHECKPOINT, splits) | {"train_s": time.perf_counter() - t, "step": result["step"]}
    _write_json(done, score)
    return score


def run_study(sc: StudyConfig, argv: list[str] | None = None) -> dict:
    arms = _check(sc)
    scale = _scale(sc)
    out = Path(sc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = "ackd-fast study " + shlex.join(argv if argv is not None else sys.argv[2:])
    if not sc.report:
        data_root = data_lib.build_tile_set(
            out / "data", tile=scale.tile, test_tile=scale.eval_tile, stride=scale.tile_stride, val=scale.val,
            short_side=scale.short_side,
        )  # fmt: skip
        size = scale.eval_tile
        splits = {
            split: data_lib.make_dataset(data_root, "aligned", split, train=False, crop_size=size, load_size=size)
            for split in ("val", "test")
        }
        teacher_cfg = replace(
            _base_config(scale, data_root, out / "teacher", scale.teacher_steps, 0, sc.progress),
            job="teacher", ngf=scale.teacher_ngf,
        )  # fmt: skip
        teacher = out / "teacher" / CHECKPOINT
        if not teacher.is_file():  # a study continued from its committed scores: the students need the teacher
            (out / "teacher" / "score.json").unlink(missing_ok=True)
        _run(teacher_cfg, splits)
        teacher = str(teacher)
        seeds = {a: scale.main_seeds if ARMS[a].main else scale.other_seeds for a in arms}
        for seed in range(max(seeds.values())):
            for arm in arms:
                if seed >= seeds[arm]:
                    continue
                cfg = replace(
                    _base_config(scale, data_root, out / arm / f"seed{seed}", scale.student_steps, seed, sc.progress),
                    job="distill", teacher=teacher, recipe="compress", student_ngf=scale.student_ngf,
                    kv_stride=scale.kv_stride, heads=scale.heads, **ARMS[arm].overrides,
                )  # fmt: skip
                print(f"study: {arm} seed {seed}", flush=True)
                _run(cfg, splits)
                write_report(out, arms, scale, command)
    return write_report(out, arms, scale, command)


# ----------------------------------------------------------------------------------------- records


def scores_from_report(results_json: Path, runs_dir: Path) -> list[Path]:
    """Writes the score.json of every run that `results_json` (a study's results.json) reports, under `runs_dir` as
    a study lays them out (teacher/, <arm>/seed<N>/), for a study whose run folders were lost: `--report` and a
    continuation read them as they read a finished run's. Each file says it is reconstructed. What results.json
    holds per run is exact (the validation and test PSNR and SSIM of every seed; the teacher's whole score); the
    per-run training time is not in it, so each run gets its arm's mean `train_s`, and `step` is the scale's
    `student_steps` (a score is written only by a finished run). Returns the files written."""
    results = json.loads(Path(results_json).read_text())
    note = f"reconstructed from {Path(results_json).name}"
    written = []
    if "teacher" in results:
        teacher = runs_dir / "teacher" / "score.json"
        teacher.parent.mkdir(parents=True, exist_ok=True)
        _write_json(teacher, results["teacher"] | {"reconstructed": f"{note}, which holds this score whole"})
        written.append(teacher)
    for arm, row in results["arms"].items():
        # the report lists each arm's runs in the order _scores reads them: by folder name (seed10 before seed2)
        seeds = sorted(row["seeds"], key=lambda seed: f"seed{seed}")
        for i, seed in enumerate(seeds):
            score = {split: {metric: row[f"{split}_{metric}"]["runs"][i] for metric in ("psnr", "ssim")}
                     for split in ("val", "test")}  # fmt: skip
            score |= {"train_s": row["train_s"], "step": results["scale"]["student_steps"],
                      "reconstructed": f"{note}: val and test PSNR/SSIM are this run's own; train_s is the arm's "
                      "mean (the per-run times were not kept); step is the scale's student_steps"}  # fmt: skip
            path = runs_dir / arm / f"seed{seed}" / "score.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(path, score)
            written.append(path)
    return written


# ----------------------------------------------------------------------------------------- the report


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student's t quantile (scipy's)."""
    from scipy import stats

    return float(stats.t.ppf(q, df))


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """a - b over the seeds both have: mean, sample std, n and the 95 % t interval's half-width (None below 2)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_quantile(len(diffs) - 1) * std / math.sqrt(len(diffs))
    return {"mean": mean, "std": std, "n": len(diffs), "ci95": [mean - half, mean + half], "half_width": half,
            "diffs": dict(zip(seeds, diffs, strict=True))}  # fmt: skip


def _scores(out: Path, arm: str) -> dict[int, dict]:
    runs = {}
    for path in sorted((out / arm).glob("seed*/score.json")):
        runs[int(path.parent.name[4:])] = json.loads(path.read_text())
    return runs


def _diagnostics(run: Path) -> dict:
    """The first and last diagnostics record of a run's log (ACKD arms)."""
    log = run / "log.jsonl"
    diags = [r for r in read_log(log) if "diag" in r] if log.is_file() else []
    return {"first": diags[0], "last": diags[-1]} if diags else {}


def write_report(out: Path, arms: list[str], scale: Scale, command: str) -> dict:
    results: dict = {"command": command, "scale": asdict(scale), "arms": {}, "vs_" + BASELINE_ARM: {}}
    teacher = out / "teacher" / "score.json"
    if teacher.is_file():
        results["teacher"] = json.loads(teacher.read_text())
    per_arm = {arm: _scores(out, arm) for arm in arms}
    for arm, runs in per_arm.items():
        if not runs:
            continue
        row: dict = {"label": ARMS[arm].label, "seeds": sorted(runs)}
        for split in ("val", "test"):
            for metric in ("psnr", "ssim"):
                values = [r[split][metric] for r in runs.values()]
                row[f"{split}_{metric}"] = {
                    "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "runs": values,
                }  # fmt: skip
        row["train_s"] = statistics.fmean(r["train_s"] for r in runs.values())
        if ARMS[arm].overrides.get("kd") == "ackd":
            row["diagnostics_seed0"] = _diagnostics(out / arm / f"seed{min(runs)}")
        results["arms"][arm] = row
    base = per_arm.get(BASELINE_ARM, {})
    for arm, runs in per_arm.items():
        if arm == BASELINE_ARM or not runs or not base:
            continue
        psnr = {split: ({s: r[split]["psnr"] for s, r in runs.items()}, {s: r[split]["psnr"] for s, r in base.items()})
                for split in ("val", "test")}  # fmt: skip
        results["vs_" + BASELINE_ARM][arm] = {split: paired(*pair) for split, pair in psnr.items()}
    results["verdict"] = _verdict(results)
    _write_json(out / "results.json", results)
    (out / "results.md").write_text(format_report(results) + "\n")
    if results["arms"]:
        plot_study(out, results)
    return results


def _verdict(results: dict) -> str:
    """Which arm wins on the validation split, and whether ACKD's default beats plain KD beyond the interval."""
    arms = results["arms"]
    if not arms:
        return "no finished runs yet"
    best = max(arms, key=lambda a: arms[a]["val_psnr"]["mean"])
    lines = [f"highest validation PSNR: {best} ({arms[best]['val_psnr']['mean']:.2f} dB)"]
    vs = results["vs_" + BASELINE_ARM]
    for arm, d in vs.items():
        val = d.get("val")
        if val is None:
            continue
        lo, hi = val["ci95"]
        word = "beats" if lo > 0 else ("loses to" if hi < 0 else "ties with")
        lines.append(f"{arm} {word} plain KD on val: {val['mean']:+.2f} dB, 95 % CI [{lo:+.2f}, {hi:+.2f}], "
                     f"n={val['n']}")  # fmt: skip
    return "; ".join(lines)


def format_report(results: dict) -> str:
    rows = ["| arm | seeds | val PSNR | test PSNR | test SSIM | − plain KD, val (95 % CI) | − plain KD, test (95 % CI) "
            "| train s |", "|---|---:|---|---|---|---|---|---:|"]  # fmt: skip
    vs = results["vs_" + BASELINE_ARM]

    def ci(d: dict | None) -> str:
        if d is None:
            return "-"
        return f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"

    for arm, row in results["arms"].items():
        v, t, s = row["val_psnr"], row["test_psnr"], row["test_ssim"]
        d = vs.get(arm, {})
        rows.append(f"| {arm} | {len(row['seeds'])} | {v['mean']:.2f} ± {v['std']:.2f} | {t['mean']:.2f} ± "
                    f"{t['std']:.2f} | {s['mean']:.3f} ± {s['std']:.3f} | {ci(d.get('val'))} | {ci(d.get('test'))} | "
                    f"{row['train_s']:.0f} |")  # fmt: skip
    lines = ["\n".join(rows), ""]
    if "teacher" in results:
        t = results["teacher"]
        lines.append(f"teacher: val {t['val']['psnr']:.2f} dB, test {t['test']['psnr']:.2f} dB PSNR")
    lines += [f"verdict: {results['verdict']}", f"command: `{results['command']}`"]
    return "\n".join(lines)


def plot_study(out: Path, results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results["arms"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    for i, arm in enumerate(arms):
        runs = results["arms"][arm]["test_psnr"]["runs"]
        ax.scatter([i] * len(runs), runs, s=12, alpha=0.6)
        ax.errorbar(i, statistics.fmean(runs), yerr=results["arms"][arm]["test_psnr"]["std"], fmt="_k", capsize=4)
    ax.set_xticks(range(len(arms)), arms, rotation=35, ha="right", fontsize=7)
    ax.set(ylabel="test PSNR (dB)", title="each seed, mean ± std")
    ax = axes[1]
    vs = results["vs_" + BASELINE_ARM]
    for i, arm in enumerate(arms):
        for off, split in ((-0.12, "val"), (0.12, "test")):
            d = (vs.get(arm) or {}).get(split)
            if d:
                ax.errorbar(
                    i + off,
                    d["mean"],
                    yerr=d["half_width"],
                    fmt="o",
                    capsize=4,
                    color="C0" if split == "val" else "C1",
                    label=split if i == 0 or arm == arms[1] else None,
                )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(arms)), arms, rotation=35, ha="right", fontsize=7)
    ax.set(ylabel="PSNR − plain KD (dB)", title="paired difference, 95 % CI")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(dict(zip(labels, handles, strict=False)).values(), dict(zip(labels, handles, strict=False)).keys())
    ax = axes[2]
    curves = {"teacher": out / "teacher"} | {a: out / a / f"seed{min(results['arms'][a]['seeds'])}" for a in arms}
    for name, run in curves.items():
        log = run / "log.jsonl"
        evals = [r for r in read_log(log) if "eval" in r] if log.is_file() else []
        if evals:
            ax.plot([r["step"] for r in evals], [r["psnr"] for r in evals], marker=".", label=name)
    ax.set(xlabel="step", ylabel="val PSNR (dB)", title="learning curves (first seed)")
    if ax.get_lines():
        ax.legend(fontsize=6)
    else:  # runs without their log.jsonl (a study rebuilt from its results.json)
        ax.set_title("learning curves: no run's log.jsonl", fontsize=9)
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "study.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["ARMS", "PRESETS", "Arm", "Scale", "StudyConfig", "paired", "run_study", "write_report"]
