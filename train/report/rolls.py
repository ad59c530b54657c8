"""The page's piano rolls: one PNG per sample, drums coloured by family, loudness as shading.

Not train.evaluate.plots.draw_roll (the report.md / sheet picture): on the page a musician reads a groove at
a glance, so beats are banded, each drum family has its colour and a hit's opacity follows its
velocity (ghost notes faint, accents solid) when the sample has velocities.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from pipeline.atomic import atomic_path  # noqa: E402

# (substring of the drum's name, colour): first match wins
FAMILY_COLORS = (("kick", "#b3261e"), ("snare", "#e8710a"), ("hihat", "#b8860b"), ("hat", "#b8860b"),
                 ("tom", "#188038"), ("crash", "#1967d2"), ("ride", "#7b1fa2"), ("", "#3c4043"))
MIN_ALPHA = 0.18   # the softest hit stays visible


def drum_color(name: str) -> str:
    return next(color for key, color in FAMILY_COLORS if key in name.lower())


def pretty_name(name: str) -> str:
    """`closed_hihat` -> `Closed hi-hat`."""
    return name.replace("hihat", "hi-hat").replace("_", " ").capitalize()


def roll_image(hits: np.ndarray, drum_names: list[str], velocity: np.ndarray | None) -> np.ndarray:
    """RGBA [D, T, 4]: each hit in its drum's colour, alpha by velocity (1 without velocities)."""
    hits = np.asarray(hits) > 0
    if velocity is None:
        alpha = hits.astype(np.float64)
    else:
        v = np.asarray(velocity, np.float64) / 127.0
        alpha = np.where(hits, MIN_ALPHA + (1 - MIN_ALPHA) * np.clip(v, 0, 1), 0.0)
    img = np.zeros((hits.shape[1], hits.shape[0], 4))
    for d, name in enumerate(drum_names):
        img[d, :, :3] = to_rgb(drum_color(name))
        img[d, :, 3] = alpha[:, d]
    return img


def save_roll(path: str | Path, hits: np.ndarray, drum_names: list[str], steps_per_bar: int,
              steps_per_beat: int, velocity: np.ndarray | None = None) -> Path:
    """Drums (rows, first drum at the bottom) x steps; every other beat banded, bar lines darker."""
    num_steps, num_drums = np.asarray(hits).shape
    # One size on the page whatever the length, so the drum names stay readable in a half-width card;
    # long rolls get more pixels instead (open the PNG to zoom in).
    fig, ax = plt.subplots(figsize=(7.0, 0.26 * num_drums + 0.5), dpi=110 if num_steps <= 128 else 170)
    try:
        for b in range(0, num_steps, 2 * steps_per_beat):   # beat bands: count along by eye
            ax.axvspan(b + steps_per_beat - 0.5, b + 2 * steps_per_beat - 0.5, color="#eef0f2", lw=0, zorder=0)
        ax.imshow(roll_image(hits, drum_names, velocity), aspect="auto", origin="lower", interpolation="nearest",
                  zorder=1, extent=(-0.5, num_steps - 0.5, -0.5, num_drums - 0.5))
        ax.vlines(np.arange(num_steps + 1) - 0.5, -0.5, num_drums - 0.5, colors="white", lw=0.6, zorder=2)
        ax.hlines(np.arange(num_drums + 1) - 0.5, -0.5, num_steps - 0.5, colors="white", lw=1.2, zorder=2)
        ax.vlines(np.arange(0, num_steps + 1, steps_per_bar) - 0.5, -0.5, num_drums - 0.5, colors="#5f6368", lw=1.0,
                  zorder=3)
        ax.set_yticks(range(num_drums), [pretty_name(n) for n in drum_names], fontsize=9)
        for label, name in zip(ax.get_yticklabels(), drum_names):
            label.set_color(drum_color(name))
        bars = list(range(0, num_steps, steps_per_bar))
        ax.set_xticks(bars, [str(b // steps_per_bar + 1) for b in bars], fontsize=8)
        ax.set_xlim(-0.5, num_steps - 0.5)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.05)
    finally:
        plt.close(fig)
    return path
