"""The playing family: velocity and microtiming metrics of every window of a song (numba), from prefix sums.

Inputs per song: `hits` [T, D] (> 0 is a hit), `velocity` [T, D] (1..127 on hits) and `offset`
[T, D] (the hit's timing in 1/128 step, pipeline.midi.OFFSET_UNITS; x = offset / 128 steps,
negative = early). Time t is song-relative, so metrical positions follow the song's bar grid.
For a window [a, a + L):

    vel_mean[d]    mean velocity of drum d's hits                              (0 without hits)
    vel_std[d]     population standard deviation of those velocities           (0 without hits)
    accent[p]      mean velocity of all hits at bar position p = t mod steps_per_bar, p < width
                   (the accent profile; 0 where no hit, and past the song's bar)
    offset_mean[d] mean x of drum d's hits: > 0 laid back, < 0 pushed          (0 without hits)
    timing_spread  population standard deviation of x over all hits           (0 without hits)
    swing_8        (h + δ) / (h - δ), h = half a beat in steps, δ = mean x of hits on the off-beat
                   8th (position mod beat = h) minus mean x of hits on the beat (position mod beat
                   = 0), δ clipped to ±0.9 h. 1 = straight, 2 = triplet swing (δ = h / 3).
                   1 when a beat has an odd number of steps or either position has no hit.
    swing_16       the same one level down: h = a quarter beat, on = 8th positions, off = the 16ths
                   between them (needs beat mod 4 = 0).

The swing ratio is the long/short ratio of consecutive subdivisions (Friberg & Sundström 2002,
"Swing ratios and ensemble timing in jazz performance", Music Perception 19(3)); the per-drum
velocity and offset statistics are the expressive dimensions GrooVAE models (Gillick et al. 2019,
"Learning to Groove with Inverse Sequence Transformations", ICML). `kernels.reference` computes the
same one window at a time with numpy; docs/metrics.md has the formulas.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from kernels.schema import Family, Metric, SongWindows, outputs_type

METRICS = (
    Metric("vel_mean", "float32", ("drums",), "mean velocity of drum d's hits"),
    Metric("vel_std", "float32", ("drums",), "population standard deviation of those velocities"),
    Metric("accent", "float32", ("positions",), "mean velocity of all hits at bar position p"),
    Metric("offset_mean", "float32", ("drums",), "mean timing x of drum d's hits in steps (> 0 laid back)"),
    Metric("timing_spread", "float32", (), "population standard deviation of x over all hits"),
    Metric("swing_8", "float32", (), "8th-note swing ratio (h + delta) / (h - delta); 1 straight"),
    Metric("swing_16", "float32", (), "the same one level down, 16ths"),
)
PlayingOutputs = outputs_type("PlayingOutputs", METRICS, __name__)

OFFSET_UNITS = 128.0   # offset units per step (pipeline.midi.OFFSET_UNITS)
SWING_CLIP = 0.9       # |δ| <= 0.9 h keeps the ratio finite (at most 19)
_ON8, _OFF8, _ON16, _OFF16 = range(4)


@njit(cache=True, nogil=True)
def _category(pos, beat):
    """Swing categories of a bar position: bit k set = the position is category k."""
    c = 0
    if beat % 2 == 0:
        r = pos % beat
        c |= (1 << _ON8) if r == 0 else ((1 << _OFF8) if r == beat // 2 else 0)
    if beat % 4 == 0:
        r = pos % (beat // 2)
        c |= (1 << _ON16) if r == 0 else ((1 << _OFF16) if r == beat // 4 else 0)
    return c


@njit(cache=True, nogil=True)
def _prefix(hits, vel, off, steps_per_bar, beat):
    T, D = hits.shape
    n = np.zeros((T + 1, D), np.int64)        # hits per drum
    sv = np.zeros((T + 1, D), np.int64)       # sum of velocity
    sv2 = np.zeros((T + 1, D), np.int64)      # sum of velocity^2
    so = np.zeros((T + 1, D), np.int64)       # sum of offset
    so2 = np.zeros(T + 1, np.int64)           # sum of offset^2 over all drums
    sw_n = np.zeros((T + 1, 4), np.int64)     # hits per swing category
    sw_o = np.zeros((T + 1, 4), np.int64)     # their summed offsets
    acc_n = np.zeros(T, np.int64)             # Q[t] = this step's hits + Q[t - spb]: one bar
    acc_v = np.zeros(T, np.int64)             # position's running sum, read per window in O(1)
    for t in range(T):
        cat = _category(t % steps_per_bar, beat)
        step_n, step_v, step_o = 0, 0, 0
        so2[t + 1] = so2[t]
        for d in range(D):
            h = 1 if hits[t, d] else 0
            v, o = np.int64(vel[t, d]) * h, np.int64(off[t, d]) * h
            n[t + 1, d] = n[t, d] + h
            sv[t + 1, d] = sv[t, d] + v
            sv2[t + 1, d] = sv2[t, d] + v * v
            so[t + 1, d] = so[t, d] + o
            so2[t + 1] += o * o
            step_n += h
            step_v += v
            step_o += o
        for k in range(4):
            on = (cat >> k) & 1
            sw_n[t + 1, k] = sw_n[t, k] + on * step_n
            sw_o[t + 1, k] = sw_o[t, k] + on * step_o
        prev = t - steps_per_bar
        acc_n[t] = step_n + (acc_n[prev] if prev >= 0 else 0)
        acc_v[t] = step_v + (acc_v[prev] if prev >= 0 else 0)
    return n, sv, sv2, so, so2, sw_n, sw_o, acc_n, acc_v


@njit(cache=True, nogil=True)
def _swing(sw_n, sw_o, a, e, on, off, h):
    n_on, n_off = sw_n[e, on] - sw_n[a, on], sw_n[e, off] - sw_n[a, off]
    if h == 0 or n_on == 0 or n_off == 0:
        return 1.0
    delta = ((sw_o[e, off] - sw_o[a, off]) / n_off - (sw_o[e, on] - sw_o[a, on]) / n_on) / OFFSET_UNITS
    delta = min(max(delta, -SWING_CLIP * h), SWING_CLIP * h)
    return (h + delta) / (h - delta)


@njit(cache=True, nogil=True)
def _bar_position_sum(Q, a, e, p, steps_per_bar):
    """Sum over t in [a, e) with t mod steps_per_bar = p of the per-step values behind Q."""
    if e <= a:
        return 0
    last = e - 1 - ((e - 1 - p) % steps_per_bar)     # the last such t < e (may be < a)
    if last < a:
        return 0
    before = a - 1 - ((a - 1 - p) % steps_per_bar)   # the last such t < a (may be < 0)
    return Q[last] - (Q[before] if before >= 0 else 0)


@njit(cache=True, nogil=True)
def _run(hits, vel, off, starts, L, steps_per_bar, beat, out):
    D = hits.shape[1]
    n, sv, sv2, so, so2, sw_n, sw_o, acc_n, acc_v = _prefix(hits, vel, off, steps_per_bar, beat)
    width = out.accent.shape[1]
    for w in range(len(starts)):
        a = starts[w]
        e = a + L
        total, total_o = 0, 0
        for d in range(D):
            k = n[e, d] - n[a, d]
            total += k
            total_o += so[e, d] - so[a, d]
            if k > 0:
                s, s2 = sv[e, d] - sv[a, d], sv2[e, d] - sv2[a, d]
                out.vel_mean[w, d] = s / k
                out.vel_std[w, d] = np.sqrt(max(k * s2 - s * s, 0) / (k * k))    # exact integer numerator
                out.offset_mean[w, d] = (so[e, d] - so[a, d]) / k / OFFSET_UNITS
        if total > 0:
            s2 = so2[e] - so2[a]
            out.timing_spread[w] = np.sqrt(max(total * s2 - total_o * total_o, 0) / (total * total)) / OFFSET_UNITS
        for p in range(min(width, steps_per_bar)):
            k = _bar_position_sum(acc_n, a, e, p, steps_per_bar)
            if k > 0:
                out.accent[w, p] = _bar_position_sum(acc_v, a, e, p, steps_per_bar) / k
        out.swing_8[w] = _swing(sw_n, sw_o, a, e, _ON8, _OFF8, beat / 2 if beat % 2 == 0 else 0.0)
        out.swing_16[w] = _swing(sw_n, sw_o, a, e, _ON16, _OFF16, beat / 4 if beat % 4 == 0 else 0.0)


def fill(song: SongWindows, out: PlayingOutputs) -> None:
    _run(song.hits, song.velocity, song.offset, song.starts, song.L, song.steps_per_bar, song.beat, out)


FAMILY = Family("playing", "velocity and microtiming of the hits (the store's velocity and offset)", METRICS,
                ("hits", "velocity", "offset"), fill, PlayingOutputs)
