"""CPU milliseconds (best of 3) of the pieces of the ingest stage on Groove, outside the stage's task
pool: scanning + checking entries, interim shard writes (64 songs each), drum-note reading, read_midi,
load_midi; prints JSON. `--tree` runs another checkout's code (e.g. main) for a side-by-side figure.

    python benchmarks/ingest_parts.py [--tree /work/main] [--groove DIR]     (figures: benchmarks/README.md)
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_ms(fn) -> float:
    best = float("inf")
    for _ in range(3):
        c = time.process_time()
        fn()
        best = min(best, time.process_time() - c)
    return round(best * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=str(REPO))
    ap.add_argument("--groove", default=os.environ.get("HIERDRUMS_GROOVE", str(REPO.parent / "shared/data/groove")))
    args = ap.parse_args()
    sys.path[0] = args.tree          # not benchmarks/ (its pipeline.py would shadow the package)
    from pipeline import midi
    from pipeline.interim import write_shard
    from pipeline.sources.base import check_entry, scan_folder
    from pipeline.sources.midi import MIDI_SUFFIXES, load_midi
    from pipeline.drums import DrumMap

    root, dm = Path(args.groove), DrumMap.default()
    files = sorted(root.rglob("*.mid"))
    songs = [load_midi(f, f.name, dm, 4, {}, 65536)[0] for f in files]

    def scan():
        for p in scan_folder(root, MIDI_SUFFIXES):
            check_entry(root / p if isinstance(p, str) else p)

    def shards():
        with tempfile.TemporaryDirectory() as d:
            for i in range(0, len(songs), 64):
                write_shard(Path(d) / f"p{i}", songs[i:i + 64])
    print(json.dumps({"tree": args.tree, "files": len(files), "scan_check_ms": cpu_ms(scan),
                      "shard_writes_ms": cpu_ms(shards),
                      "drum_onsets_ms": cpu_ms(lambda: [midi._drum_onsets(f) for f in files]),
                      "read_midi_ms": cpu_ms(lambda: [midi.read_midi(f, dm, 4, 65536) for f in files]),
                      "load_midi_ms": cpu_ms(lambda: [load_midi(f, f.name, dm, 4, {}, 65536) for f in files]),
                      "loadavg_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
