"""Groove MIDI reading and the whole ingest stage: mido (the reader before symusic) vs symusic, side by side.

    python benchmarks/midi_read.py [--groove DIR]

Both readers run in this one process, one after the other, on the same files: first every file's drum
onsets (`_drum_onsets`), then the `ingest` stage (threads, the default config) with each reader.
Prints one JSON object: seconds per case, the speed-up, onsets read (equal by construction of the test
tests/test_groove.py::test_symusic_reading_matches_mido_file_by_file). Figures: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import mido
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline.midi  # noqa: E402
from pipeline.config import compose  # noqa: E402
from pipeline.ingest import ingest  # noqa: E402


def mido_onsets(path: Path):
    """The mido reader the pipeline used before symusic (same return value as pipeline.midi._drum_onsets)."""
    mf = mido.MidiFile(str(path))
    onsets, timesigs, tempos = [], [], []
    for track in mf.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "note_on":
                if msg.velocity > 0 and msg.channel == pipeline.midi.DRUM_CHANNEL:
                    onsets.append((tick, msg.note, msg.velocity))
            elif msg.type == "time_signature":
                timesigs.append((tick, msg.numerator, msg.denominator))
            elif msg.type == "set_tempo":
                tempos.append((tick, msg.tempo))
    ev = np.array(onsets, np.int64).reshape(-1, 3)
    return ev[:, 0], ev[:, 1], ev[:, 2], timesigs, tempos, int(mf.ticks_per_beat)


def time_reading(files: list[Path], reader) -> tuple[float, int]:
    t0 = time.perf_counter()
    onsets = sum(len(reader(f)[0]) for f in files)
    return time.perf_counter() - t0, onsets


def time_ingest(groove: Path, reader) -> float:
    symusic_reader = pipeline.midi._drum_onsets
    pipeline.midi._drum_onsets = reader      # read_midi looks the reader up at call time
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose(["data=groove", f"data.path={groove}", f"paths.data_dir={tmp}"])
            t0 = time.perf_counter()
            ingest(cfg)
            return time.perf_counter() - t0
    finally:
        pipeline.midi._drum_onsets = symusic_reader


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groove", default=os.environ.get("HIERDRUMS_GROOVE", str(REPO.parent / "shared/data/groove")))
    args = ap.parse_args()
    groove = Path(args.groove)
    files = sorted(groove.rglob("*.mid"))
    new = pipeline.midi._drum_onsets
    read_mido, n_mido = time_reading(files, mido_onsets)
    read_sym, n_sym = time_reading(files, new)
    ingest_mido = time_ingest(groove, mido_onsets)
    ingest_sym = time_ingest(groove, new)
    print(json.dumps({
        "files": len(files), "onsets_mido": n_mido, "onsets_symusic": n_sym,
        "read_s": {"mido": round(read_mido, 2), "symusic": round(read_sym, 3)},
        "read_speedup": round(read_mido / read_sym, 1),
        "ingest_stage_s": {"mido": round(ingest_mido, 2), "symusic": round(ingest_sym, 2)},
        "ingest_speedup": round(ingest_mido / ingest_sym, 1),
        "loadavg_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
