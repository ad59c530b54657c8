"""What both implementations share: input checks, the window grid, and the output schema
(declared by the families, kernels/families.py; the dict views here are what older callers read).

`kernels` (numba) and `kernels.reference` (numpy) both call these, so the two can only differ
in how they compute a metric, never in which windows exist or what shape/dtype a result has.
"""
from __future__ import annotations

import numpy as np

from kernels.families import FAMILIES, HIT_FAMILIES, PLAYED_FAMILIES
from kernels.structure import LAGS as STRUCTURE_LAGS  # noqa: F401  (re-exported: the lags of bar_sim_lag{g})


def _view(families, args):
    """name -> (dtype, shape function of `args`) of the families' metrics: the older schema view."""
    def shape(metric):
        return lambda *sizes: metric.trailing(dict(zip(args, sizes)))
    return {m.name: (m.dtype, shape(m)) for f in families for m in FAMILIES[f].metrics}


# The window metrics of the hits (kernels.window_metrics): name -> (dtype, trailing shape as a
# function of (D, num_bars, ioi_bins)). The declarations live in the family modules.
WINDOW_SCHEMA = _view(HIT_FAMILIES, ("drums", "bars", "ioi_bins"))
STRUCTURE_SCHEMA = _view(("structure",), ("drums", "bars", "ioi_bins"))
WINDOW_METRICS = tuple(WINDOW_SCHEMA)
# Velocity and timing (kernels.expressive_metrics): trailing shape as a function of (D, positions).
EXPRESSIVE_SCHEMA = _view(PLAYED_FAMILIES, ("drums", "positions"))
EXPRESSIVE_METRICS = tuple(EXPRESSIVE_SCHEMA)

SONG_SCHEMA = {
    "avg_hits": ("float64", lambda D: ()),
    "max_hits": ("int32", lambda D: ()),
    "drum_density": ("float64", lambda D: (D,)),
    "step_entropy": ("float64", lambda D: ()),
    "phrase_entropy": ("float64", lambda D: ()),
    "ngram_diversity": ("int64", lambda D: ()),
}
SONG_METRICS = tuple(SONG_SCHEMA)

SECTION_SCHEMA = {
    "avg_hits": ("float64", lambda D: ()),
    "drum_density": ("float64", lambda D: (D,)),
    "max_hits": ("int32", lambda D: ()),
    "dense_frac": ("float64", lambda D: ()),
}
SECTION_METRICS = tuple(SECTION_SCHEMA)


def check_roll(roll) -> np.ndarray:
    """The roll as a 0/1 uint8 [T, D] array (a hit is a value > 0)."""
    roll = np.asarray(roll)
    if roll.ndim != 2:
        raise ValueError(f"roll must be 2-D [T, D], got shape {roll.shape}")
    if roll.shape[1] < 1:
        raise ValueError("roll needs at least one drum (D >= 1)")
    return np.ascontiguousarray(roll > 0, dtype=np.uint8)


def check_expressive(hits, velocity, offset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hits 0/1 uint8, velocity int16, offset int16) [T, D], all of one shape; a hit is hits > 0."""
    hits = check_roll(hits)
    velocity, offset = np.asarray(velocity), np.asarray(offset)
    for name, a in (("velocity", velocity), ("offset", offset)):
        if a.shape != hits.shape:
            raise ValueError(f"{name} must have the shape of hits {hits.shape}, got {a.shape}")
        if a.dtype.kind not in "iu":
            raise ValueError(f"{name} must be integers (velocity 0..127, offset in 1/128 step), got {a.dtype}")
    return hits, np.ascontiguousarray(velocity, np.int16), np.ascontiguousarray(offset, np.int16)


def check_beat(steps_per_bar: int, beats_per_bar: int) -> int:
    """Steps per beat; a bar that does not split into whole beats is rejected."""
    if steps_per_bar < 1 or beats_per_bar < 1:
        raise ValueError(f"steps_per_bar ({steps_per_bar}) and beats_per_bar ({beats_per_bar}) must be >= 1")
    if steps_per_bar % beats_per_bar:
        raise ValueError(f"steps_per_bar={steps_per_bar} is not a whole number of beats "
                         f"(beats_per_bar={beats_per_bar})")
    return steps_per_bar // beats_per_bar


def check_bar_capacity(steps_per_bar: int, num_drums: int) -> None:
    if steps_per_bar * num_drums > np.iinfo(np.uint16).max:
        raise ValueError(f"steps_per_bar * D = {steps_per_bar * num_drums} hits per bar do not fit "
                         "bar_hits (uint16)")


def check_positive(**values: int) -> None:
    for name, v in values.items():
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


def window_grid(num_steps: int, seq_len: int, stride: int) -> tuple[np.ndarray, int]:
    """(starts, L): starts 0, stride, ... while start + seq_len <= T; one [0, T) if 0 < T < seq_len."""
    check_positive(seq_len=seq_len, stride=stride)
    if num_steps == 0:
        return np.zeros(0, np.int64), 0
    if num_steps < seq_len:
        return np.zeros(1, np.int64), int(num_steps)
    return np.arange(0, num_steps - seq_len + 1, stride, dtype=np.int64), int(seq_len)


def window_counts(lengths: np.ndarray, seq_len: int, stride: int) -> np.ndarray:
    """Number of windows of each song of `lengths` steps: len(window_grid(T, seq_len, stride)[0]) for all."""
    check_positive(seq_len=seq_len, stride=stride)
    lengths = np.asarray(lengths, np.int64)
    return np.where(lengths >= seq_len, (lengths - seq_len) // stride + 1, (lengths > 0).astype(np.int64))


def corpus_windows(song_offsets: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(song, start) of every window of a corpus, by song then start: `window_grid` for all songs at once.

    The one window rule of the project: the metrics stage computes these windows, the export writes
    them, training and evaluation read them from the export.
    """
    counts = window_counts(np.diff(np.asarray(song_offsets, np.int64)), seq_len, stride)
    song = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    start = (np.arange(len(song), dtype=np.int64) - np.repeat(first, counts)) * stride
    return song, start


