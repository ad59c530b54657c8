"""The `tune` split: songs carved out of train on which every choice is made, so that the reported
split (validation) is scored once per frozen configuration and never chooses anything.

Which songs: within each stratum (top-level style x beat_type, e.g. funk/fill), the train songs are
ordered by a hash of their name (sha256 of "tune:" + name) and the first round(share x n) become
`tune`. Deterministic by song, stratified exactly, and independent of the songs' order in the
corpus; the other splits (Groove's info.csv validation and test, the hash split of songs without
one) are left as they are. `pipeline.build` calls `TuneSplit` once over ingest's records and
relabels each record as it streams (`assign`).

What reads it: the trainer's monitored loss and early stopping (`trainer.monitor_split`), the
evaluation's thresholds and n-gram choice (`evaluate.choose_split`), the decoding sweeps
(`split=tune`; they refuse `split=validation` unless `sweep.final_report=true`) and the Optuna
objectives. Data built before this split existed has no `tune` windows: `monitored_split` then
falls back to validation with a warning that says so.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path

TUNE = "tune"
log = logging.getLogger(__name__)


def _rank(name: str) -> str:
    return hashlib.sha256(f"tune:{name}".encode()).hexdigest()


def stratum(record: dict) -> tuple[str, str]:
    """(top-level style, beat_type) of a song record: its sub-style after '/' is pooled."""
    return str(record.get("style", "")).split("/")[0], str(record.get("beat_type", ""))


class TuneSplit:
    """The names of the train songs that become `tune` (see the module docstring)."""

    def __init__(self, records, share: float = 0.1):
        if not 0.0 <= float(share) < 1.0:
            raise ValueError(f"ingest.tune_share: {share} is not in [0, 1)")
        by_stratum = defaultdict(list)
        for r in records:
            if r.get("split") == "train":
                by_stratum[stratum(r)].append((_rank(r["name"]), r["name"]))
        self.names = set()
        for songs in by_stratum.values():
            take = int(round(float(share) * len(songs)))
            self.names.update(name for _, name in sorted(songs)[:take])

    def assign(self, record: dict) -> dict:
        """The record, relabelled `tune` when it is one of the carved train songs."""
        return {**record, "split": TUNE} if record["name"] in self.names else record


def monitored_split(ready, name: str) -> str:
    """`name` when the export holds windows of that split; for `tune` on data exported before the
    split existed, `validation` (with a warning: the choices then read the reported split)."""
    manifest = Path(ready) / "manifest.json"
    if not manifest.exists():           # a store.zarr with its export beside it (train.training.data)
        manifest = Path(ready).parent / "ready" / "manifest.json"
    windows = json.loads(manifest.read_text()).get("windows", {}) if manifest.exists() else {}
    if name == TUNE and not windows.get(TUNE):
        log.warning("%s: no windows in the %r split (data built before it existed, or too small); choices read "
                    "'validation', the reported split: rebuild the data (dvc repro) to choose on %r", ready, TUNE, TUNE)
        return "validation"
    return name
