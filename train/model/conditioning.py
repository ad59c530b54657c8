"""Conditioning labels: per-song style, beat/fill and tempo bucket, as vocabulary ids.

The one home of the conditioning vocabulary. Labels come from the export's song table
(`data/ready/song_<field>.npy`, pipeline.export.SONG_LABELS); the trainer builds the vocabularies
from the train split's songs and stores them in the model config (so in every checkpoint), the
dataset turns each window's song into ids, generate turns `generate.style=funk` into ids.

Id 0 of every condition is "none" (unconditional): the model learns it by condition dropout, and
a song whose label is missing or unseen in training gets it too.

    style      Groove's `style` up to the first "/" (`funk/groove1` -> `funk`); the built-in
               corpus's style as it is
    beat_type  `beat` / `fill` (Groove); the built-in corpus has only `beat`
    bpm        tempo bucket: labels like `<70`, `70-90`, `>=150` from `model.bpm_buckets` edges
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

CONDITIONS = ("style", "beat_type", "bpm")
NONE = "none"


def style_label(style: str) -> str:
    """The top-level genre: what comes before the first '/', lower case ('' stays '')."""
    return str(style).split("/")[0].strip().lower()


def bpm_labels(edges: Sequence[float]) -> list[str]:
    """Bucket labels of sorted tempo edges [e0, e1, ..]: `<e0`, `e0-e1`, ..., `>=e_last`."""
    e = [_num(x) for x in edges]
    return [f"<{e[0]}"] + [f"{a}-{b}" for a, b in zip(e, e[1:])] + [f">={e[-1]}"] if e else []


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(float(x))


def bpm_bucket(bpm: np.ndarray | float, edges: Sequence[float]) -> np.ndarray:
    """Bucket index of each tempo (0 = below the first edge); edges are lower bounds, inclusive."""
    return np.searchsorted(np.asarray(edges, np.float64), np.asarray(bpm, np.float64), side="right")


def check_names(names: Sequence[str]) -> list[str]:
    """Problems with a `model.conditioning` list (a config error each)."""
    problems = [f"model.conditioning: unknown condition {n!r} (known: {', '.join(CONDITIONS)})"
                for n in names if n not in CONDITIONS]
    if len(set(names)) != len(names):
        problems.append(f"model.conditioning: a condition is listed twice: {list(names)}")
    return problems


def read_song_labels(ready: str | Path) -> dict[str, np.ndarray]:
    """The export's per-song label arrays, {field: [S]}; an export without them is refused with
    the command that rewrites it."""
    ready = Path(ready)
    out = {}
    for name in CONDITIONS:
        path = ready / f"song_{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{ready}: no song_{name}.npy (exported before conditioning labels "
                                    "existed); rerun the export: `dvc repro export` (or python -m pipeline.export)")
        out[name] = np.load(path, allow_pickle=False)
    return out


def song_values(labels: Mapping[str, np.ndarray], name: str, bpm_edges: Sequence[float]) -> np.ndarray:
    """Each song's label string for condition `name` ('' = none)."""
    if name == "style":
        return np.array([style_label(s) for s in labels["style"]], dtype=str)
    if name == "bpm":
        return np.array(bpm_labels(bpm_edges), dtype=str)[bpm_bucket(labels["bpm"], bpm_edges)]
    return np.array([str(s).strip().lower() for s in labels[name]], dtype=str)


def build_vocab(names: Sequence[str], labels: Mapping[str, np.ndarray], songs: np.ndarray,
                bpm_edges: Sequence[float]) -> dict[str, list[str]]:
    """{condition: sorted labels seen in `songs` (the train split)}; id i + 1 is label i. bpm keeps
    every bucket of its edges, so any tempo has an id."""
    vocab = {}
    for name in names:
        if name == "bpm":
            vocab[name] = bpm_labels(bpm_edges)
            continue
        seen = song_values(labels, name, bpm_edges)[songs]
        vocab[name] = sorted({v for v in seen.tolist() if v and v != NONE})
    return vocab


def song_ids(vocab: Mapping[str, Sequence[str]], labels: Mapping[str, np.ndarray],
             bpm_edges: Sequence[float]) -> np.ndarray:
    """int64 [S, C] ids of every song (columns in vocab order); unseen labels are 0 (none)."""
    S = len(next(iter(labels.values()))) if labels else 0
    cols = []
    for name, known in vocab.items():
        index = {v: i + 1 for i, v in enumerate(known)}
        cols.append([index.get(v, 0) for v in song_values(labels, name, bpm_edges).tolist()])
    return np.array(cols, np.int64).T.reshape(S, len(vocab))


def request_ids(vocab: Mapping[str, Sequence[str]], bpm_edges: Sequence[float],
                values: Mapping[str, Any]) -> list[int]:
    """Ids of a generation request, e.g. {"style": "funk", "beat_type": None, "bpm": 100}; None
    means none (unconditional). An unknown label raises ValueError listing the known ones."""
    ids = []
    for name, known in vocab.items():
        value = values.get(name)
        if value is None or str(value).strip().lower() == NONE:
            ids.append(0)
        elif name == "bpm":
            ids.append(int(bpm_bucket(float(value), bpm_edges)) + 1)
        else:
            label = style_label(value) if name == "style" else str(value).strip().lower()
            if label not in known:
                raise ValueError(f"{name}={value!r} is not a label this model was trained with; "
                                 f"known: {', '.join(known) or '(none)'} (or none)")
            ids.append(known.index(label) + 1)
    return ids
