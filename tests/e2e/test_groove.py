"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
The Groove MIDI Dataset end to end: full store, counts checked against an independent mido reading,
and the MIDI -> store -> write_midi -> store round trip..
The rest is tests/unit/test_groove.py."""
import csv
import shutil
from collections import Counter
from pathlib import Path

import mido
import numpy as np
import pytest
import yaml

from pipeline.build import build
from common.config import CONF_DIR, compose
from pipeline.drums import DrumMap
from pipeline.ingest import ingest
from pipeline.midi import _drum_onsets, write_midi
from pipeline.store import Store

pytestmark = pytest.mark.groove


def _gmd9() -> dict[int, int]:
    classes = yaml.safe_load((CONF_DIR / "drums" / "gmd9.yaml").read_text())["classes"]
    return {p: c for c, entry in enumerate(classes) for p in entry["pitches"]}


def _mido_reading(path: Path) -> dict:
    """Read one file with mido, independently of pipeline.midi (symusic): every drum note-on on
    channel 10 as (tick, pitch, velocity), the time signatures and ticks per quarter."""
    mf = mido.MidiFile(path)
    onsets, timesigs = [], []
    for track in mf.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "note_on" and msg.velocity > 0 and msg.channel == 9:
                onsets.append((tick, msg.note, msg.velocity))
            elif msg.type == "time_signature":
                timesigs.append((tick, msg.numerator, msg.denominator))
    return {"onsets": sorted(onsets), "timesigs": sorted(timesigs), "tpq": mf.ticks_per_beat}


@pytest.fixture(scope="module")
def mido_groove(groove_dir) -> dict[str, dict]:
    """Every Groove file read with mido once (the reference both tests below compare with)."""
    with open(groove_dir / "info.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["midi_filename"]: _mido_reading(groove_dir / r["midi_filename"]) for r in rows}


def _expected(ref: dict, pitch_to_class: dict[int, int]) -> dict:
    """From the mido reading: step = round(tick * 4 / ticks_per_beat), length = whole bars up to
    the last mapped note."""
    onsets, timesigs = [(t, p) for t, p, _ in ref["onsets"]], ref["timesigs"]
    num, den = min(timesigs)[1:] if timesigs else (4, 4)
    steps_per_bar = 16 * num // den
    mapped = [(round(t * 4 / ref["tpq"]), pitch_to_class[p]) for t, p in onsets if p in pitch_to_class]
    last = max(s for s, _ in mapped)
    return {"steps": (last // steps_per_bar + 1) * steps_per_bar, "hits": len(set(mapped)),
            "mapped": len(mapped), "dropped": Counter(p for _, p in onsets if p not in pitch_to_class)}


@pytest.fixture(scope="module")
def groove_store(groove_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("groove")
    cfg = compose(["data=groove", f"data.path={groove_dir}", f"paths.data_dir={out}"])
    report = ingest(cfg)
    build(cfg)
    return report, Store(out / "store.zarr")


def test_symusic_reading_matches_mido_file_by_file(groove_dir, mido_groove):
    """Every onset, pitch, velocity and tick (and the grid: tpq, time signatures) as mido reads
    them, including the ride hit that is never closed (symusic alone drops it)."""
    total = 0
    for rel, ref in mido_groove.items():
        tick, pitch, vel, timesigs, _, tpq = _drum_onsets(groove_dir / rel)
        got = sorted(zip(tick.tolist(), pitch.tolist(), vel.tolist()))
        assert got == ref["onsets"], rel
        assert tpq == ref["tpq"] and sorted(timesigs) == ref["timesigs"], rel
        total += len(got)
    assert total == 402418


def test_groove_counts_match_independent_reading(groove_dir, groove_store, mido_groove):
    report, store = groove_store
    with open(groove_dir / "info.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pitch_to_class = _gmd9()
    expected = {r["midi_filename"]: _expected(mido_groove[r["midi_filename"]], pitch_to_class) for r in rows}
    splits = Counter(r["split"] for r in rows)

    assert store.num_songs == report["songs"] == len(rows) == 1021
    # the tune split: round(10%) of each style x beat_type's train songs (pipeline/splits.py)
    strata = Counter((r["style"].split("/")[0], r["beat_type"]) for r in rows if r["split"] == "train")
    tune = sum(round(0.1 * n) for n in strata.values())
    assert store.attrs["splits"] == {"train": splits["train"] - tune, "validation": splits["validation"], "test": 0,
                                     "tune": tune} and 85 <= tune <= 95
    assert splits["train"] == 897 and splits["validation"] == 124
    assert report["skipped"] == []
    assert store.attrs["num_steps"] == report["steps"] == sum(e["steps"] for e in expected.values())
    assert store.attrs["num_hits"] == sum(e["hits"] for e in expected.values())
    assert int(store.hits[:].sum()) == store.attrs["num_hits"]
    assert report["notes_mapped"] == sum(e["mapped"] for e in expected.values())
    dropped = sum((e["dropped"] for e in expected.values()), Counter())
    assert report["notes_dropped"] == {str(p): n for p, n in sorted(dropped.items())}
    # per song: its length and its metadata come from the right file
    lengths = np.diff(store.song_offsets)
    by_source = dict(zip(store.meta["source"], range(store.num_songs)))
    meta = {r["midi_filename"]: r for r in rows}
    for src, e in expected.items():
        i = by_source[src]
        assert lengths[i] == e["steps"], src
        split = store.meta["split"][i]          # a train song may have been carved into tune
        assert (split == meta[src]["split"] or (split, meta[src]["split"]) == ("tune", "train")) \
            and store.meta["style"][i] == meta[src]["style"]
        assert store.meta["drummer"][i] == meta[src]["drummer"]
        assert store.meta["bpm"][i] == pytest.approx(float(meta[src]["bpm"]))


def test_round_trip_midi_store_midi_store(groove_store, mido_groove, tmp_path):
    """MIDI -> store -> write_midi -> store gives identical hits, velocities and offsets, odd meters
    included; every written onset lies within one source tick of a source note of its class."""
    _, store = groove_store
    picks = sorted(set(range(0, store.num_songs, 97)) |
                   {int(i) for i in np.flatnonzero(store.meta["steps_per_bar"] != 16)})
    spq = store.attrs["steps_per_quarter"]
    inp = tmp_path / "in"
    for i in picks:
        song = store.song(i)
        beat_unit = spq * 4 * song.beats_per_bar // song.steps_per_bar
        write_midi(inp / f"{song.name}.mid", song.hits, song.velocity, drum_map=DrumMap.default(),
                   bpm=song.bpm, steps_per_quarter=spq, beats_per_bar=song.beats_per_bar, beat_unit=beat_unit,
                   offset=song.offset)
    cfg = compose(["data=midi", f"data.path={inp}", f"paths.data_dir={tmp_path / 'out'}"])
    ingest(cfg)
    build(cfg)
    again = Store(tmp_path / "out" / "store.zarr")
    assert again.num_songs == len(picks) > 12
    names = {again.meta["name"][j]: j for j in range(again.num_songs)}
    pitch_to_class = _gmd9()
    for i in picks:
        a, b = store.song(i), again.song(names[store.meta["name"][i]])
        np.testing.assert_array_equal(b.hits, a.hits)
        np.testing.assert_array_equal(b.velocity, a.velocity)
        np.testing.assert_array_equal(b.offset, a.offset)
        assert b.steps_per_bar == a.steps_per_bar and (a.offset != 0).mean() > 0.5 * (a.hits > 0).mean()
        ref = mido_groove[store.meta["source"][i]]
        source = {}
        for t, p, _ in ref["onsets"]:
            source.setdefault(pitch_to_class[p], []).append(t)
        written = _mido_reading(inp / f"{a.name}.mid")
        scale = ref["tpq"] / written["tpq"]
        for t, p, _ in written["onsets"]:
            near = np.abs(np.asarray(source[pitch_to_class[p]]) - t * scale).min()
            assert near <= 1, (a.name, t, p, near)
    shutil.rmtree(tmp_path / "out")
