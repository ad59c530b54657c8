"""Stage `ingest`: a source (NPZ folder | MIDI folder | built-in corpus) -> validated songs in data/interim/.

This module is the orchestration only: the formats are plug-ins in pipeline/sources/ (looked up by
`data.source`), the interim format is pipeline/interim.py.

    python -m pipeline.ingest                      # built-in corpus (conf/data/builtin.yaml)
    python -m pipeline.ingest data=npz data.path=/my/rolls
    python -m pipeline.ingest data=groove          # Groove MIDI Dataset, metadata from info.csv

Files are parsed in parallel tasks (`ingest.scheduler`: threads, processes or a dask.distributed
address); each task writes its songs as one compressed shard, and the driver appends each task's song
records to songs.jsonl as tasks finish, in input order, keeping only counters (memory does not grow
with the number of songs). Output (written atomically):

    data/interim/manifest.json    drum map, grid, song / step / section counts
    data/interim/songs.jsonl      one record per song in store order (metadata, shard, first row)
    data/interim/shards/pNNNNN_dD one file per task: hits, velocity, offset (STEP_ARRAYS) [rows, D]
                                  of its songs concatenated along time, one zstd frame (`read_shard`)
    data/ingest_report.json       files seen, songs kept, each skipped file and why, note counts

A bad file is skipped with its reason (`ingest.on_error=skip`, default) or stops the stage with exit
code 1 (`ingest.on_error=fail`). No usable file at all is exit code 1.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from functools import partial
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import common.config
from common.atomic import OutputRefused, atomic_path
from pipeline.drums import DrumMap
from common.lock import LockHeld, data_dir_lock
from common.progress import heartbeat
from common.parallel import executor, ordered_map
from pipeline import sources
from pipeline.interim import SONGS_FILE, iter_records, read_shard, record, write_shard
from pipeline.sources.base import BadInput, IngestError
from pipeline.sources.npz import load_npz
from pipeline.store import SPLITS

# Names that lived here before the sources and the interim format got modules of their own.
__all__ = ["BadInput", "IngestError", "hash_split", "ingest", "iter_records", "load_npz", "read_shard"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the stage

def _run_part(part: int, items: list, load, shards_dir: Path, fail_fast: bool) -> list[dict]:
    """Load one partition of inputs and write its good songs as one shard; one result per input.

    A shard holds the partition's songs concatenated along time (`pipeline.interim.write_shard`),
    zstd-compressed like the store: one write per task instead of one file per song. Songs with
    another drum count go to a sibling shard (`_reject_odd_drum_counts` decides later which count is kept).
    Any exception while reading one file is that file's error: the files beside it go on. With
    fail_fast (on_error=fail) the partition stops at its first bad file; the driver then reports the
    first bad file of all partitions in sorted order (partitions are contiguous runs of the sorted list).
    """
    out, songs, rows_in = [], {}, {}
    for item in items:
        try:
            song, notes_mapped, unmapped = load(item)
        except BadInput as exc:
            out.append({"source": _label(item), "error": str(exc)})
        except Exception as exc:  # a reader bug or a case nobody foresaw: still one file's problem
            out.append({"source": _label(item), "error": f"{_label(item)}: {type(exc).__name__}: {exc}"})
        else:
            shard = f"p{part:05d}_d{song.hits.shape[1]}"
            songs.setdefault(shard, []).append(song)
            row = rows_in.get(shard, 0)          # the song's first row in its shard
            rows_in[shard] = row + song.num_steps
            out.append(record(song, shard, row, notes_mapped, unmapped))
            continue
        if fail_fast:
            break
    for shard, rows in songs.items():
        write_shard(shards_dir / shard, rows)
    return out


def _label(item) -> str:
    return f"builtin song {item}" if isinstance(item, int) else str(item[0])


def hash_split(song_id: str, ratios: dict) -> str:
    """Deterministic split of a song id: sha256 -> u in [0, 1) -> the split whose cumulative ratio covers u."""
    u = int(hashlib.sha256(song_id.encode()).hexdigest()[:15], 16) / 16 ** 15
    total = sum(float(ratios[s]) for s in SPLITS)
    acc = 0.0
    for s in SPLITS:
        acc += float(ratios[s]) / total
        if u < acc:
            return s
    return SPLITS[-1]


def _source(cfg: DictConfig, drum_map: DrumMap):
    """(items, load(item) -> (Song, notes_mapped, unmapped), input description) of the configured
    source (pipeline/sources/: one module per format, looked up by name)."""
    source = sources.get(cfg.data.source)(cfg, drum_map)
    return source.items(), source.load, source.where


def _task(part: tuple, load, shards_dir: Path, fail_fast: bool) -> list[dict]:
    return _run_part(part[0], part[1], load, shards_dir, fail_fast)


class _Tally:
    """What the report and the manifest need, kept as counters while records stream to disk: one
    set of counts per drum count (the most common count wins at the end), and the skipped files."""

    def __init__(self):
        self.files, self.skipped, self.by_drums = 0, [], {}

    def skip(self, entry: dict) -> None:
        self.skipped.append((self.files, entry))
        self.files += 1

    def add(self, rec: dict) -> None:
        t = self.by_drums.setdefault(rec["num_drums"], {"songs": 0, "steps": 0, "sections": 0, "notes_mapped": 0,
                                                         "dropped": Counter(), "unmapped_by_file": [],
                                                         "splits": Counter()})
        t["songs"] += 1
        t["steps"] += rec["num_steps"]
        t["sections"] += len(rec["sections"])
        t["notes_mapped"] += rec["notes_mapped"]
        t["splits"][rec["split"]] += 1
        if rec["unmapped"]:
            t["dropped"].update({int(p): n for p, n in rec["unmapped"].items()})
            t["unmapped_by_file"].append({"file": rec["source"], "pitches": rec["unmapped"]})
        self.files += 1

    def keep(self) -> int:
        """The drum count of most songs (the first seen among equals)."""
        return max(self.by_drums.items(), key=lambda kv: kv[1]["songs"])[0]


def ingest(cfg: DictConfig) -> dict:
    """Run the stage; returns the report (also written to data/ingest_report.json).

    Records stream to interim/songs.jsonl in input order as each task finishes (at most a few tasks
    in flight), so the driver holds counters, not one record per song."""
    drum_map = DrumMap.from_config(cfg.drums)
    on_error = cfg.ingest.on_error
    if on_error not in ("skip", "fail"):
        raise IngestError(f"ingest.on_error must be 'skip' or 'fail', got {on_error!r}")
    items, load, where = _source(cfg, drum_map)
    if not items:
        raise IngestError(f"{where}: no input files found for source {cfg.data.source!r}")
    ratios = OmegaConf.to_container(cfg.ingest.split_ratios, resolve=True)
    interim, tally = Path(cfg.paths.interim), _Tally()
    with atomic_path(interim, marker="ingest") as tmp:
        shards_dir = tmp / "shards"
        shards_dir.mkdir(parents=True)
        per_task = max(1, int(cfg.ingest.files_per_task))
        parts = ((i, items[a:a + per_task]) for i, a in enumerate(range(0, len(items), per_task)))
        task = partial(_task, load=load, shards_dir=shards_dir, fail_fast=on_error == "fail")
        workers = int(cfg.ingest.workers or 0) or os.cpu_count() or 1
        with open(tmp / SONGS_FILE, "w") as out, executor(cfg.ingest.scheduler, cfg.ingest.workers) as pool:
            for results in ordered_map(pool, task, parts, 2 * workers):
                for r in results:
                    if "error" in r:
                        if on_error == "fail":   # in input order: the first bad file of the sorted list
                            raise IngestError(r["error"])
                        tally.skip({"file": r["source"], "reason": r["error"]})
                        continue
                    if r["split"] not in SPLITS:
                        r["split"] = hash_split(r["name"], ratios)
                    out.write(json.dumps(r) + "\n")
                    tally.add(r)
        if not tally.by_drums:
            skipped = [e for _, e in tally.skipped]
            raise IngestError(f"{where}: no usable input file ({len(skipped)} skipped; first: "
                              f"{skipped[0]['reason'] if skipped else 'none'})")
        num_drums = tally.keep()
        if len(tally.by_drums) > 1:
            _reject_odd_drum_counts(tmp / SONGS_FILE, num_drums, tally)
            if on_error == "fail":
                raise IngestError(min(tally.skipped, key=lambda ie: ie[0])[1]["reason"])
        kept = tally.by_drums[num_drums]
        attrs = drum_map.to_attrs() if num_drums == drum_map.num_drums else {
            "drum_names": [f"drum{i}" for i in range(num_drums)], "drum_pitches": [0] * num_drums,
            "mapping": {}}
        manifest = {**attrs, "steps_per_quarter": int(cfg.ingest.steps_per_quarter), "source": cfg.data.source,
                    "songs_file": SONGS_FILE, "num_songs": kept["songs"], "num_steps": kept["steps"],
                    "num_sections": kept["sections"]}
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        report = _report(cfg, where, tally, kept)
        report_path = Path(cfg.paths.data_dir) / "ingest_report.json"
        with atomic_path(report_path) as rtmp:
            rtmp.write_text(json.dumps(report, indent=1))
    for s in report["skipped"]:
        log.warning("skipped %s", s["reason"])
    log.info("ingest: %d songs, %d steps, %d skipped -> %s", report["songs"], report["steps"],
             report["skipped_count"], interim)
    return report


def _reject_odd_drum_counts(songs_file: Path, keep: int, tally: _Tally) -> None:
    """All songs share one drum count (`keep`, the most common); files with another are bad input:
    their records leave songs.jsonl (rewritten line by line) and join the skipped files at their
    place in input order (their rows stay in a shard of their own that no record points to)."""
    errors = iter(sorted(i for i, _ in tally.skipped))
    next_error, index = next(errors, None), 0
    tmp = songs_file.with_suffix(".tmp")
    with open(songs_file) as src, open(tmp, "w") as dst:
        for line in src:
            while index == next_error:   # the input index of this record: skip past the errors before it
                next_error, index = next(errors, None), index + 1
            rec = json.loads(line)
            if rec["num_drums"] == keep:
                dst.write(line)
            else:
                tally.skipped.append((index, {"file": rec["source"], "reason": f"{rec['source']}: "
                                      f"{rec['num_drums']} drum columns, the other files have {keep}"}))
            index += 1
    tmp.replace(songs_file)
    tally.skipped.sort(key=lambda ie: ie[0])


def _report(cfg, where, tally: _Tally, kept: dict) -> dict:
    skipped = [e for _, e in tally.skipped]
    return {
        "source": cfg.data.source, "input": where, "on_error": cfg.ingest.on_error,
        "files": tally.files, "songs": kept["songs"], "skipped_count": len(skipped),
        "steps": kept["steps"], "notes_mapped": kept["notes_mapped"],
        "notes_dropped": {str(p): n for p, n in sorted(kept["dropped"].items())},
        "unmapped_by_file": kept["unmapped_by_file"],
        "splits": {s: kept["splits"][s] for s in SPLITS},
        "skipped": skipped,
    }


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with common.config.exit_on("ingest", IngestError, LockHeld, OSError, OutputRefused), data_dir_lock(cfg, "ingest"), \
            heartbeat("ingest"):
        ingest(cfg)


if __name__ == "__main__":
    main()
