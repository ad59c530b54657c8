"""The project's piano rolls: drums coloured by family, loudness as shading, beats banded.

Every piano roll the project draws is this one: the pages' rolls, generate's `sheet.png`, and the
evaluate report's and decoding sweep's sample sheets (`save_roll_sheet`) and real | generated columns
(`save_roll_columns`). A musician reads a groove at a glance: beats are banded, each drum family has its
colour and a hit's opacity follows its velocity (ghost notes faint, accents solid) when the sample has
velocities.

Drawn as a numpy RGB array (each step x drum cell a block of pixels) written with Pillow, drum names
and bar numbers with Pillow's default font: a matplotlib figure per roll cost ~0.14 CPU-s, most of
it text layout, and importing matplotlib ~0.3 CPU-s more, against ~0.015 CPU-s here
(benchmarks/README.md, `train.generate` start-up). `generate` draws its `sheet.png` the same way (`save_roll_sheet`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.atomic import atomic_path

# (substring of the drum's name, colour): first match wins
FAMILY_COLORS = (("kick", "#b3261e"), ("snare", "#e8710a"), ("hihat", "#b8860b"), ("hat", "#b8860b"),
                 ("tom", "#188038"), ("crash", "#1967d2"), ("ride", "#7b1fa2"), ("", "#3c4043"))
MIN_ALPHA = 0.18   # the softest hit stays visible
BACKGROUND, BAND, GRID, BAR_LINE, TEXT = "#ffffff", "#eef0f2", "#ffffff", "#5f6368", "#202124"
GRID_WIDTH = 1024  # pixels the steps span (at most 24 a step, at least 1): about the old figure's width


def drum_color(name: str) -> str:
    return next(color for key, color in FAMILY_COLORS if key in name.lower())


def pretty_name(name: str) -> str:
    """`closed_hihat` -> `Closed hi-hat`."""
    return name.replace("hihat", "hi-hat").replace("_", " ").capitalize()


def rgb(color: str) -> np.ndarray:
    """`#rrggbb` -> float [3] in 0..1."""
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], np.float64) / 255.0


def roll_image(hits: np.ndarray, drum_names: list[str], velocity: np.ndarray | None) -> np.ndarray:
    """RGBA [D, T, 4] in 0..1: each hit in its drum's colour, alpha by velocity (1 without velocities)."""
    hits = np.asarray(hits) > 0
    if velocity is None:
        alpha = hits.astype(np.float64)
    else:
        v = np.asarray(velocity, np.float64) / 127.0
        alpha = np.where(hits, MIN_ALPHA + (1 - MIN_ALPHA) * np.clip(v, 0, 1), 0.0)
    img = np.zeros((hits.shape[1], hits.shape[0], 4))
    for d, name in enumerate(drum_names):
        img[d, :, :3] = rgb(drum_color(name))
        img[d, :, 3] = alpha[:, d]
    return img


