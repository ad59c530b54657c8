"""Compiled rhythm metrics (numba): every window of a song, family by family (kernels/families.py:
rhythm, structure, playing), plus song, section, bar and phrase metrics. `kernels.reference` is
the plain numpy definition of the same API; docs/metrics.md gives the formulas and the walk-through
for adding a metric."""
from kernels.families import FAMILIES, METRICS
from kernels.song import bar_means, phrase_means, section_metrics, song_metrics
from kernels.spec import (EXPRESSIVE_METRICS, SECTION_METRICS, SONG_METRICS, WINDOW_METRICS, scoring_windows,
                          window_grid)
from kernels.window import all_window_metrics, expressive_metrics, window_metrics

__all__ = ["window_metrics", "expressive_metrics", "all_window_metrics", "song_metrics", "section_metrics",
           "bar_means", "phrase_means", "window_grid", "scoring_windows", "FAMILIES", "METRICS", "WINDOW_METRICS",
           "EXPRESSIVE_METRICS", "SONG_METRICS", "SECTION_METRICS"]
