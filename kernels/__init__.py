"""Compiled rhythm metrics (numba): every window of a song in one pass, plus song, section,
bar and phrase metrics. `kernels.reference` is the plain numpy definition of the same API;
docs/metrics.md gives the formulas."""
from kernels.expressive import expressive_metrics
from kernels.song import bar_means, phrase_means, section_metrics, song_metrics
from kernels.spec import (EXPRESSIVE_METRICS, SECTION_METRICS, SONG_METRICS, WINDOW_METRICS, scoring_windows,
                          window_grid)
from kernels.window import window_metrics

__all__ = ["window_metrics", "expressive_metrics", "song_metrics", "section_metrics", "bar_means", "phrase_means",
           "window_grid", "scoring_windows", "WINDOW_METRICS", "EXPRESSIVE_METRICS", "SONG_METRICS",
           "SECTION_METRICS"]
