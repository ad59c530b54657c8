"""info.csv beside MIDI files (Groove MIDI Dataset layout): metadata per file, and what is wrong with it.

A problem with info.csv never stops the stage: a file that cannot be read (a folder, not UTF-8, not
CSV) or lacks the `midi_filename` column is reported once and the MIDI files go on without metadata;
a MIDI file with several rows that disagree (one says train, one test) is skipped with its reason.
"""
from __future__ import annotations

import csv
from pathlib import Path

INFO = "info.csv"
ERROR = "\0error"    # key of a metadata row that says why its file must be skipped (no CSV column has a NUL)


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
