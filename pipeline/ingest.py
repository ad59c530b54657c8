"""Stage `ingest`: a source (NPZ folder | MIDI folder | built-in corpus) -> validated songs in data/interim/.

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
import math
import os
import stat
import zipfile
from collections import Counter
from functools import partial
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

import common.config
from common.atomic import OutputRefused, atomic_path
from pipeline.drums import DrumMap
from common.lock import LockHeld, data_dir_lock
from common.progress import heartbeat
from common.parallel import executor, ordered_map
from pipeline.info_csv import ERROR, INFO, read_info
from pipeline.midi import MidiError, read_midi
from pipeline.npz_limits import NpzRefused, check_npz_members
from pipeline.shards import read_shard, write_shard as _write_shard  # noqa: F401 (read_shard: build's import)
from pipeline.store import FLOAT_FIELDS, INT_FIELDS, SPLITS, STEP_ARRAYS, STR_FIELDS, Song

log = logging.getLogger(__name__)
MIDI_SUFFIXES = {".mid", ".midi"}


class BadInput(ValueError):
    """One input file that cannot become a song (message: '<file>: <reason>')."""


class IngestError(RuntimeError):
    """The stage cannot go on: on_error=fail met a bad file, or no usable file at all."""


# ---------------------------------------------------------------- loading one file

def validate_song(song: Song, where: str) -> Song:
    """Check the invariants every song in the store keeps (shape, 0/1 hits, velocity and offset only
    on hits, offsets within half a step)."""
    h = np.asarray(song.hits)
    if h.ndim != 2:
        raise BadInput(f"{where}: hits must be 2-D [time_steps, num_drums], got shape {h.shape}")
    if h.shape[0] == 0:
        raise BadInput(f"{where}: zero length (no time steps)")
    if h.shape[1] == 0:
        raise BadInput(f"{where}: no drum columns")
    hits = h > 0
    vel = np.clip(np.asarray(song.velocity), 1, 127).astype(np.uint8, copy=False)  # a new array
    np.multiply(vel, hits, out=vel)   # 0 off the hits, in place (no ~hits temporary)
    song.hits, song.velocity = hits.view(np.uint8), vel   # the view: one temporary less (bool is 1 byte)
    off = np.asarray(song.offset)
    if off.shape != h.shape or off.dtype.kind not in "iu":
        raise BadInput(f"{where}: offset must be an integer array of the shape of hits {h.shape}, "
                       f"got {off.dtype} {off.shape}")
    if len(off) and (off.min() < -64 or off.max() > 64):
        raise BadInput(f"{where}: offsets must lie in -64..64 (1/128 step, at most half a step from "
                       f"the grid), got {off.min()}..{off.max()}")
    # int8 throughout (not an int64 temporary); all zero (no timing given): a fresh zero array that
    # occupies no memory until written
    song.offset = (np.where(hits, off.astype(np.int8, copy=False), np.int8(0)) if off.any()
                   else np.zeros(h.shape, np.int8))
    sec = np.asarray(song.sections, np.int64).reshape(-1, 2)
    if len(sec) and (sec[:, 0].min() < 0 or sec[:, 1].max() > h.shape[0] or (sec[:, 1] <= sec[:, 0]).any()):
        raise BadInput(f"{where}: sections must be [start, end) pairs with 0 <= start < end <= {h.shape[0]}")
    song.sections = sec
    return song


_BLOCK_VALUES = 1 << 20  # values converted per block: temporaries stay small beside the array


def _blocks(seq: np.ndarray):
    rows = max(1, _BLOCK_VALUES // seq.shape[1])
    for a in range(0, seq.shape[0], rows):
        yield a, seq[a:a + rows]


def _velocity_scale(path: Path, seq: np.ndarray) -> float:
    """127 when the values are 0-1 (fractions of full velocity), 1 when they are 0-127 velocities.

    Checked block by block in the array's own dtype (no float64 copy of the whole song)."""
    top, fraction = 0, None
    for _, b in _blocks(seq):
        if b.dtype.kind == "f" and not np.isfinite(b).all():
            raise BadInput(f"{path}: 'sequence' holds NaN or inf values")
        if b.min() < 0:
            raise BadInput(f"{path}: 'sequence' holds negative values (min {b.min():g})")
        top = max(top, b.max())
        if b.dtype.kind == "f" and fraction is None:
            odd = b[b != np.rint(b)]
            fraction = odd[0] if len(odd) else None
    if top > 127:
        raise BadInput(f"{path}: 'sequence' values up to {top:g}; expected hits/velocities in 0-1 or 0-127")
    if top > 1 and fraction is not None:
        raise BadInput(f"{path}: 'sequence' mixes values above 1 (max {top:g}: 0-127 velocities) with "
                       f"non-whole values (e.g. {fraction:g}); use 0-1 throughout or whole 0-127 velocities")
    return 127.0 if top <= 1 else 1.0


