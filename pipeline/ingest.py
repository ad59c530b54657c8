"""Stage `ingest`: a source (NPZ folder | MIDI folder | built-in corpus) -> validated songs in data/interim/.

    python -m pipeline.ingest                      # built-in corpus (conf/data/builtin.yaml)
    python -m pipeline.ingest data=npz data.path=/my/rolls
    python -m pipeline.ingest data=groove          # Groove MIDI Dataset, metadata from info.csv

Files are parsed in parallel with a dask bag; each task writes its songs as one NPZ per song, so the
driver only ever holds metadata. Output (written atomically):

    data/interim/manifest.json    drum map, grid, and one record per song (metadata + its NPZ file)
    data/interim/songs/*.npz      hits, velocity (uint8 [T, D]), offset (int8 [T, D]) per song
    data/ingest_report.json       files seen, songs kept, each skipped file and why, note counts

A bad file is skipped with its reason (`ingest.on_error=skip`, default) or stops the stage with exit
code 1 (`ingest.on_error=fail`). No usable file at all is exit code 1.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import zipfile
from collections import Counter
from pathlib import Path

import dask.bag as db
import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

import pipeline.config
from pipeline.atomic import atomic_path
from pipeline.drums import DrumMap
from pipeline.midi import MidiError, read_midi
from pipeline.store import FLOAT_FIELDS, INT_FIELDS, ROW_ARRAYS, SPLITS, STR_FIELDS, Song

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
    song.hits = (h > 0).astype(np.uint8)
    song.velocity = np.where(song.hits > 0, np.clip(np.asarray(song.velocity), 1, 127), 0).astype(np.uint8)
    off = np.asarray(song.offset)
    if off.shape != h.shape or off.dtype.kind not in "iu":
        raise BadInput(f"{where}: offset must be an integer array of the shape of hits {h.shape}, "
                       f"got {off.dtype} {off.shape}")
    if len(off) and (off.min() < -64 or off.max() > 64):
        raise BadInput(f"{where}: offsets must lie in -64..64 (1/128 step, at most half a step from "
                       f"the grid), got {off.min()}..{off.max()}")
    song.offset = np.where(song.hits > 0, off, 0).astype(np.int8)
    sec = np.asarray(song.sections, np.int64).reshape(-1, 2)
    if len(sec) and (sec[:, 0].min() < 0 or sec[:, 1].max() > h.shape[0] or (sec[:, 1] <= sec[:, 0]).any()):
        raise BadInput(f"{where}: sections must be [start, end) pairs with 0 <= start < end <= {h.shape[0]}")
    song.sections = sec
    return song


def load_npz(path: Path, rel: str, *, steps_per_bar: int, bpm: float) -> Song:
    """An NPZ with `sequence` [time_steps, num_drums]: > 0 is a hit; values 0-1 scale to velocity
    1..127, values 0-127 are velocities as they are. Optional `sections` [K, 2] (start, end) steps;
    optional `velocity` (1..127 on hits, replacing the one `sequence` gives) and `offset` (int,
    1/128 step, -64..64) [time_steps, num_drums]."""
    if not zipfile.is_zipfile(path):
        raise BadInput(f"{path}: not an NPZ file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "sequence" not in z.files:
                raise BadInput(f"{path}: no 'sequence' array (has {sorted(z.files)})")
            seq = z["sequence"]
            sections = z["sections"] if "sections" in z.files else np.zeros((0, 2), np.int64)
            extra = {k: z[k] for k in ("velocity", "offset") if k in z.files}
    except BadInput:
        raise
    except Exception as exc:  # corrupt member, object arrays (pickle refused), ...
        raise BadInput(f"{path}: unreadable NPZ ({type(exc).__name__}: {exc})") from exc
    if seq.ndim != 2:
        raise BadInput(f"{path}: 'sequence' must be 2-D [time_steps, num_drums], got shape {seq.shape}")
    if seq.dtype.kind not in "biuf":
        raise BadInput(f"{path}: 'sequence' has non-numeric dtype {seq.dtype}")
    if seq.shape[0] == 0:
        raise BadInput(f"{path}: zero length (no time steps)")
    seq = seq.astype(np.float64)
    if not np.isfinite(seq).all():
        raise BadInput(f"{path}: 'sequence' holds NaN or inf values")
    if (seq < 0).any():
        raise BadInput(f"{path}: 'sequence' holds negative values (min {seq.min():g})")
    top = seq.max()
    if top > 127:
        raise BadInput(f"{path}: 'sequence' values up to {top:g}; expected hits/velocities in 0-1 or 0-127")
    if np.asarray(sections).dtype.kind not in "iu" or np.asarray(sections).size % 2:
        raise BadInput(f"{path}: 'sections' must be an integer [K, 2] array")
    vel = np.rint(seq * 127) if top <= 1 else np.rint(seq)
    for k, a in extra.items():
        if a.shape != seq.shape or a.dtype.kind not in "iu":
            raise BadInput(f"{path}: '{k}' must be an integer array of the shape of 'sequence' {seq.shape}, "
                           f"got {a.dtype} {a.shape}")
    if "velocity" in extra:
        bad = (seq > 0) & ((extra["velocity"] < 1) | (extra["velocity"] > 127))
        if bad.any():
            raise BadInput(f"{path}: 'velocity' must be 1..127 on every hit ({int(bad.sum())} hits are not)")
        vel = extra["velocity"]
    song = Song(name=_song_id(rel), hits=seq > 0, velocity=vel, source=rel, steps_per_bar=steps_per_bar,
                beats_per_bar=max(1, steps_per_bar // 4), bpm=bpm, sections=sections,
                offset=extra.get("offset"))
    return validate_song(song, str(path))


def load_midi(path: Path, rel: str, drum_map: DrumMap, steps_per_quarter: int, meta: dict):
    """A drum MIDI file -> (Song, notes_mapped, unmapped pitch counts); `meta` from info.csv if any."""
    try:
        roll = read_midi(path, drum_map, steps_per_quarter)
    except MidiError as exc:
        raise BadInput(str(exc)) from exc
    song = Song(name=_song_id(rel), hits=roll.hits, velocity=roll.velocity, offset=roll.offset, source=rel,
                steps_per_bar=roll.steps_per_bar, beats_per_bar=roll.beats_per_bar, bpm=roll.bpm,
                style=meta.get("style", ""), drummer=meta.get("drummer", ""),
                beat_type=meta.get("beat_type", ""), split=meta.get("split", ""))
    if meta.get("bpm"):
        try:
            song.bpm = float(meta["bpm"])
        except ValueError:
            raise BadInput(f"{path}: info.csv gives bpm {meta['bpm']!r}, not a number") from None
    return validate_song(song, str(path)), roll.notes_mapped, roll.unmapped


def _song_id(rel: str) -> str:
    """A song's id: its path relative to the input folder, without the suffix."""
    return rel.rsplit(".", 1)[0]


