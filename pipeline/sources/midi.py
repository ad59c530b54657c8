"""Source `midi`: a folder of General MIDI drum files (conf/data/midi.yaml; conf/data/groove.yaml
is this source on the Groove MIDI Dataset). The Groove layout's info.csv beside the files is this
source's metadata reader (`read_info`): drummer, style, bpm, beat_type and split per file.

MIDI I/O itself (parsing, quantising) is pipeline/midi.py; `read_file` is its entry for one file.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from omegaconf import DictConfig

from pipeline.drums import DrumMap
from pipeline.midi import MidiError, MidiRoll, read_midi
from pipeline.sources.base import BadInput, Source, check_entry, input_folder, scan_folder, song_id, validate_song
from pipeline.store import SPLITS, Song

MIDI_SUFFIXES = {".mid", ".midi"}

INFO = "info.csv"
ERROR = "\0error"    # key of a metadata row that says why its file must be skipped (no CSV column has a NUL)



class MidiSource(Source):
    name, suffixes = "midi", tuple(sorted(MIDI_SUFFIXES))

    def __init__(self, cfg: DictConfig, drum_map: DrumMap):
        self.root = input_folder(cfg.data)
        self.where = str(self.root)
        self.drum_map, self.steps_per_quarter = drum_map, int(cfg.ingest.steps_per_quarter)
        self.max_steps = int(cfg.ingest.max_steps)

    def items(self) -> list[tuple[Path, str, dict]]:
        info, problems = read_info(self.root)   # each item carries its own info.csv row: tasks ship only theirs
        items = [(self.root / INFO, INFO, {ERROR: p}) for p in problems]   # reported as skipped, never fatal
        return items + [(self.root / rel, rel, info.get(rel, {})) for rel in scan_folder(self.root, MIDI_SUFFIXES)]

    def load(self, item) -> tuple[Song, int, dict]:
        path, rel, meta = item
        if ERROR in meta:   # info.csv itself, or rows for this file that disagree
            raise BadInput(meta[ERROR])
        check_entry(path)
        return load_midi(path, rel, self.drum_map, self.steps_per_quarter, meta, self.max_steps)


def read_file(path: Path, drum_map: DrumMap, steps_per_quarter: int, max_steps: int | None = None) -> MidiRoll:
    """One drum MIDI file -> its roll (pipeline.midi.read_midi); a bad file is a MidiError (a ValueError)."""
    return read_midi(path, drum_map, steps_per_quarter, max_steps=max_steps)


def load_midi(path: Path, rel: str, drum_map: DrumMap, steps_per_quarter: int, meta: dict,
              max_steps: int | None = None):
    """A drum MIDI file -> (Song, notes_mapped, unmapped pitch counts); `meta` from info.csv if any."""
    bpm, split = _info_bpm(path, meta), meta.get("split", "")
    if split not in ("", *SPLITS):
        raise BadInput(f"{path}: info.csv gives split {split!r}, expected one of {', '.join(SPLITS)} "
                       "(or empty for a hash split)")
    try:
        roll = read_file(path, drum_map, steps_per_quarter, max_steps=max_steps)
    except MidiError as exc:
        raise BadInput(str(exc)) from exc
    song = Song(name=song_id(rel), hits=roll.hits, velocity=roll.velocity, offset=roll.offset, source=rel,
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


def read_info(root: Path) -> tuple[dict[str, dict], list[str]]:
    """(MIDI path relative to root -> its row, problems with info.csv itself: one reason each)."""
    path = root / INFO
    if not path.exists() and not path.is_symlink():
        return {}, []
    if not path.is_file():
        return {}, [f"{path}: not a regular file (a folder?); no metadata read, files use a hash split"]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [(reader.line_num, r) for r in reader]
            columns = reader.fieldnames or []
    except UnicodeDecodeError as e:
        return {}, [f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                    "no metadata read, files use a hash split"]
    except (OSError, csv.Error) as e:
        return {}, [f"{path}: unreadable ({type(e).__name__}: {e}); no metadata read"]
    if "midi_filename" not in columns:
        return {}, [f"{path}: no 'midi_filename' column (has {columns}); no metadata read, files use a hash split"]
    return _by_file(path, rows), []


def _by_file(path: Path, rows: list[tuple[int, dict]]) -> dict[str, dict]:
    """Rows keyed by midi_filename; a file named by rows that differ gets an ERROR row instead."""
    seen: dict[str, list[tuple[int, dict]]] = {}
    for line, r in rows:
        if r.get("midi_filename"):
            seen.setdefault(r["midi_filename"], []).append((line, r))
    out = {}
    for name, found in seen.items():
        first = found[0][1]
        differ = [(line, r) for line, r in found[1:] if r != first]
        if not differ:
            out[name] = first
            continue
        keys = sorted(k for k in first.keys() | differ[0][1].keys() if first.get(k) != differ[0][1].get(k))
        what = ", ".join(f"{k} {first.get(k)!r} vs {differ[0][1].get(k)!r}" for k in keys[:3])
        out[name] = {ERROR: f"{path.parent / name}: {INFO} has {len(found)} rows for it (lines "
                            f"{', '.join(str(line) for line, _ in found)}) that differ ({what}); skipped"}
    return out
