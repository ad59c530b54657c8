"""Drum MIDI in and out: quantised piano rolls from General MIDI drum files, and back.

`read_midi` is the ingest side (MIDI folder, Groove MIDI Dataset); `write_midi` is used by ingest
tests and by generation, so one definition of "a roll as MIDI" serves both directions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import mido
import numpy as np
import symusic

from pipeline.drums import DrumMap

DRUM_CHANNEL = 9  # General MIDI channel 10, zero-based
OFFSET_UNITS = 128  # a timing offset counts 1/128 of a step (int8: a hit lies within half a step of its step)


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
    offset: np.ndarray | None = None  # int8 [T, D] timing of each hit in 1/OFFSET_UNITS step, 0 elsewhere


def steps_per_bar_for(numerator: int, denominator: int, steps_per_quarter: int, where: str = "") -> int:
    """steps_per_bar = steps_per_quarter * 4 * numerator / denominator; must be a whole number."""
    spb = Fraction(steps_per_quarter * 4 * numerator, denominator)
    if spb.denominator != 1 or spb <= 0:
        raise MidiError(f"{where}: time signature {numerator}/{denominator} gives {float(spb)} steps per "
                        f"bar at {steps_per_quarter} steps per quarter (must be a whole number)")
    return int(spb)


@functools.lru_cache(maxsize=8)
def _note_offs(per_pitch: int) -> bytes:
    """`per_pitch` note-offs of each pitch on channel 10: status, pitch, velocity 0, next delta 0."""
    return b"".join(bytes([0x80 | DRUM_CHANNEL, p, 0, 0]) for p in range(128) for _ in range(per_pitch))


def _close_drum_notes(data: bytes, per_pitch: int) -> bytes:
    """The file with `per_pitch` note-offs of every pitch on channel 10 just before each track's end.

    symusic pairs note-ons with note-offs and drops a note-on that is never closed (one ride hit in
    the Groove MIDI Dataset), while a drum roll needs every onset. Note-offs at the end of a track
    close only notes still open there, so every other note keeps its pairing. A track whose data
    does not end in an end-of-track event is left as it is (symusic reads what it can).
    """
    patch = _note_offs(per_pitch)
    out, pos = [data[:14]], 14
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "big")
        body = data[pos + 8:pos + 8 + size]
        if kind == b"MTrk" and body.endswith(b"\xff\x2f\x00"):
            # "<delta> FF 2F 00" -> "<delta> note-off 00 note-off ... 00 FF 2F 00": all at the end's tick
            body = body[:-3] + patch + b"\xff\x2f\x00"
        out.append(kind + len(body).to_bytes(4, "big") + body)
        pos += 8 + size
    out.append(data[pos:])
    return b"".join(out)


def _parse(path: Path, data: bytes, per_pitch: int):
    try:
        return symusic.Score.from_midi(_close_drum_notes(data, per_pitch), ttype="tick")
    except Exception as exc:  # symusic raises RuntimeError/ValueError... for corrupt files
        raise MidiError(f"{path}: unreadable MIDI ({type(exc).__name__}: {exc})") from exc


def _drum_notes(score):
    """(tick, pitch, velocity, closed-at-track-end) columns of every drum note (channel 10); one
    drum track (the usual case) is returned without copying its columns into a joint table."""
    cols = []
    for track in score.tracks:
        if track.is_drum and len(track.notes):
            n = track.notes.numpy()
            tick = n["time"].astype(np.int64)
            end = tick + n["duration"]
            cols.append((tick, n["pitch"].astype(np.int64), n["velocity"].astype(np.int64), end == end.max()))
    if len(cols) == 1:
        return cols[0]
    if not cols:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return tuple(np.concatenate(c) for c in zip(*cols))


def _most_open_at_a_track_end(score) -> int:
    """The most notes of one pitch ending at one drum track's last note end: as many as the note-offs
    added per pitch means more may have been open there. Counted per track: across tracks, 2,000
    one-note tracks would add up to 2,000 and make the reader retry with ever more note-offs on
    every track (gigabytes for a 40 KB file)."""
    most = 0
    for track in score.tracks:
        if track.is_drum and len(track.notes):
            n = track.notes.numpy()
            end = n["time"].astype(np.int64) + n["duration"]
            most = max(most, int(np.bincount(n["pitch"][end == end.max()], minlength=128).max()))
    return most


def _drum_onsets(path: Path):
    """Every drum note-on (channel 10, velocity > 0) as absolute ticks, plus time signatures and tempos.

    Read with symusic (~100x faster than mido on Groove), with the open notes closed at each track's
    end (`_close_drum_notes`). If as many notes of a pitch end at a track's last note end as note-offs
    were added, more may be open: read again with four times as many (at most a few rounds).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MidiError(f"{path}: unreadable MIDI ({type(exc).__name__}: {exc})") from exc
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiError(f"{path}: unreadable MIDI (no MThd header)")
    fmt, division = int.from_bytes(data[8:10], "big"), int.from_bytes(data[12:14], "big")
    if fmt == 2 or division == 0 or division & 0x8000:  # type 2 / SMPTE time: no single musical grid
        raise MidiError(f"{path}: unsupported MIDI (type {fmt}, division {division:#06x})")
    if (end := longest_track_ticks(data)) > TICK_LIMIT:   # symusic's 32-bit ticks would wrap
        raise MidiError(f"{path}: a track reaches tick {end}, past {TICK_LIMIT} (ticks that far "
                        "would wrap to the wrong place in the song)")
    per_pitch = 2   # 1 would often read twice: tracks tend to end right at a note's end
    while True:
        score = _parse(path, data, per_pitch)
        tick, pitch, vel, at_end = _drum_notes(score)
        if not len(tick) or _most_open_at_a_track_end(score) < per_pitch or per_pitch >= 4 ** 4:
            break
        per_pitch *= 4
    if not vel.all():
        on = vel > 0
        tick, pitch, vel = tick[on], pitch[on], vel[on]
    timesigs = [(int(t.time), int(t.numerator), int(t.denominator)) for t in score.time_signatures]
    tempos = [(int(t.time), int(t.mspq)) for t in score.tempos]
    return tick, pitch, vel, timesigs, tempos, int(score.tpq)


