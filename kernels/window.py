"""The driver: check one song, cut its windows, allocate every declared output, let each family fill it.

Families (kernels/families.py) compute their metrics in their own pass over the song; this module
only does what they share: input checks (kernels.spec), the window grid, the table widths, and
zero-filled [W, ...] arrays of the declared dtypes and shapes, handed over by name.
"""
from __future__ import annotations

import numpy as np

from kernels.families import FAMILIES, HIT_FAMILIES, PLAYED_FAMILIES
from kernels.schema import SongWindows
from kernels.spec import (check_bar_capacity, check_beat, check_expressive, check_positive, check_roll,
                          default_dense_threshold, empty_window_outputs, window_grid)


def compute(song: SongWindows, families, dims: dict) -> dict[str, np.ndarray]:
    """{metric name: [W, ...] array} of the named families, in registry order."""
    out = {}
    W = len(song.starts)
    for name in families:
        fam = FAMILIES[name]
        arrays = empty_window_outputs(W, (name,), dims)
        if W:
            fam.fill(song, fam.outputs_type(**arrays))
        out.update(arrays)
    return out


def _song(hits, seq_len, stride, steps_per_bar, beat, **params) -> SongWindows:
    starts, L = window_grid(len(hits), seq_len, stride)
    return SongWindows(hits, starts, int(L), int(stride), int(steps_per_bar), int(beat), **params)


def window_metrics(roll, *, seq_len, stride=1, steps_per_bar=16, beats_per_bar=4, ngram_n=4,
                   fast_threshold=4, dense_threshold=None, num_bars=None, ioi_bins=None,
                   bars_per_phrase=4) -> dict[str, np.ndarray]:
    """Every window metric of the hits (families rhythm and structure, docs/metrics.md) of every
    window of one song, as [W, ...] arrays.

    num_bars (default seq_len // steps_per_bar) and ioi_bins (default steps_per_bar) fix the
    widths of bar_hits and ioi_hist, so songs in other meters can share one table;
    bars_per_phrase places the fills (kernels/structure.py).
    """
    song, dims = _hit_song(roll, seq_len, stride, steps_per_bar, beats_per_bar, ngram_n, fast_threshold,
                           dense_threshold, num_bars, ioi_bins, bars_per_phrase)
    return compute(song, HIT_FAMILIES, dims)


def _hit_song(roll, seq_len, stride, steps_per_bar, beats_per_bar, ngram_n, fast_threshold, dense_threshold,
              num_bars, ioi_bins, bars_per_phrase) -> tuple[SongWindows, dict]:
    hits = check_roll(roll)
    T, D = hits.shape
    beat = check_beat(steps_per_bar, beats_per_bar)
    check_positive(ngram_n=ngram_n, bars_per_phrase=bars_per_phrase)
    check_bar_capacity(steps_per_bar, D)
    num_bars = seq_len // steps_per_bar if num_bars is None else int(num_bars)
    ioi_bins = steps_per_bar if ioi_bins is None else int(ioi_bins)
    check_positive(ioi_bins=ioi_bins)
    song = _song(hits, seq_len, stride, steps_per_bar, beat, bars_per_phrase=int(bars_per_phrase),
                 ngram_n=int(ngram_n), fast_threshold=int(fast_threshold),
                 dense_threshold=default_dense_threshold(D, dense_threshold))
    return song, {"drums": D, "bars": num_bars, "ioi_bins": ioi_bins}


def expressive_metrics(hits, velocity, offset, *, seq_len, stride=1, steps_per_bar=16, beats_per_bar=4,
                       positions=None) -> dict[str, np.ndarray]:
    """Velocity and timing metrics (the playing family, kernels/playing.py) of every window of one
    song, as [W, ...] arrays. `positions` (default steps_per_bar) fixes the width of `accent`, so
    songs in other meters share one table. The windows are those of `window_metrics`."""
    hits, velocity, offset = check_expressive(hits, velocity, offset)
    beat = check_beat(steps_per_bar, beats_per_bar)
    positions = steps_per_bar if positions is None else int(positions)
    check_positive(positions=positions)
    song = _song(hits, seq_len, stride, steps_per_bar, beat, bars_per_phrase=1, ngram_n=1, fast_threshold=0,
                 dense_threshold=0.0, velocity=velocity, offset=offset)
    return compute(song, PLAYED_FAMILIES, {"drums": hits.shape[1], "positions": positions})


def all_window_metrics(hits, velocity, offset, *, seq_len, stride=1, steps_per_bar=16, beats_per_bar=4,
                       ngram_n=4, fast_threshold=4, dense_threshold=None, num_bars=None, ioi_bins=None,
                       positions=None, bars_per_phrase=4) -> dict[str, np.ndarray]:
    """Every registered window metric (kernels.families.FAMILIES, in table order) of every window:
    what the metrics stage stores. The same values as window_metrics + expressive_metrics."""
    song, dims = _hit_song(hits, seq_len, stride, steps_per_bar, beats_per_bar, ngram_n, fast_threshold,
                           dense_threshold, num_bars, ioi_bins, bars_per_phrase)
    _, song.velocity, song.offset = check_expressive(hits, velocity, offset)
    positions = steps_per_bar if positions is None else int(positions)
    check_positive(positions=positions)
    return compute(song, tuple(FAMILIES), {**dims, "positions": positions})