def _to_velocity(seq: np.ndarray, scale: float) -> np.ndarray:
    vel = np.empty(seq.shape, np.uint8)
    for a, b in _blocks(seq):
        vel[a:a + len(b)] = _scaled(b, scale) if b.dtype.kind == "f" or scale != 1 else b
    return vel


def _scaled(b: np.ndarray, scale: float) -> np.ndarray:
    """round(b * scale), and at least 1 where b > 0: a value under 1/254 of full velocity is still
    a hit (docs/data.md: a value > 0 is a hit), not a velocity of 0 that drops it."""
    v = np.rint(b * scale)
    v[(v == 0) & (b > 0)] = 1
    return v


def load_npz(path: Path, rel: str, *, steps_per_bar: int, bpm: float, max_steps: int) -> Song:
    """An NPZ with `sequence` [time_steps, num_drums]: > 0 is a hit; values 0-1 scale to velocity
    1..127, whole values 0-127 are velocities as they are. Optional `sections` [K, 2] (start, end) steps;
    optional `velocity` (1..127 on hits, replacing the one `sequence` gives) and `offset` (int,
    1/128 step, -64..64) [time_steps, num_drums].

    Memory: the sequence in its own dtype plus two uint8 arrays of its shape; sizes are checked from
    the .npy header before the array is decompressed."""
    if not zipfile.is_zipfile(path):
        raise BadInput(f"{path}: not an NPZ file (not a zip archive)")
    try:
        check_npz_members(path, max_steps)   # every member's header, before any is decompressed
        with np.load(path, allow_pickle=False) as z:
            seq = z["sequence"]
            sections = z["sections"] if "sections" in z.files else np.zeros((0, 2), np.int64)
            extra = {k: z[k] for k in ("velocity", "offset") if k in z.files}
    except BadInput:
        raise
    except NpzRefused as exc:
        raise BadInput(str(exc)) from None
    except Exception as exc:  # corrupt member, object arrays (pickle refused), ...
        raise BadInput(f"{path}: unreadable NPZ ({type(exc).__name__}: {exc})") from exc
    if np.asarray(sections).dtype.kind not in "iu" or np.asarray(sections).size % 2:
        raise BadInput(f"{path}: 'sections' must be an integer [K, 2] array")
    for k, a in extra.items():
        if a.shape != seq.shape or a.dtype.kind not in "iu":
            raise BadInput(f"{path}: '{k}' must be an integer array of the shape of 'sequence' {seq.shape}, "
                           f"got {a.dtype} {a.shape}")
    if "velocity" in extra:
        bad = (seq > 0) & ((extra["velocity"] < 1) | (extra["velocity"] > 127))
        if bad.any():
            raise BadInput(f"{path}: 'velocity' must be 1..127 on every hit ({int(bad.sum())} hits are not)")
    vel = _to_velocity(seq, _velocity_scale(path, seq))
    del seq
    if "velocity" in extra:
        vel = np.where(vel > 0, extra["velocity"], 0).astype(np.uint8)
    song = Song(name=_song_id(rel), hits=vel, velocity=vel, source=rel, steps_per_bar=steps_per_bar,
                beats_per_bar=max(1, steps_per_bar // 4), bpm=bpm, sections=sections,
                offset=extra.get("offset"))
    del vel, extra   # the song holds them: validate_song's outputs replace them, not add to them
    return validate_song(song, str(path))


def load_midi(path: Path, rel: str, drum_map: DrumMap, steps_per_quarter: int, meta: dict,
              max_steps: int | None = None):
    """A drum MIDI file -> (Song, notes_mapped, unmapped pitch counts); `meta` from info.csv if any."""
    bpm, split = _info_bpm(path, meta), meta.get("split", "")
    if split not in ("", *SPLITS):
        raise BadInput(f"{path}: info.csv gives split {split!r}, expected one of {', '.join(SPLITS)} "
                       "(or empty for a hash split)")
    try:
        roll = read_midi(path, drum_map, steps_per_quarter, max_steps=max_steps)
    except MidiError as exc:
        raise BadInput(str(exc)) from exc
    song = Song(name=_song_id(rel), hits=roll.hits, velocity=roll.velocity, offset=roll.offset, source=rel,
                steps_per_bar=roll.steps_per_bar, beats_per_bar=roll.beats_per_bar, bpm=bpm or roll.bpm,
                style=meta.get("style", ""), drummer=meta.get("drummer", ""),
                beat_type=meta.get("beat_type", ""), split=split)
    return validate_song(song, str(path)), roll.notes_mapped, roll.unmapped


def _info_bpm(path: Path, meta: dict) -> float | None:
    """info.csv's tempo for this file (None when it gives none): a positive, finite number."""
    if not meta.get("bpm"):
        return None
    try:
        bpm = float(meta["bpm"])
    except ValueError:
        raise BadInput(f"{path}: info.csv gives bpm {meta['bpm']!r}, not a number") from None
    if not (math.isfinite(bpm) and bpm > 0):
        raise BadInput(f"{path}: info.csv gives bpm {meta['bpm']!r}, must be a positive finite number")
    return bpm


def check_entry(path: Path) -> None:
    """A directory entry that looks like an input must be a readable, non-empty regular file.
    One stat call for a good file (this runs for every input file)."""
    try:
        st = os.stat(path)
    except OSError:
        if os.path.islink(path):
            raise BadInput(f"{path}: broken symbolic link (to {os.readlink(path)})") from None
        raise BadInput(f"{path}: not a regular file") from None
    if stat.S_ISDIR(st.st_mode):
        kind = "symbolic link to a folder (not followed)" if os.path.islink(path) else "a folder, not a file"
        raise BadInput(f"{path}: {kind}")
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{path}: not a regular file")
    if st.st_size == 0:
        raise BadInput(f"{path}: empty file")


def scan_folder(root: Path, suffixes: set[str]) -> list[str]:
    """Every entry under `root` whose name ends in one of `suffixes`, plus every symlinked folder,
    as posix paths relative to `root`, sorted. Symlinked folders are reported, not followed (loops,
    files outside the input); load() refuses what is not a regular file, so each such entry appears
    in the report. Plain strings: pathlib objects cost more than parsing a Groove file does."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for name in filenames:
            if os.path.splitext(name)[1].lower() in suffixes:
                found.append(prefix + name)
        for name in dirnames:
            if os.path.splitext(name)[1].lower() in suffixes or os.path.islink(os.path.join(dirpath, name)):
                found.append(prefix + name)
    return sorted(found)


def _song_id(rel: str) -> str:
    """A song's id: its path relative to the input folder, without the suffix."""
    return rel.rsplit(".", 1)[0]


# ---------------------------------------------------------------- the stage

def _record(song: Song, shard: str, row: int, notes_mapped: int, unmapped: dict) -> dict:
    rec = {f: getattr(song, f) for f in STR_FIELDS}
    rec.update({f: int(getattr(song, f)) for f in INT_FIELDS})
    rec.update({f: float(getattr(song, f)) for f in FLOAT_FIELDS})
    digest = hashlib.sha1()
    for name in STEP_ARRAYS:   # every per-step array's bytes in turn, without joining copies of them
        digest.update(np.ascontiguousarray(getattr(song, name)))
    digest = digest.hexdigest()
    rec.update(shard=shard, row=row, num_steps=song.num_steps, num_drums=int(song.hits.shape[1]),
               sections=song.sections.tolist(), sha1=digest, notes_mapped=notes_mapped,
               unmapped={str(p): n for p, n in unmapped.items()})
    return rec


def _run_part(part: int, items: list, load, shards_dir: Path, fail_fast: bool) -> list[dict]:
    """Load one partition of inputs and write its good songs as one shard; one result per input.

    A shard is a Zarr group holding the partition's songs concatenated along time, one array per
    per-step field (STEP_ARRAYS), zstd-compressed like the store: one write per task instead of one
    file per song. Songs with another drum count go to a sibling shard (`_reject_odd_drum_counts`
    decides later which count is kept).
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
            out.append(_record(song, shard, row, notes_mapped, unmapped))
            continue
        if fail_fast:
            break
    for shard, rows in songs.items():
        _write_shard(shards_dir / shard, rows)
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


class _Load:
    """item -> (Song, notes_mapped, unmapped) for one source; a plain object (not a closure), so tasks
    pickle to worker processes and cluster workers alike."""

    def __init__(self, source: str, **opts):
        self.source, self.opts, self._make = source, opts, None

    def __getstate__(self):            # the corpus maker (a closure) is rebuilt where the task runs
        return {**self.__dict__, "_make": None}

    def __call__(self, item):
        o = self.opts
        if self.source == "builtin":
            if self._make is None:     # corpus options checked once per process, not per song
                from pipeline.corpus import song_maker
                self._make = song_maker(o["seed"], **o["corpus"])
            song = validate_song(self._make(item), f"builtin song {item}")
            return song, int(song.hits.sum()), {}
        path, rel = item[0], item[1]
        if self.source == "midi" and ERROR in item[2]:   # info.csv itself, or rows for it that disagree
            raise BadInput(item[2][ERROR])
        check_entry(path)
        if self.source == "npz":
            return load_npz(path, rel, steps_per_bar=o["spb"], bpm=o["bpm"], max_steps=o["max_steps"]), 0, {}
        return load_midi(path, rel, o["drum_map"], o["spq"], item[2], o["max_steps"])


def _sources(cfg: DictConfig, drum_map: DrumMap):
    """(items, load(item) -> (Song, notes_mapped, unmapped), input description) for the configured source."""
    data, spq = cfg.data, int(cfg.ingest.steps_per_quarter)
    source = data.source
    if source == "builtin":
        # Each task generates its own songs (song i depends only on seed and i): parallel, and the
        # driver never holds the corpus (items: a range, not a list).
        from pipeline.corpus import check_drum_map, song_maker

        opts = OmegaConf.to_container(data.corpus, resolve=True)
        num_songs, seed = int(opts.pop("num_songs")), int(opts.pop("seed"))
        check_drum_map(drum_map.names)   # the configured map: it labels the store's columns
        try:
            song_maker(seed, **opts)   # a bad option stops ingest once, not once per song
        except ValueError as exc:
            raise IngestError(f"data.{exc}") from None
        return range(num_songs), _Load("builtin", seed=seed, corpus=opts), f"builtin corpus (seed {seed})"
    if OmegaConf.is_missing(data, "path"):
        raise IngestError(f"data.path is not set: python -m pipeline data={source} data.path=/your/folder")
    root = Path(data.path)
    if not root.is_dir():
        raise IngestError(f"{root}: input folder does not exist (set data.path)")
    max_steps = int(cfg.ingest.max_steps)
    if source == "npz":
        items = [(root / rel, rel) for rel in scan_folder(root, {".npz"})]
        load = _Load("npz", spb=int(data.get("steps_per_bar", 16)), bpm=float(data.get("bpm", 120.0)),
                     max_steps=max_steps)
    elif source == "midi":
        info, problems = read_info(root)   # each item carries its own info.csv row: tasks ship only theirs
        items = [(root / INFO, INFO, {ERROR: p}) for p in problems]   # reported as skipped, never fatal
        items += [(root / rel, rel, info.get(rel, {})) for rel in scan_folder(root, MIDI_SUFFIXES)]
        load = _Load("midi", drum_map=drum_map, spq=spq, max_steps=max_steps)
    else:
        raise IngestError(f"data.source must be builtin, npz or midi, got {source!r}")
    return items, load, str(root)


SONGS_FILE = "songs.jsonl"   # interim/: one JSON record per song, in store order (manifest.json: the rest)


def iter_records(interim: Path):
    """The song records of an interim folder, one at a time in store order (what build streams)."""
    with open(Path(interim) / SONGS_FILE) as fh:
        for line in fh:
            yield json.loads(line)


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
    items, load, where = _sources(cfg, drum_map)
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
    with common.config.exit_on("ingest", IngestError, LockHeld, OSError, OutputRefused), data_dir_lock(cfg, "ingest"), heartbeat("ingest"):
        ingest(cfg)


if __name__ == "__main__":
    main()
