"""What the levels read besides the step input: bars and phrases pooled on the song's grid, and the
Lookback RNN input (hits one or more bars ago). Shapes as in train/model/model.py."""
from __future__ import annotations

import torch
from torch import Tensor


def pool_phrases(bars: Tensor, offset: Tensor, bars_per_phrase: int) -> Tensor:
    """Phrase inputs [B, P, F]: the mean of `bars` [B, nb, F] over each phrase slot of the grid
    that puts offset[b] bars of the first phrase before the window (window bar k is slot bar
    k + offset). Slot 0 is a partial phrase when offset > 0 (its bars in the window only); a slot
    past the window's end is partial too and is never read before it completes (causality).
    P = (nb + max offset) // bpp; with offset 0, the nb // bpp complete phrases."""
    B, nb, F = bars.shape
    P = (nb + int(offset.max())) // bars_per_phrase if B else 0
    if P == 0:
        return bars.new_zeros(B, 0, F)
    k = torch.arange(P * bars_per_phrase, device=bars.device)[None] - offset[:, None]   # [B, P·bpp]
    valid = (k >= 0) & (k < nb)
    picked = bars.gather(1, k.clamp(0, nb - 1)[..., None].expand(-1, -1, F)) * valid[..., None]
    count = valid.reshape(B, P, bars_per_phrase).sum(2, keepdim=True).clamp(min=1)
    return picked.reshape(B, P, bars_per_phrase, F).sum(2) / count


def pool_bars(x: Tensor, lead: Tensor, steps_per_bar: int) -> Tensor:
    """Bar inputs [B, nb, F]: the mean of `x` [B, L, F] over each bar of the song's grid, lead[b]
    steps of the first bar lying before the window (slot 0 is then a partial bar, pooled over its
    steps in the window; `pool_phrases` one level down). With lead 0 everywhere, the L // spb
    complete bars of the window, as one reshape."""
    B, L, F = x.shape
    if not bool(lead.any()):
        nb = L // steps_per_bar
        return x[:, :nb * steps_per_bar].reshape(B, nb, steps_per_bar, F).mean(2)
    return pool_phrases(x, lead, steps_per_bar)


# --------------------------------------------------------------------------- lookback input
def lookback_features(step: Tensor, steps_per_bar: int, bars: int) -> Tensor:
    """Lookback RNN input (Waite et al., 2016) for every step t of `step` [B, L, D]:
    for k = 1..bars, the hits of the step being predicted k bars ago, step[t+1−k·spb], and a flag
    rep_k[t] = 1 if step[t] equals step[t−k·spb] (the step just read repeats k bars ago).
    Steps before the sequence's start are zeros (flag 0). Returns [B, L, bars·(D+1)]."""
    B, L, D = step.shape
    span = bars * steps_per_bar
    padded = torch.cat([step.new_zeros(B, span, D), step], 1)       # padded[:, span + j] = step[:, j]
    t = torch.arange(L, device=step.device)
    feats = []
    for k in range(1, bars + 1):
        ago = span - k * steps_per_bar
        feats.append(padded[:, ago + 1:ago + 1 + L])                   # step[t+1−k·spb]
        same = (step == padded[:, ago:ago + L]).all(-1) & (t >= k * steps_per_bar)
        feats.append(same.to(step.dtype)[..., None])                   # step[t] == step[t−k·spb]
    return torch.cat(feats, -1)
