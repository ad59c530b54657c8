"""Audio preview cost: FluidSynth render time and file size per format, for drum MIDI of a few lengths.

`python -m benchmarks.render [--bars 4 8 16] [--repeats 3]` prints one JSON line per (format, bars):
best and median seconds per file (a fresh render each time: the cache is bypassed), file bytes,
audio seconds and kilobits per second of audio. Needs fluidsynth and fluid-soundfont-gm.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common.config import compose
from pipeline.drums import DrumMap
from pipeline.midi import write_midi
from train.report.audio import Synth, find_synth, render


def groove(bars: int, num_drums: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Kick/snare/hats with some random ghost notes: a typical 16th-note drum roll and its velocities."""
    rng = np.random.default_rng(seed)
    hits = np.zeros((16 * bars, num_drums), np.uint8)
    hits[0::8, 0] = hits[4::8, 1] = hits[0::2, 2] = 1
    hits[rng.random(len(hits)) < 0.1, 1] = 1
    return hits, hits * rng.integers(30, 127, hits.shape).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--formats", nargs="+", default=["oga", "flac", "wav"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    synth, missing = find_synth(compose([]).preview)
    if synth is None:
        raise SystemExit(missing)
    dm = DrumMap.default()
    with tempfile.TemporaryDirectory() as tmp:
        for bars in args.bars:
            midi = write_midi(Path(tmp) / f"g{bars}.mid", *groove(bars, dm.num_drums), drum_map=dm, bpm=120)
            for fmt in args.formats:
                s = Synth(synth.program, synth.soundfont, fmt, synth.sample_rate, synth.gain)
                times = []
                for r in range(args.repeats):
                    out = Path(tmp) / f"g{bars}_{r}.{fmt}"
                    t0 = time.perf_counter()
                    render(s, midi, out)
                    times.append(time.perf_counter() - t0)
                size = out.stat().st_size
                music_s = bars * 4 * 60 / 120
                print(json.dumps({"format": fmt, "bars": bars, "music_s": music_s, "best_s": round(min(times), 3),
                                  "median_s": round(statistics.median(times), 3), "bytes": size,
                                  "kbit_per_music_s": round(size * 8 / 1000 / music_s, 1)}))


if __name__ == "__main__":
    main()
