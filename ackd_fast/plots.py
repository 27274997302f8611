"""Plots of runs: a training run's log.jsonl as one figure (losses, held-out scores, the refiners' diagnostics).

Matplotlib is imported when a plot is drawn (Agg backend: no screen needed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a log.jsonl; a torn last line (a run killed mid-write) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_run(log_path: str | os.PathLike, out_path: str | os.PathLike) -> Path | None:
    """Draws `log_path`'s losses (log scale), its evaluations and (ACKD) its diagnostics per tap into `out_path`
    (PNG); returns it, or None when the log has no loss records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    losses = [r for r in records if "lr" in r]
    if not losses:
        return None
    evals = [r for r in records if "eval" in r]
    diags = [r for r in records if "diag" in r]
    panels = 1 + bool(evals) + bool(diags)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in losses]
    for key in losses[0]:
        if key in ("step", "lr", "img_per_s"):
            continue
        values = [abs(r.get(key, float("nan"))) for r in losses]
        ax.plot(steps, values, label=key)
    ax.set(xlabel="step", ylabel="|loss| (interval mean)", yscale="log", title="losses")
    panel = 1
    if evals:
        ax = axes[0][panel]
        panel += 1
        for key in ("psnr", "ssim", "fid", "kid"):
            if key in evals[0]:
                ax.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=key)
        ax.set(xlabel="step", title=f"evaluation ({evals[0]['eval']})")
    if diags:
        ax = axes[0][panel]
        steps = [r["step"] for r in diags]
        for key in diags[-1]["diag"]:
            if key.endswith(("rel_dev", "src_effect")) or "/share" in key:
                ax.plot(steps, [r["diag"].get(key, float("nan")) for r in diags], label=key)
        ax.set(xlabel="step", title="refiners: |T*-F|/|F|, attention share, source effect")
    for row in axes:
        for ax in row:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
