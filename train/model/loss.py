"""The training loss: the step, bar and phrase levels' next-item terms (`compute_loss`); the
expressive heads add theirs (train/model/expressive.py)."""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from train.model.heads import IndependentHead, StepHead

DEFAULT_LOSS_WEIGHTS = {"step": 1.0, "bar": 0.5, "phrase": 0.25}
LEVEL_LOSSES = ("mse", "bce")


def _level_targets(step: Tensor, mask: Tensor | None, size: int, count: int) -> tuple[Tensor, Tensor]:
    """Mean hit pattern [B, count, D] of consecutive groups of `size` steps, and [B, count] bool:
    True where the group is all real steps (padding is a tail, so its last step decides)."""
    B, L, D = step.shape
    hits = (step[:, :count * size] > 0).to(step.dtype)
    means = hits.reshape(B, count, size, D).mean(2)
    if mask is None:
        return means, torch.ones(B, count, dtype=torch.bool, device=step.device)
    return means, mask[:, size - 1:count * size:size].bool()


def _grid_targets(step: Tensor, mask: Tensor | None, span: int, count: int,
                  lead: Tensor | None) -> tuple[Tensor, Tensor]:
    """`_level_targets` of slots of `span` steps on the grid shifted by `lead` [B] steps (None: 0):
    slot j holds window steps from j·span − lead; it counts only when wholly inside the window and
    real."""
    B, L, D = step.shape
    if lead is None or not bool(lead.any()):
        return _level_targets(step, mask, span, count)
    first = torch.arange(count, device=step.device)[None] * span - lead[:, None]            # [B, count]
    idx = (first[..., None] + torch.arange(span, device=step.device)).clamp(0, L - 1)       # [B, count, span]
    hits = (step > 0).to(step.dtype).gather(1, idx.reshape(B, -1)[..., None].expand(-1, -1, D))
    means = hits.reshape(B, count, span, D).mean(2)
    real = (first >= 0) & (first + span <= L)
    if mask is not None:
        real = real & mask.bool().gather(1, (first + span - 1).clamp(0, L - 1))
    return means, real


def _masked_mean(per_item: Tensor, valid: Tensor) -> Tensor:
    valid = valid.to(per_item.dtype)
    return (per_item * valid).sum() / valid.sum().clamp(min=1)


def compute_loss(preds, batch: Mapping[str, Tensor], weights: Mapping[str, float] | None = None,
                 *, level_loss: str = "mse", steps_per_bar: int = 16, bars_per_phrase: int = 4,
                 head: StepHead | None = None, phrase_offset: Tensor | None = None,
                 bar_lead: Tensor | None = None):
    """Weighted sum of the three levels' next-item losses; returns (total, {"step", "bar", "phrase"}).

    preds = (step_logits [B, L, P], bar_preds [B, nb, D] | None, phrase_preds [B, nph, D] | None),
    batch = {"step" [B, L, D], "mask" [B, L] (optional)}; hits y = step > 0, m = mask; `head`
    (heads.py; None = independent Bernoullis, step_logits [B, L, D]) gives p(y | step_logits).

    step   = −Σ_{b, t<L−1} m[b,t+1] · log2 p(y[b,t+1] | step_logits[b,t]) / Σ m[b,t+1]
             (NLL of the whole drum vector in bits per step, the same for every output head;
             for independent logits it is Σ_d BCE_d / ln 2)
    bar    = mean over real bars k ≥ 1 of ℓ(bar_preds[b,k−1], ȳ_k),  ȳ_k = mean of y over bar k
    phrase = the same over phrases (steps_per_bar · bars_per_phrase steps each); with
             `phrase_offset` [B] (song_phrases) phrase slot j covers window steps
             [(j·bpp − offset)·spb, (j+1)·bpp − offset)·spb), as the model pools them;
             `bar_lead` [B] (windows starting mid-bar: start mod spb) shifts the bar and phrase
             slots back by that many steps, the song's grid the model pools
    ℓ = mean_d (σ(p) − ȳ)² for level_loss="mse" (reaches 0), or BCE-with-logits against the
    soft target ȳ for "bce" (floored at the entropy of ȳ). A level counts only when every step of
    its target bar/phrase is real. total = Σ_k weights[k] · term_k; a zero weight disables a term
    (0 · term: no gradient, yet every parameter stays in the graph for DDP); every term is still
    reported (0 for a flat model, whose bar/phrase preds are None). Missing keys of `weights`
    take DEFAULT_LOSS_WEIGHTS.
    """
    if level_loss not in LEVEL_LOSSES:
        raise ValueError(f"level_loss must be one of {LEVEL_LOSSES}, got {level_loss!r}")
    weights = {**DEFAULT_LOSS_WEIGHTS, **dict(weights or {})}
    step_logits, bar_preds, phrase_preds = preds
    step, mask = batch["step"], batch.get("mask")
    head = IndependentHead(step.shape[-1]) if head is None else head
    nll = -head.log_prob(step_logits[:, :-1], step[:, 1:]) / math.log(2.0)      # bits [B, L−1]
    valid = mask[:, 1:] if mask is not None else torch.ones_like(nll, dtype=torch.bool)
    terms = {"step": _masked_mean(nll, valid)}

    for name, preds_k, size in (("bar", bar_preds, steps_per_bar),
                                ("phrase", phrase_preds, steps_per_bar * bars_per_phrase)):
        if preds_k is None:
            terms[name] = step_logits.new_zeros(())
            continue
        if preds_k.shape[1] < 2:                       # no next bar/phrase to predict
            terms[name] = preds_k.sum() * 0.0          # still in the graph (see below)
            continue
        lead = bar_lead
        if name == "phrase" and phrase_offset is not None:
            lead = phrase_offset * steps_per_bar + (0 if bar_lead is None else bar_lead)
        means, real = _grid_targets(step, mask, size, preds_k.shape[1], lead)
        pred, want = preds_k[:, :-1], means[:, 1:].to(preds_k.dtype)
        if level_loss == "mse":
            per = (torch.sigmoid(pred) - want).pow(2).mean(-1)
        else:
            per = F.binary_cross_entropy_with_logits(pred, want, reduction="none").mean(-1)
        terms[name] = _masked_mean(per, real[:, 1:])

    # a zero weight contributes 0·term: no gradient, but every head stays in the autograd graph,
    # so DistributedDataParallel needs no find_unused_parameters
    total = sum(float(weights[k]) * terms[k] for k in ("step", "bar", "phrase"))
    return total, {k: v.detach() for k, v in terms.items()}