def scoring_windows(song_offsets: np.ndarray, seq_len: int, stride: int, align: int = 1
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(song, start, first) of windows that score every predictable step of every song exactly once.

    A window [start, start + seq_len) predicts the steps start+1 .. start+seq_len (its last position
    predicts the step after it), so song steps 1 .. T-1 are the predictable ones. The windows are
    `corpus_windows` (the training rule) at `stride` <= seq_len, plus, where the grid's last window
    stops short of the song's last step, one tail window: the first multiple of `align` (the bar)
    from which seq_len steps reach step T-1 (it ends at the song's end or, padded, at most align-1
    steps past it). `first` is the first song-relative step a window scores: the steps before it
    were scored by the song's previous window, so each step is scored once, in the window where it
    has the most context.
    """
    check_positive(seq_len=seq_len, stride=stride, align=align)
    if stride > seq_len:
        raise ValueError(f"stride={stride} > seq_len={seq_len} would leave steps between windows unscored")
    song, start = corpus_windows(song_offsets, seq_len, stride)
    lengths = np.diff(np.asarray(song_offsets, np.int64))
    last = np.full(len(lengths), -1, np.int64)
    np.maximum.at(last, song, start)
    # the grid's last window predicts up to step last + seq_len; songs whose step T-1 lies beyond it
    short = np.flatnonzero((last >= 0) & (last + seq_len < lengths - 1))
    tail = -(-(lengths[short] - 1 - seq_len) // align) * align
    song = np.concatenate([song, short])
    start = np.concatenate([start, tail])
    order = np.lexsort((start, song))
    song, start = song[order], start[order]
    same = np.r_[False, song[1:] == song[:-1]]
    prev_end = np.r_[0, start[:-1] + seq_len]          # last step the previous window predicts
    first = np.where(same, np.maximum(start + 1, prev_end + 1), start + 1)
    return song, start, first.astype(np.int64)


def default_dense_threshold(num_drums: int, dense_threshold) -> float:
    """A bar is dense when more than this many distinct drums are hit in it (default D / 2)."""
    return num_drums / 2.0 if dense_threshold is None else float(dense_threshold)


def empty_window_outputs(num_windows: int, families, dims: dict) -> dict:
    """Zero [W, ...] arrays of every metric of the named families, in registry order."""
    return {m.name: np.zeros((num_windows, *m.trailing(dims)), m.dtype) for f in families for m in FAMILIES[f].metrics}


def phrase_sections(num_steps: int, phrase_len: int) -> np.ndarray:
    """Default sections: one per phrase of the absolute grid; the last one may be partial."""
    starts = np.arange(0, num_steps, phrase_len, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + phrase_len, num_steps)], axis=1).reshape(-1, 2)


def check_sections(sections, num_steps: int, phrase_len: int) -> np.ndarray:
    """Sections as int64 [K, 2] of song-relative (start, end); None/empty -> one per phrase."""
    if sections is None or len(sections) == 0:
        return phrase_sections(num_steps, phrase_len)
    sec = np.asarray(sections, dtype=np.int64).reshape(-1, 2)
    bad = (sec[:, 0] < 0) | (sec[:, 1] <= sec[:, 0]) | (sec[:, 1] > num_steps)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"section {k} = ({sec[k, 0]}, {sec[k, 1]}) is not a non-empty range "
                         f"inside the song's {num_steps} steps")
    return sec
