"""Drum MIDI in and out: quantised piano rolls from General MIDI drum files, and back.

`read_midi` is the ingest side (MIDI folder, Groove MIDI Dataset); `write_midi` is used by ingest
tests and by generation, so one definition of "a roll as MIDI" serves both directions.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import mido
import numpy as np

from pipeline.drums import DrumMap

DRUM_CHANNEL = 9  # General MIDI channel 10, zero-based


class MidiError(ValueError):
    """A MIDI file that cannot become a song; the message names the file and the reason."""


@dataclass
class MidiRoll:
    hits: np.ndarray                  # uint8 [T, D] 0/1
    velocity: np.ndarray              # uint8 [T, D] max velocity of the notes on each hit
    steps_per_bar: int
    beats_per_bar: int
    bpm: float
    notes_mapped: int                 # drum notes that landed in a class (before merging per step)
    unmapped: dict[int, int] = field(default_factory=dict)  # pitch -> notes dropped (not in the map)


def steps_per_bar_for(numerator: int, denominator: int, steps_per_quarter: int, where: str = "") -> int:
    """steps_per_bar = steps_per_quarter * 4 * numerator / denominator; must be a whole number."""
    spb = Fraction(steps_per_quarter * 4 * numerator, denominator)
    if spb.denominator != 1 or spb <= 0:
        raise MidiError(f"{where}: time signature {numerator}/{denominator} gives {float(spb)} steps per "
                        f"bar at {steps_per_quarter} steps per quarter (must be a whole number)")
    return int(spb)


def _drum_onsets(path: Path):
    """Every drum note-on (channel 10, velocity > 0) as absolute ticks, plus time signatures and tempos.

    mido rather than symusic here: symusic pairs note-ons with note-offs and drops a note-on that is
    never closed (one ride hit in the Groove MIDI Dataset), while a drum roll needs onsets only.
    """
    try:
        mf = mido.MidiFile(str(path))
    except Exception as exc:  # mido raises OSError, EOFError, KeyError, ValueError... for corrupt files
        raise MidiError(f"{path}: unreadable MIDI ({type(exc).__name__}: {exc})") from exc
    if mf.type == 2 or mf.ticks_per_beat <= 0:
        raise MidiError(f"{path}: unsupported MIDI (type {mf.type}, {mf.ticks_per_beat} ticks per beat)")
    onsets, timesigs, tempos = [], [], []
    for track in mf.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "note_on":
                if msg.velocity > 0 and msg.channel == DRUM_CHANNEL:
                    onsets.append((tick, msg.note, msg.velocity))
            elif msg.type == "time_signature":
                timesigs.append((tick, msg.numerator, msg.denominator))
            elif msg.type == "set_tempo":
                tempos.append((tick, msg.tempo))
    ev = np.array(onsets, np.int64).reshape(-1, 3)
    return ev[:, 0], ev[:, 1], ev[:, 2], timesigs, tempos, int(mf.ticks_per_beat)


def read_midi(path: str | Path, drum_map: DrumMap, steps_per_quarter: int = 4,
              max_steps: int | None = None) -> MidiRoll:
    """Quantise the drum notes of a MIDI file onto a grid of `steps_per_quarter` steps per quarter note.

    Note onsets in ticks become quarter-note positions (tick / ticks_per_quarter), so the grid follows
    the tempo map; position * steps_per_quarter is rounded to the nearest step. Several notes of one
    class on one step make one hit with the largest velocity. Notes whose pitch is not in the map are
    counted per pitch in `unmapped`. The roll ends at the bar holding the last hit (whole bars, from the
    first time signature; 4/4 when the file has none). A roll longer than `max_steps` is refused
    before anything is allocated: a 37-byte file with one note at tick 2**28 would ask for gigabytes.
    """
    path = Path(path)
    onset, pitch, vel, timesigs, tempos, tpq = _drum_onsets(path)
    if not len(onset):
        raise MidiError(f"{path}: no drum notes (no notes on channel 10 / drum tracks)")

    lut = np.full(128, -1, np.int64)
    for p, c in drum_map.pitch_to_class.items():
        lut[p] = c
    cls = lut[pitch]
    mapped = cls >= 0
    unmapped = {int(p): int(n) for p, n in sorted(Counter(pitch[~mapped].tolist()).items())}
    if not mapped.any():
        raise MidiError(f"{path}: no drum notes in the mapping (unmapped pitches {unmapped})")

    num, den = min(timesigs)[1:] if timesigs else (4, 4)
    spb = steps_per_bar_for(num, den, steps_per_quarter, str(path))
    tempo = min(tempos)[1] if tempos else mido.bpm2tempo(120)
    if tempo <= 0:
        raise MidiError(f"{path}: tempo {tempo} microseconds per quarter (must be positive)")
    bpm = float(mido.tempo2bpm(tempo))

    step = np.rint(onset[mapped] * steps_per_quarter / tpq).astype(np.int64)
    cls, v = cls[mapped], np.clip(vel[mapped], 1, 127)
    num_steps = (int(step.max()) // spb + 1) * spb
    if max_steps is not None and num_steps > max_steps:
        raise MidiError(f"{path}: {num_steps} steps (last note at tick {int(onset[mapped].max())}), "
                        f"more than max_steps={max_steps} (ingest.max_steps)")
    velocity = np.zeros((num_steps, drum_map.num_drums), np.uint8)
    np.maximum.at(velocity, (step, cls), v.astype(np.uint8))
    return MidiRoll(hits=(velocity > 0).astype(np.uint8), velocity=velocity, steps_per_bar=spb,
                    beats_per_bar=num, bpm=bpm, notes_mapped=int(mapped.sum()), unmapped=unmapped)


def write_midi(path: str | Path, hits: np.ndarray, velocity: np.ndarray | None = None, *,
               drum_map: DrumMap, bpm: float = 120.0, steps_per_quarter: int = 4,
               beats_per_bar: int = 4, default_velocity: int = 100, beat_unit: int = 4,
               ticks_per_quarter: int = 480) -> Path:
    """Write a roll as a one-track General MIDI drum file (channel 10), each class at its canonical pitch.

    The time signature is beats_per_bar/beat_unit (e.g. 6/8: beats_per_bar=6, beat_unit=8), so that
    read_midi gives back the same steps_per_bar.

    Each hit is a note of one step's length; `velocity` (0 where no hit) gives its loudness, else
    `default_velocity`. The file is written atomically.
    """
    from pipeline.atomic import atomic_path

    hits = np.asarray(hits)
    if hits.ndim != 2 or hits.shape[1] != drum_map.num_drums:
        raise ValueError(f"{path}: hits must be [T, {drum_map.num_drums}], got {hits.shape}")
    vel = np.full(hits.shape, default_velocity) if velocity is None else np.asarray(velocity)
    vel = np.clip(np.where(vel > 0, vel, default_velocity), 1, 127).astype(np.int8)
    ticks_per_step = ticks_per_quarter // steps_per_quarter
    if ticks_per_step * steps_per_quarter != ticks_per_quarter:
        raise ValueError(f"ticks_per_quarter {ticks_per_quarter} not divisible by {steps_per_quarter}")

    steps, cls = np.nonzero(hits > 0)
    pitches = np.asarray(drum_map.pitches)[cls]
    # (tick, order, message): at one tick, note-offs go before note-ons, so a class hit on two
    # consecutive steps closes its first note before the second starts.
    events = [(int(s) * ticks_per_step, 1, mido.Message("note_on", channel=DRUM_CHANNEL, note=int(p),
                                                        velocity=int(vel[s, c])))
              for s, c, p in zip(steps, cls, pitches)]
    events += [((int(s) + 1) * ticks_per_step, 0, mido.Message("note_off", channel=DRUM_CHANNEL, note=int(p),
                                                               velocity=0))
               for s, p in zip(steps, pitches)]
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack([
        mido.MetaMessage("track_name", name="drums", time=0),
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(float(bpm)), time=0),
        mido.MetaMessage("time_signature", numerator=int(beats_per_bar), denominator=int(beat_unit), time=0),
    ])
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    path = Path(path)
    with atomic_path(path) as tmp:
        mido.MidiFile(type=0, ticks_per_beat=ticks_per_quarter, tracks=[track]).save(str(tmp))
    return path