def read_info_csv(root: Path) -> dict[str, dict]:
    """Groove layout: info.csv beside the files -> metadata keyed by the MIDI path relative to root."""
    info = root / "info.csv"
    if not info.exists():
        return {}
    with open(info, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["midi_filename"]: r for r in rows if r.get("midi_filename")}


# ---------------------------------------------------------------- the stage

def _record(song: Song, file: str, notes_mapped: int, unmapped: dict) -> dict:
    rec = {f: getattr(song, f) for f in STR_FIELDS}
    rec.update({f: int(getattr(song, f)) for f in INT_FIELDS})
    rec.update({f: float(getattr(song, f)) for f in FLOAT_FIELDS})
    digest = hashlib.sha1(song.hits.tobytes() + song.velocity.tobytes() + song.offset.tobytes()).hexdigest()
    rec.update(file=file, num_steps=song.num_steps, num_drums=int(song.hits.shape[1]),
               sections=song.sections.tolist(), sha1=digest, notes_mapped=notes_mapped,
               unmapped={str(p): n for p, n in unmapped.items()})
    return rec


def _run_part(part: int, items: list, load, songs_dir: Path, fail_fast: bool) -> list[dict]:
    """Load one partition of inputs and write each good song as an NPZ; return one result per input.

    fail_fast (on_error=fail): raise at the first bad file; dask then stops scheduling new tasks.
    """
    out = []
    for j, item in enumerate(items):
        try:
            song, notes_mapped, unmapped = load(item)
        except BadInput as exc:
            if fail_fast:
                raise IngestError(str(exc)) from exc
            out.append({"source": _label(item), "error": str(exc)})
            continue
        file = f"p{part:05d}_{j:05d}.npz"
        np.savez(songs_dir / file, **{name: getattr(song, name) for name in ROW_ARRAYS})
        out.append(_record(song, file, notes_mapped, unmapped))
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


def _sources(cfg: DictConfig, drum_map: DrumMap):
    """(items, load(item) -> (Song, notes_mapped, unmapped), input description) for the configured source."""
    data, spq = cfg.data, int(cfg.ingest.steps_per_quarter)
    source = data.source
    if source == "builtin":
        # Each task generates its own songs (song i depends only on seed and i): parallel, and the
        # driver never holds the corpus.
        from pipeline.corpus import check_drum_map, generate_song

        opts = OmegaConf.to_container(data.corpus, resolve=True)
        num_songs, seed = int(opts.pop("num_songs")), int(opts.pop("seed"))
        check_drum_map(drum_map.names)   # the configured map: it labels the store's columns

        def load(i):
            song = validate_song(generate_song(i, seed, **opts), f"builtin song {i}")
            return song, int(song.hits.sum()), {}
        return list(range(num_songs)), load, f"builtin corpus (seed {seed})"
    if OmegaConf.is_missing(data, "path"):
        raise IngestError(f"data.path is not set: python -m pipeline data={source} data.path=/your/folder")
    root = Path(data.path)
    if not root.is_dir():
        raise IngestError(f"{root}: input folder does not exist (set data.path)")
    if source == "npz":
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".npz" and p.is_file())
        spb, bpm = int(data.get("steps_per_bar", 16)), float(data.get("bpm", 120.0))

        def load(item):
            path, rel = item
            return load_npz(path, rel, steps_per_bar=spb, bpm=bpm), 0, {}
    elif source == "midi":
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
        info = read_info_csv(root)

        def load(item):
            path, rel = item
            return load_midi(path, rel, drum_map, spq, info.get(rel, {}))
    else:
        raise IngestError(f"data.source must be builtin, npz or midi, got {source!r}")
    items = [(p, p.relative_to(root).as_posix()) for p in files]
    return items, load, str(root)


