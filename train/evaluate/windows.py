"""The windows evaluation scores, read from the export (`data/ready/`) through the training dataset.

The dataset (`train.training.data.CompleteHierarchicalDrumDataset`) says which songs a split holds
(the export's split: songs of every bar length, as in training; each window carries its song's
`steps_per_bar`); `kernels.spec.scoring_windows` (the training window rule plus one tail window per
song) says where the windows lie, so that every predictable step is scored exactly once; the rows
come from the export's memory-mapped `hits.npy`. Nothing is re-cut from the store.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels.spec import scoring_windows
from train.training.data import SONG, CompleteHierarchicalDrumDataset, resolve_ready_dir


@dataclass
class Windows:
    """Windows of one split. rows [N, L+1, D] uint8 (0/1): the window's L steps and the step after it;
    real [N, L+1] (the row is a step of the song, not padding); song, start, first [N] (first: the
    first song-relative step this window scores); steps_per_bar [N]."""

    rows: np.ndarray
    real: np.ndarray
    song: np.ndarray
    start: np.ndarray
    first: np.ndarray
    steps_per_bar: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def seq_len(self) -> int:
        return self.rows.shape[1] - 1

    @property
    def steps(self) -> np.ndarray:
        """The model's input [N, L, D]."""
        return self.rows[:, :-1]

    @property
    def mask(self) -> np.ndarray:
        """Real input steps [N, L]."""
        return self.real[:, :-1]

    @property
    def targets(self) -> np.ndarray:
        """targets[:, t] is the step that position t predicts (start + t + 1) [N, L, D]."""
        return self.rows[:, 1:]

    @property
    def scored(self) -> np.ndarray:
        """[N, L] True where position t's target is a real step this window scores."""
        step = self.start[:, None] + 1 + np.arange(self.seq_len)[None, :]
        return self.real[:, 1:] & (step >= self.first[:, None])

    def select(self, keep: np.ndarray) -> "Windows":
        return Windows(self.rows[keep], self.real[keep], self.song[keep], self.start[keep], self.first[keep],
                       self.steps_per_bar[keep])

    def batches(self, batch_size: int):
        """(steps, mask, start, steps_per_bar, targets, scored, song) of consecutive windows."""
        scored = self.scored
        for i in range(0, len(self), batch_size):
            sl = slice(i, i + batch_size)
            yield (self.steps[sl], self.mask[sl], self.start[sl], self.steps_per_bar[sl],
                   self.targets[sl], scored[sl], self.song[sl])


def split_song_ids(ready: Path, split: str, steps_per_bar: int, seq_len: int, bars_per_phrase: int
                   ) -> np.ndarray:
    """Song ids of a split as the dataset reads it (`all`: every split), every meter."""
    splits = _splits(ready) if split == "all" else [split]
    ids = [np.unique(CompleteHierarchicalDrumDataset(ready, name, seq_len, None, steps_per_bar,
                                                     bars_per_phrase).windows[:, SONG]) for name in splits]
    return np.unique(np.concatenate(ids))


def _splits(ready: Path) -> list[str]:
    return sorted(json.loads((ready / "manifest.json").read_text())["windows"])


def split_windows(ready: str | Path, split: str, seq_len: int, stride: int, steps_per_bar: int,
                  bars_per_phrase: int) -> Windows:
    """The split's scoring windows at `stride` (<= seq_len), with the step after each (see Windows)."""
    ready = resolve_ready_dir(ready)
    songs = split_song_ids(ready, split, steps_per_bar, seq_len, bars_per_phrase)
    offsets = np.load(ready / "song_offsets.npy", allow_pickle=False)
    lengths = np.diff(offsets)
    if len(songs) == 0:
        raise ValueError(f"{ready}: nothing to score in split {split!r}: it holds no song with windows")
    song, start, first = scoring_windows(offsets, seq_len, stride, align=steps_per_bar)
    keep = np.isin(song, songs)
    song, start, first = song[keep], start[keep], first[keep]
    pos = start[:, None] + np.arange(seq_len + 1)[None, :]                 # song-relative step
    real = pos < lengths[song][:, None]
    hits = np.load(ready / "hits.npy", mmap_mode="r", allow_pickle=False)
    rows = np.asarray(hits[np.where(real, offsets[song][:, None] + pos, 0)]) > 0
    rows &= real[..., None]
    spb = np.load(ready / "song_steps_per_bar.npy", allow_pickle=False)[song].astype(np.int64)
    return Windows(rows.astype(np.uint8), real, song, start, first, spb)


def split_songs(ready: str | Path, split: str, steps_per_bar: int, seq_len: int, bars_per_phrase: int
                ) -> tuple[list[np.ndarray], list[int]]:
    """The split's whole songs as the dataset reads them (what the baselines are fitted on), and their bar lengths."""
    ready = resolve_ready_dir(ready)
    songs = split_song_ids(ready, split, steps_per_bar, seq_len, bars_per_phrase)
    offsets = np.load(ready / "song_offsets.npy", allow_pickle=False)
    hits = np.load(ready / "hits.npy", mmap_mode="r", allow_pickle=False)
    spb = np.load(ready / "song_steps_per_bar.npy", allow_pickle=False)
    return [np.asarray(hits[offsets[i]:offsets[i + 1]]) for i in songs], [int(spb[i]) for i in songs]


def meter_name(steps_per_bar: int, beats_per_bar: int, steps_per_quarter: int) -> str:
    """"3/4", "6/8", "4/4" … from a song's bar (steps) and beats; "N steps" where no whole beat unit fits."""
    if beats_per_bar > 0 and (steps_per_quarter * 4 * beats_per_bar) % steps_per_bar == 0:
        return f"{beats_per_bar}/{steps_per_quarter * 4 * beats_per_bar // steps_per_bar}"
    return f"{steps_per_bar} steps"


def songs_by_meter(meta: dict, songs: np.ndarray, steps_per_quarter: int) -> dict[str, np.ndarray]:
    """{meter name: song ids} of `songs` (store metadata steps_per_bar, beats_per_bar), most songs first."""
    names = np.array([meter_name(int(meta["steps_per_bar"][i]), int(meta["beats_per_bar"][i]), steps_per_quarter)
                      for i in songs], dtype=object)
    groups = {str(n): np.asarray(songs)[names == n] for n in set(names.tolist())}
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))
