"""How far a MIDI file's tracks reach in ticks, summed exactly, before a 32-bit reader wraps them.

symusic keeps absolute ticks in 32-bit integers: a track whose delta times add up past 2**31 - 1
wraps to negative ticks (or, past 2**32, back to small positive ones) and its notes land silently in
the middle of the song. `longest_track_ticks` adds the deltas with Python integers; a numpy bound
over the bytes skips that pass for any ordinary file (a delta of k bytes needs k - 1 bytes >= 0x80
in a row before its last byte, so few such runs bound the sum).
"""
from __future__ import annotations

import numpy as np

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