def cell_size(num_steps: int, num_drums: int) -> tuple[int, int]:
    """(width, height) in pixels of one step x drum cell: the steps span about GRID_WIDTH pixels
    whatever the length, and the grid keeps the old figure's shape (~2.7 wide : 1 high)."""
    width = max(1, min(24, GRID_WIDTH // max(1, num_steps)))
    height = int(np.clip(round(width * num_steps / (2.7 * max(1, num_drums))), 14, 48))
    return width, height


def grid_pixels(hits: np.ndarray, drum_names: list[str], steps_per_bar: int, steps_per_beat: int,
                velocity: np.ndarray | None = None, scale_steps: int | None = None) -> np.ndarray:
    """uint8 RGB [D * h + 1, T * w + 1, 3] of the roll without labels (cell size `cell_size`, of
    `scale_steps` steps when given: rolls of one scale): the first drum in the bottom row; every other
    beat banded grey, hits over it in their drum's colour at their alpha, a white line between cells
    and a darker one at every bar (and at the end)."""
    num_steps, num_drums = np.asarray(hits).shape
    w, h = cell_size(scale_steps or num_steps, num_drums)
    banded = (np.arange(num_steps) // max(1, steps_per_beat)) % 2 == 1      # beats 2 and 4 of a 4/4 bar
    under = np.where(banded[None, :, None], rgb(BAND), rgb(BACKGROUND))     # [1, T, 3]
    rgba = roll_image(hits, drum_names, velocity)
    cells = under * (1 - rgba[..., 3:]) + rgba[..., :3] * rgba[..., 3:]     # [D, T, 3] over the bands
    cells = np.round(cells[::-1] * 255).astype(np.uint8)                    # the first drum at the bottom
    img = np.empty((num_drums * h + 1, num_steps * w + 1, 3), np.uint8)
    img[:-1, :-1] = np.repeat(np.repeat(cells, h, axis=0), w, axis=1)
    img[-1], img[:, -1] = 255, 255
    grid = np.round(rgb(GRID) * 255).astype(np.uint8)
    if w >= 3:                       # narrower cells would be all line: a run of 16ths then reads as one bar
        img[:, ::w] = grid
    img[::h] = grid
    if h >= 20:                      # rows twice as far apart as steps (as the old 1.2 vs 0.6 pt lines)
        img[1::h] = grid
    bar_line = np.round(rgb(BAR_LINE) * 255).astype(np.uint8)
    img[:, ::w * steps_per_bar] = bar_line
    if num_steps % steps_per_bar == 0:
        img[:, -1] = bar_line         # the closing bar line
    return img


def _font(size: int):
    """Pillow's bundled scalable font (Pillow >= 10.1), or its bitmap font on an older Pillow."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def roll_picture(hits: np.ndarray, drum_names: list[str], steps_per_bar: int, steps_per_beat: int,
                 velocity: np.ndarray | None = None, title: str | None = None,
                 scale_steps: int | None = None) -> Image.Image:
    """The labelled roll: drum names on the left in their colours, bar numbers below, `title` above
    (`scale_steps`: drawn at the scale of a roll that long, as `grid_pixels`)."""
    grid = grid_pixels(hits, drum_names, steps_per_bar, steps_per_beat, velocity, scale_steps)
    num_steps, num_drums = np.asarray(hits).shape
    w, h = cell_size(scale_steps or num_steps, num_drums)
    font = _font(int(np.clip(h * 0.5, 10, 18)))
    size = int(getattr(font, "size", 11))
    names = [pretty_name(n) for n in drum_names]
    left = int(max(font.getlength(n) for n in names)) + 10 if names else 0
    top = size + 8 if title else 4
    picture = Image.new("RGB", (left + grid.shape[1] + 4, top + grid.shape[0] + size + 8), BACKGROUND)
    picture.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((left, 4), title, fill=TEXT, font=font)
    for d, (name, label) in enumerate(zip(drum_names, names)):
        y = top + (num_drums - 1 - d) * h + (h - size) // 2
        draw.text((left - 6 - font.getlength(label), y), label, fill=drum_color(name), font=font)
    for bar, step in enumerate(range(0, num_steps, steps_per_bar)):
        draw.text((left + step * w + 3, top + grid.shape[0] + 3), str(bar + 1), fill=TEXT, font=font)
    return picture


def _save(picture: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def save_roll(path: str | Path, hits: np.ndarray, drum_names: list[str], steps_per_bar: int,
              steps_per_beat: int, velocity: np.ndarray | None = None) -> Path:
    """Drums (rows, first drum at the bottom) x steps as a PNG; every other beat banded, bar lines darker."""
    return _save(roll_picture(hits, drum_names, steps_per_bar, steps_per_beat, velocity), path)


def save_roll_sheet(path: str | Path, rolls: list[np.ndarray], drum_names: list[str], steps_per_bar: int,
                    steps_per_beat: int, velocities: list[np.ndarray | None] | None = None,
                    titles: list[str] | None = None, same_scale: bool = False) -> Path:
    """Every roll (`roll_picture`, titled) one under another in one PNG; `same_scale`: every roll at
    the scale of the longest, so lengths and densities compare by eye."""
    if not len(rolls):
        raise ValueError("save_roll_sheet: no samples to draw")
    return _save(_stack([_pictures(rolls, drum_names, steps_per_bar, steps_per_beat, velocities, titles, same_scale)]),
                 path)


def save_roll_columns(path: str | Path, left: list[np.ndarray], right: list[np.ndarray], drum_names: list[str],
                      steps_per_bar: int, steps_per_beat: int, left_titles: list[str] | None = None,
                      right_titles: list[str] | None = None) -> Path:
    """Two columns of rolls (e.g. real | generated), every roll at the scale of the longest of both."""
    if not len(left) and not len(right):
        raise ValueError("save_roll_columns: no rolls to draw")
    scale = max(np.asarray(r).shape[0] for r in [*left, *right])
    columns = [_pictures(rolls, drum_names, steps_per_bar, steps_per_beat, None, titles, scale_steps=scale)
               for rolls, titles in ((left, left_titles), (right, right_titles))]
    return _save(_stack(columns), path)


def _pictures(rolls, drum_names, steps_per_bar, steps_per_beat, velocities=None, titles=None,
              same_scale: bool = False, scale_steps: int | None = None) -> list[Image.Image]:
    velocities = velocities if velocities is not None else [None] * len(rolls)
    titles = titles or [f"sample {i}" for i in range(len(rolls))]
    if same_scale and len(rolls):
        scale_steps = max(np.asarray(r).shape[0] for r in rolls)
    return [roll_picture(r, drum_names, steps_per_bar, steps_per_beat, v, t, scale_steps)
            for r, v, t in zip(rolls, velocities, titles)]


def _stack(columns: list[list[Image.Image]]) -> Image.Image:
    """Columns of pictures side by side, each column's pictures one under another, top-left aligned."""
    widths = [max((p.width for p in col), default=0) for col in columns]
    height = max(sum(p.height for p in col) for col in columns)
    sheet = Image.new("RGB", (sum(widths), height), BACKGROUND)
    x = 0
    for col, width in zip(columns, widths):
        y = 0
        for p in col:
            sheet.paste(p, (x, y))
            y += p.height
        x += width
    return sheet