def ingest(cfg: DictConfig) -> dict:
    """Run the stage; returns the report (also written to data/ingest_report.json)."""
    drum_map = DrumMap.from_config(cfg.drums)
    on_error = cfg.ingest.on_error
    if on_error not in ("skip", "fail"):
        raise IngestError(f"ingest.on_error must be 'skip' or 'fail', got {on_error!r}")
    items, load, where = _sources(cfg, drum_map)
    if not items:
        raise IngestError(f"{where}: no input files found for source {cfg.data.source!r}")

    interim = Path(cfg.paths.interim)
    with atomic_path(interim) as tmp:
        songs_dir = tmp / "songs"
        songs_dir.mkdir(parents=True)
        per_task = max(1, int(cfg.ingest.files_per_task))
        parts = [items[i:i + per_task] for i in range(0, len(items), per_task)]
        bag = db.from_sequence(list(enumerate(parts)), npartitions=len(parts))
        fail_fast = on_error == "fail"
        results = bag.map(lambda pi: _run_part(pi[0], pi[1], load, songs_dir, fail_fast)).flatten().compute(
            scheduler=cfg.ingest.scheduler, num_workers=int(cfg.ingest.workers))
        results = _reject_odd_drum_counts(results, songs_dir)
        skipped = [{"file": r["source"], "reason": r["error"]} for r in results if "error" in r]
        if skipped and on_error == "fail":
            raise IngestError(skipped[0]["reason"])
        songs = [r for r in results if "error" not in r]
        if not songs:
            raise IngestError(f"{where}: no usable input file ({len(skipped)} skipped; first: "
                              f"{skipped[0]['reason'] if skipped else 'none'})")
        ratios = OmegaConf.to_container(cfg.ingest.split_ratios, resolve=True)
        for r in songs:
            if r["split"] not in SPLITS:
                r["split"] = hash_split(r["name"], ratios)
        num_drums = songs[0]["num_drums"]
        attrs = drum_map.to_attrs() if num_drums == drum_map.num_drums else {
            "drum_names": [f"drum{i}" for i in range(num_drums)], "drum_pitches": [0] * num_drums,
            "mapping": {}}
        manifest = {**attrs, "steps_per_quarter": int(cfg.ingest.steps_per_quarter),
                    "source": cfg.data.source, "songs": songs}
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        report = _report(cfg, where, results, songs, skipped)
        report_path = Path(cfg.paths.data_dir) / "ingest_report.json"
        with atomic_path(report_path) as rtmp:
            rtmp.write_text(json.dumps(report, indent=1))
    for s in skipped:
        log.warning("skipped %s", s["reason"])
    log.info("ingest: %d songs, %d steps, %d skipped -> %s", report["songs"], report["steps"],
             len(skipped), interim)
    return report


def _reject_odd_drum_counts(results: list[dict], songs_dir: Path) -> list[dict]:
    """All songs share one drum count: the most common one; files with another are bad input."""
    counts = Counter(r["num_drums"] for r in results if "error" not in r)
    if len(counts) <= 1:
        return results
    keep = max(counts.items(), key=lambda kv: kv[1])[0]
    out = []
    for r in results:
        if "error" not in r and r["num_drums"] != keep:
            (songs_dir / r["file"]).unlink()
            r = {"source": r["source"], "error": f"{r['source']}: {r['num_drums']} drum columns, "
                                                f"the other files have {keep}"}
        out.append(r)
    return out


def _report(cfg, where, results, songs, skipped) -> dict:
    dropped = Counter()
    for r in songs:
        dropped.update({int(p): n for p, n in r["unmapped"].items()})
    return {
        "source": cfg.data.source, "input": where, "on_error": cfg.ingest.on_error,
        "files": len(results), "songs": len(songs), "skipped_count": len(skipped),
        "steps": int(sum(r["num_steps"] for r in songs)),
        "notes_mapped": int(sum(r["notes_mapped"] for r in songs)),
        "notes_dropped": {str(p): n for p, n in sorted(dropped.items())},
        "unmapped_by_file": [{"file": r["source"], "pitches": r["unmapped"]} for r in songs if r["unmapped"]],
        "splits": {s: sum(r["split"] == s for r in songs) for s in SPLITS},
        "skipped": skipped,
    }


@hydra.main(config_path=str(pipeline.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with pipeline.config.exit_on("ingest", IngestError):
        ingest(cfg)


if __name__ == "__main__":
    main()
