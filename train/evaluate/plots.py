"""PNG pictures: drum piano rolls, a sheet of samples, paired histograms of real vs generated metrics.

Matplotlib with the Agg backend (no display needed); every file is written through
`common.atomic.atomic_path`, so a crash never leaves half a PNG.
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


def draw_roll(ax, hits: np.ndarray, drum_names: list[str], steps_per_bar: int = 16,
              title: str | None = None, velocity: np.ndarray | None = None) -> None:
    """Drums (rows, first drum at the bottom) x steps (columns); a line at every bar."""
    hits = np.asarray(hits)
    num_steps, num_drums = hits.shape
    shade = (np.asarray(velocity, np.float64) / 127.0) if velocity is not None else (hits > 0)
    ax.imshow(np.asarray(shade, np.float64).T, aspect="auto", origin="lower", cmap="Greys",
              vmin=0, vmax=1, interpolation="nearest", extent=(-0.5, num_steps - 0.5, -0.5, num_drums - 0.5))
    if num_steps <= 1024:  # white gaps between steps and drums, so a run of 16ths reads as notes
        ax.vlines(np.arange(num_steps + 1) - 0.5, -0.5, num_drums - 0.5, colors="white", lw=0.5)
        ax.hlines(np.arange(num_drums + 1) - 0.5, -0.5, num_steps - 0.5, colors="white", lw=1.0)
    ax.vlines(np.arange(0, num_steps + 1, steps_per_bar) - 0.5, -0.5, num_drums - 0.5, colors="tab:red",
              lw=0.8, alpha=0.8)
    ax.set_yticks(range(num_drums))
    ax.set_yticklabels(drum_names, fontsize=7)
    bars = range(0, num_steps, steps_per_bar)
    ax.set_xticks(list(bars))
    ax.set_xticklabels([str(b // steps_per_bar + 1) for b in bars], fontsize=6)
    ax.set_xlabel("bar", fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)


def save_piano_roll(path: str | Path, hits: np.ndarray, drum_names: list[str], steps_per_bar: int = 16,
                    title: str | None = None, velocity: np.ndarray | None = None) -> Path:
    """One sample as a PNG piano roll."""
    width = min(4 + hits.shape[0] / 16, 40)
    fig, ax = plt.subplots(figsize=(width, 0.3 * len(drum_names) + 1))
    draw_roll(ax, hits, drum_names, steps_per_bar, title, velocity)
    return _save(fig, path)


def save_sheet(path: str | Path, rolls: list[np.ndarray], drum_names: list[str], steps_per_bar: int = 16,
               titles: list[str] | None = None) -> Path:
    """All samples, one piano roll per row."""
    if not rolls:
        raise ValueError("save_sheet: no samples to draw")
    longest = max(r.shape[0] for r in rolls)
    width = min(4 + longest / 16, 40)
    fig, axes = plt.subplots(len(rolls), 1, squeeze=False,
                             figsize=(width, (0.25 * len(drum_names) + 0.8) * len(rolls)))
    for i, (ax, roll) in enumerate(zip(axes[:, 0], rolls)):
        draw_roll(ax, roll, drum_names, steps_per_bar, titles[i] if titles else f"sample {i}")
        ax.set_xlim(-0.5, longest - 0.5)
    fig.tight_layout()
    return _save(fig, path)


def save_side_by_side(path: str | Path, left: list[np.ndarray], right: list[np.ndarray], drum_names: list[str],
                      steps_per_bar: int = 16, num_steps: int | None = None, left_titles: list[str] | None = None,
                      right_titles: list[str] | None = None) -> Path:
    """Two columns of piano rolls (e.g. real | generated), every panel on the same step axis
    (`num_steps`, default the longest roll), so densities and patterns compare by eye."""
    rows = max(len(left), len(right))
    if not rows:
        raise ValueError("save_side_by_side: no rolls to draw")
    width = num_steps or max(r.shape[0] for r in list(left) + list(right))
    fig, axes = plt.subplots(rows, 2, squeeze=False, sharex=True,
                             figsize=(2 * min(3 + width / 24, 20), (0.25 * len(drum_names) + 0.8) * rows))
    for col, (rolls, titles) in enumerate(((left, left_titles), (right, right_titles))):
        for i in range(rows):
            ax = axes[i, col]
            if i >= len(rolls):
                ax.axis("off")
                continue
            draw_roll(ax, rolls[i], drum_names, steps_per_bar, titles[i] if titles else None)
            ax.set_xlim(-0.5, width - 0.5)
    fig.tight_layout()
    return _save(fig, path)


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
