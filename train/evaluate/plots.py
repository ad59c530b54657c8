"""The evaluate report's charts: paired histograms of real vs generated metrics, score bars.

Matplotlib with the Agg backend (no display needed); every file is written through
`common.atomic.atomic_path`, so a crash never leaves half a PNG. Piano rolls are not drawn here:
every roll the project draws is train/report/rolls.py's.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.atomic import atomic_path  # noqa: E402

REAL_COLOR, GEN_COLOR = "#1f77b4", "#ff7f0e"


def _save(fig, path: str | Path, tight: bool = True) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)   # also when saving fails: figures otherwise pile up in a long run
    return path


def save_paired_histograms(path: str | Path, real: dict[str, np.ndarray], generated: dict[str, np.ndarray],
                           labels: tuple[str, str] = ("real", "generated"),
                           annotations: dict[str, str] | None = None) -> Path:
    """One panel per metric: histograms of the real and generated values on shared bins.

    Metrics with several values per sample (e.g. drum_density [N, D]) are drawn per sample as the
    mean of its values, so every panel is one number per sample.
    """
    names = [n for n in real if n in generated]
    if not names:
        raise ValueError("save_paired_histograms: no metric in both sets")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(4 * cols, 2.8 * rows))
    for ax, name in zip(axes.ravel(), names):
        r = np.asarray(real[name], np.float64).reshape(len(real[name]), -1).mean(1)
        g = np.asarray(generated[name], np.float64).reshape(len(generated[name]), -1).mean(1)
        lo, hi = min(r.min(), g.min()), max(r.max(), g.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 30)
        # one stairs artist per set (not a patch per bin): many panels stay quick to draw
        for values, color, label in ((r, REAL_COLOR, labels[0]), (g, GEN_COLOR, labels[1])):
            density, _ = np.histogram(values, bins=bins, density=True)
            ax.stairs(density, bins, fill=True, alpha=0.5, color=color, label=label)
        ax.set_title(name + (f"\n{annotations[name]}" if annotations and name in annotations else ""),
                     fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.93, bottom=0.05, hspace=0.7, wspace=0.25)
    return _save(fig, path, tight=False)


def save_score_bars(path: str | Path, rows: dict[str, dict], keys: tuple[str, ...] = ("nll_bits_per_step", "f1")
                    ) -> Path:
    """A bar chart per score key, one bar per model/baseline (rows: name -> scores)."""
    fig, axes = plt.subplots(1, len(keys), squeeze=False, figsize=(4 * len(keys), 3))
    names = list(rows)
    for ax, key in zip(axes[0], keys):
        values = [rows[n][key] for n in names]
        ax.bar(names, values, color=[GEN_COLOR if n == "model" else REAL_COLOR for n in names])
        ax.set_title(key, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