def quantise(tick: np.ndarray, tpq: int, steps_per_quarter: int) -> tuple[np.ndarray, np.ndarray]:
    """Onset ticks -> (step, offset): the nearest step and the signed distance to it in 1/128 step.

    Ticks count musical time (tick / tpq quarter notes), so tempo changes move the grid with the
    music and an offset is a fraction of a step however fast it is played. The onset is first
    rounded to the 1/128-step sub-grid (U, half up, exact integer arithmetic); the step is U / 128
    rounded half to even, so offset = U - 128 * step lies in [-64, 64] and the same U always gives
    the same (step, offset): writing at 128 ticks per step reads back identically.
    """
    num = 2 * np.asarray(tick, np.int64) * steps_per_quarter * OFFSET_UNITS + tpq
    units = num // (2 * tpq)
    step = np.rint(units / OFFSET_UNITS).astype(np.int64)
    return step, (units - step * OFFSET_UNITS).astype(np.int8)


def read_midi(path: str | Path, drum_map: DrumMap, steps_per_quarter: int = 4,
              max_steps: int | None = None) -> MidiRoll:
    """Quantise the drum notes of a MIDI file onto a grid of `steps_per_quarter` steps per quarter note.

    Each onset becomes a step and an offset (`quantise`). Several notes of one class on one step make
    one hit with the largest velocity and that note's offset (the earliest of equally loud ones).
    Notes whose pitch is not in the map are counted per pitch in `unmapped`. The roll ends at the bar
    holding the last hit (whole bars, from the first time signature; 4/4 when the file has none).
    A roll longer than `max_steps` is refused before anything is allocated: a 37-byte file with one
    note at tick 2**28 would ask for gigabytes.
    """
    path = Path(path)
    onset, pitch, vel, timesigs, tempos, tpq = _drum_onsets(path)
    if not len(onset):
        raise MidiError(f"{path}: no drum notes (no notes on channel 10 / drum tracks)")
    cls = drum_map.lookup[pitch]
    mapped = cls >= 0
    notes_mapped, unmapped = int(np.count_nonzero(mapped)), {}
    if notes_mapped < len(cls):
        counts = np.bincount(pitch[~mapped], minlength=128)
        unmapped = {int(p): int(counts[p]) for p in np.flatnonzero(counts)}
        if not notes_mapped:
            raise MidiError(f"{path}: no drum notes in the mapping (unmapped pitches {unmapped})")
        onset, cls, vel = onset[mapped], cls[mapped], vel[mapped]

    num, den = min(timesigs)[1:] if timesigs else (4, 4)
    spb, rest = divmod(steps_per_quarter * 4 * num, den)
    if rest or spb <= 0:
        spb = steps_per_bar_for(num, den, steps_per_quarter, str(path))   # raises with the reason
    tempo = min(tempos)[1] if tempos else mido.bpm2tempo(120)
    if tempo <= 0:
        raise MidiError(f"{path}: tempo {tempo} microseconds per quarter (must be positive)")
    bpm = float(mido.tempo2bpm(tempo))

    step, off = quantise(onset, tpq, steps_per_quarter)
    num_steps = (int(step.max()) // spb + 1) * spb
    if max_steps is not None and num_steps > max_steps:
        raise MidiError(f"{path}: {num_steps} steps (last note at tick {int(onset.max())}), "
                        f"more than max_steps={max_steps} (ingest.max_steps)")
    D = drum_map.num_drums
    if len(onset) > 1 and (onset[1:] < onset[:-1]).any():   # several drum tracks: ticks in order first
        order = np.argsort(onset, kind="stable")
        step, cls, vel, off = step[order], cls[order], vel[order], off[order]
    # per (step, class): loudest first, then earliest (a stable sort of tick-ordered notes)
    v = np.clip(vel, 1, 127)
    cell = step * D + cls
    first = np.argsort(cell * 128 + (127 - v), kind="stable")
    cell, v, off = cell[first], v[first], off[first]
    keep = np.ones(len(cell), bool)
    keep[1:] = cell[1:] != cell[:-1]
    velocity = np.zeros((num_steps, D), np.uint8)
    offset = np.zeros((num_steps, D), np.int8)
    velocity.reshape(-1)[cell[keep]] = v[keep]
    offset.reshape(-1)[cell[keep]] = off[keep]
    return MidiRoll(hits=(velocity > 0).view(np.uint8), velocity=velocity, steps_per_bar=spb,
                    beats_per_bar=num, bpm=bpm, notes_mapped=notes_mapped, unmapped=unmapped,
                    offset=offset)


def _note_ticks(hits: np.ndarray, offset: np.ndarray | None, ticks_per_step: int):
    """(step, class, start, end) ticks of every hit: offsets (1/128 step) scaled to ticks and rounded.

    Offsets are clamped to what `quantise` reads back to the same step: [-64, 64] on even steps,
    [-63, 63] on odd ones (half a step rounds to the even step). A note never starts before tick 0;
    per class, starts strictly increase and a note ends at the next one of its class or after one
    step, so every note has a non-zero length.
    """
    steps, cls = np.nonzero(hits > 0)
    off = np.zeros(len(steps)) if offset is None else np.asarray(offset, np.float64)[steps, cls]
    half = np.where(steps % 2 == 0, OFFSET_UNITS // 2, OFFSET_UNITS // 2 - 1)
    off = np.clip(off, -half, half)
    start = np.maximum(steps * ticks_per_step + np.rint(off * ticks_per_step / OFFSET_UNITS), 0).astype(np.int64)
    order = np.lexsort((steps, cls))
    steps, cls, start = steps[order], cls[order], start[order]
    same = np.zeros(len(steps), bool)
    same[1:] = cls[1:] == cls[:-1]
    for i in np.flatnonzero(same[1:] & (start[1:] <= start[:-1])) + 1:  # only at < 128 ticks per step
        start[i] = start[i - 1] + 1
    end = start + ticks_per_step
    nxt = np.flatnonzero(same)
    end[nxt - 1] = np.minimum(end[nxt - 1], start[nxt])
    return steps, cls, start, end


def write_midi(path: str | Path, hits: np.ndarray, velocity: np.ndarray | None = None, *,
               drum_map: DrumMap, bpm: float = 120.0, steps_per_quarter: int = 4,
               beats_per_bar: int = 4, default_velocity: int = 100, beat_unit: int = 4,
               ticks_per_quarter: int | None = None, offset: np.ndarray | None = None) -> Path:
    """Write a roll as a one-track General MIDI drum file (channel 10), each class at its canonical pitch.

    The time signature is beats_per_bar/beat_unit (e.g. 6/8: beats_per_bar=6, beat_unit=8), so that
    read_midi gives back the same steps_per_bar.

    Each hit is a note of one step's length (shorter when the next note of its class comes sooner);
    `velocity` (0 where no hit) gives its loudness, else `default_velocity`; `offset` (int, 1/128
    step) moves it off the grid. The default `ticks_per_quarter` (128 * steps_per_quarter) makes
    every offset a whole tick, so read_midi gives back the same hits, velocities and offsets.
    The file is written atomically.
    """
    from common.atomic import atomic_path

    hits = np.asarray(hits)
    if hits.ndim != 2 or hits.shape[1] != drum_map.num_drums:
        raise ValueError(f"{path}: hits must be [T, {drum_map.num_drums}], got {hits.shape}")
    if offset is not None and np.shape(offset) != hits.shape:
        raise ValueError(f"{path}: offset must have the shape of hits {hits.shape}, got {np.shape(offset)}")
    vel = np.full(hits.shape, default_velocity) if velocity is None else np.asarray(velocity)
    vel = np.clip(np.where(vel > 0, vel, default_velocity), 1, 127).astype(np.int8)
    ticks_per_quarter = ticks_per_quarter or OFFSET_UNITS * steps_per_quarter
    ticks_per_step = ticks_per_quarter // steps_per_quarter
    if ticks_per_step * steps_per_quarter != ticks_per_quarter:
        raise ValueError(f"ticks_per_quarter {ticks_per_quarter} not divisible by {steps_per_quarter}")

    steps, cls, start, end = _note_ticks(hits, offset, ticks_per_step)
    pitches = np.asarray(drum_map.pitches)[cls]
    # (tick, order, message): at one tick, note-offs go before note-ons, so a class hit on two
    # consecutive steps closes its first note before the second starts.
    events = [(int(t), 1, mido.Message("note_on", channel=DRUM_CHANNEL, note=int(p), velocity=int(vel[s, c])))
              for s, c, p, t in zip(steps, cls, pitches, start)]
    events += [(int(t), 0, mido.Message("note_off", channel=DRUM_CHANNEL, note=int(p), velocity=0))
               for p, t in zip(pitches, end)]
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


# ---------------------------------------------------------------- ticks past 2^31
# How far a MIDI file's tracks reach in ticks, summed exactly, before a 32-bit reader wraps them.
#
# symusic keeps absolute ticks in 32-bit integers: a track whose delta times add up past 2**31 - 1
# wraps to negative ticks (or, past 2**32, back to small positive ones) and its notes land silently in
# the middle of the song. `longest_track_ticks` adds the deltas with Python integers; a numpy bound
# over the bytes skips that pass for any ordinary file (a delta of k bytes needs k - 1 bytes >= 0x80
# in a row before its last byte, so few such runs bound the sum).

TICK_LIMIT = 2 ** 31 - 1


def ticks_bound(data: bytes) -> int:
    """An upper bound of any track's summed delta times, from runs of bytes >= 0x80."""
    high = np.frombuffer(data, np.uint8) >= 0x80
    bound, run = 128 * (len(data) // 2 + 1), high
    for bits in (14, 21, 28, 35):        # deltas of 2, 3, 4 and (malformed) 5 or more bytes
        bound += int(np.count_nonzero(run)) << bits
        run = run[:-1] & high[len(high) - len(run) + 1:]
        if not run.any():
            break
    if run.any():                        # runs of 5+ high bytes: no bound, add exactly
        return 1 << 62
    return bound


def _vlq(body: bytes, pos: int) -> tuple[int, int]:
    value = 0
    while pos < len(body):
        b = body[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            break
    return value, pos


def _track_ticks(body: bytes) -> int:
    """The summed delta times of one track's events (running status, meta and sysex lengths)."""
    pos, total, status = 0, 0, 0
    while pos < len(body):
        delta, pos = _vlq(body, pos)
        total += delta
        if pos >= len(body):
            break
        if body[pos] >= 0x80:
            status, pos = body[pos], pos + 1
        if status == 0xFF:
            if pos >= len(body):
                break
            length, pos = _vlq(body, pos + 1)
            pos += length
        elif status in (0xF0, 0xF7):
            length, pos = _vlq(body, pos)
            pos += length
        elif status >= 0xF0:
            pos += {0xF2: 2, 0xF3: 1, 0xF1: 1}.get(status, 0)
        else:
            pos += 1 if status & 0xF0 in (0xC0, 0xD0) else 2
    return total


def longest_track_ticks(data: bytes) -> int:
    """The largest end tick of any MTrk chunk, exact (0 for a file of no tracks)."""
    if ticks_bound(data) <= TICK_LIMIT:
        return 0                         # cannot reach the limit: no need to add it up
    longest, pos = 0, 14
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "big")
        if kind == b"MTrk":
            longest = max(longest, _track_ticks(data[pos + 8:pos + 8 + size]))
        pos += 8 + size
    return longest
