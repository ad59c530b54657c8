"""Groove MIDI reading and the whole ingest stage: mido (the reader before symusic) vs symusic, side by side.

    python benchmarks/midi_read.py [--groove DIR] [--repeat 3]

Both readers run in this one process on the same files: first every file's drum onsets
(`_drum_onsets`), then the whole `ingest` stage (default config: threads, 2 workers; scanning,
parsing, quantising, validation, shard writes, manifest and report) with each reader, the two
alternating `--repeat` times so that both see the same weather on a shared machine. Prints one JSON
object: wall and CPU seconds of every run, the speed-up of the best and of the median runs, onsets
read (equal by construction of the test
tests/e2e/test_groove.py::test_symusic_reading_matches_mido_file_by_file). Figures: benchmarks/README.md.
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
from common.config import compose  # noqa: E402
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


def time_ingest(groove: Path, reader) -> tuple[float, float]:
    symusic_reader = pipeline.midi._drum_onsets
    pipeline.midi._drum_onsets = reader      # read_midi looks the reader up at call time
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose(["data=groove", f"data.path={groove}", f"paths.data_dir={tmp}"])
            t0, c0 = time.perf_counter(), time.process_time()
            ingest(cfg)
            return time.perf_counter() - t0, time.process_time() - c0
    finally:
        pipeline.midi._drum_onsets = symusic_reader


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groove", default=os.environ.get("HIERDRUMS_GROOVE", str(REPO.parent / "shared/data/groove")))
    ap.add_argument("--repeat", type=int, default=3, help="ingest runs per reader, alternating")
    args = ap.parse_args()
    groove = Path(args.groove)
    files = sorted(groove.rglob("*.mid"))
    readers = {"mido": mido_onsets, "symusic": pipeline.midi._drum_onsets}
    read_mido, n_mido = time_reading(files, readers["mido"])
    read_sym, n_sym = time_reading(files, readers["symusic"])
    time_ingest(groove, readers["symusic"])        # warm-up: imports, first-call caches
    runs = {name: [] for name in readers}
    for _ in range(args.repeat):
        for name, reader in readers.items():
            runs[name].append(time_ingest(groove, reader))
    best = {k: min(r) for k, r in runs.items()}
    median = {k: sorted(r)[len(r) // 2] for k, r in runs.items()}
    print(json.dumps({
        "files": len(files), "onsets_mido": n_mido, "onsets_symusic": n_sym,
        "read_s": {"mido": round(read_mido, 2), "symusic": round(read_sym, 3)},
        "read_speedup": round(read_mido / read_sym, 1),
        "ingest_runs_wall_cpu_s": {k: [[round(w, 2), round(c, 2)] for w, c in r] for k, r in runs.items()},
        "ingest_speedup_best_wall": round(best["mido"][0] / best["symusic"][0], 1),
        "ingest_speedup_median_wall": round(median["mido"][0] / median["symusic"][0], 1),
        "ingest_speedup_best_cpu": round(min(c for _, c in runs["mido"]) / min(c for _, c in runs["symusic"]), 1),
        "loadavg_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
