"""Teacher-forced next-step scores of the model and of every baseline on the split's scored steps.

Per song (train.evaluate.scores.SongScores), so the split's subsets and bootstrap intervals over
songs come from the same counts; each row's onset threshold is chosen on the validation split and
the n-gram's n and alpha ("auto") by validation NLL. `run.evaluate` calls these in order.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.store import Store
from train.evaluate.baselines import NGramBaseline, make_baselines, select_ngram
from train.evaluate.scores import SongScores
from train.evaluate.windows import Windows

log = logging.getLogger("train.evaluate.run")   # one logger name for every line evaluate logs


MODEL_ROW = "model"


@torch.no_grad()
def model_probs(model, steps: np.ndarray, mask: np.ndarray, start: np.ndarray,
                targets: np.ndarray | None = None, steps_per_bar: np.ndarray | None = None,
                cond: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(per-drum probabilities [B, L, D] float64, probs[:, t] the prediction for step t+1;
    log2 p of each next step's whole drum vector: [B, L] against `targets` [B, L, D] (targets[:, t]
    = step t+1, the step after the window included), else [B, L−1] inside the window): the model's
    own whole-vector NLL, right for joint and autoregressive output heads too. `steps_per_bar` [B]:
    each window's bar length (None: the model's); the model runs once per meter in the batch.
    `cond` [B, C]: a conditioned model's condition ids of each window's song (None: unconditional)."""
    x = torch.as_tensor(steps, dtype=torch.float32)
    if steps_per_bar is None or len(np.unique(steps_per_bar)) <= 1:
        spb = None if steps_per_bar is None or not len(steps_per_bar) else int(steps_per_bar[0])
        return _model_probs(model, x, mask, start, targets, spb, cond)
    probs, log2p = None, None
    for spb in np.unique(steps_per_bar):
        rows = np.flatnonzero(steps_per_bar == spb)
        p, lp = _model_probs(model, x[rows], mask[rows], start[rows], None if targets is None else targets[rows],
                             int(spb), None if cond is None else cond[rows])
        if probs is None:
            probs, log2p = np.empty((len(x), *p.shape[1:])), np.empty((len(x), *lp.shape[1:]))
        probs[rows], log2p[rows] = p, lp
    return probs, log2p


def _model_probs(model, x, mask, start, targets, steps_per_bar=None, cond=None):
    logits = model(x, mask=torch.as_tensor(mask), start=torch.as_tensor(start), steps_per_bar=steps_per_bar,
                   cond=None if cond is None else torch.as_tensor(cond))[0].double()
    if targets is None:
        log2p = model.step_log_prob(x.double(), step_logits=logits)
    else:
        log2p = model.head.log_prob(logits, torch.as_tensor(targets, dtype=torch.float64)) / math.log(2.0)
    return model.step_marginals(logits).numpy(), log2p.numpy()


def song_conditions(model, ready: Path):
    """song ids [B] -> the conditioned model's condition ids [B, C] of those songs (their labels in
    the export, as training read them), or -> None for an unconditioned model: a conditioned model
    is scored given what it was trained to be given, p(steps | style, ...)."""
    vocab = model.config.get("conditioning") or {}
    if not vocab:
        return lambda song: None
    from train.model.conditioning import read_song_labels, song_ids
    table = song_ids(vocab, read_song_labels(ready), tuple(model.config.get("bpm_buckets", ())))
    return lambda song: table[np.asarray(song)]


def score_windows(predict, windows: Windows, num_drums: int, batch_size: int) -> SongScores:
    """`predict(steps, mask, start, steps_per_bar, targets, song)` -> probs, or (probs, log2 p of
    each target step's whole drum vector), scored per song on the windows' scored steps."""
    acc = SongScores(num_drums)
    for steps, mask, start, spb, targets, scored, song in windows.batches(batch_size):
        out = predict(steps, mask, start, spb, targets, song)
        probs, log2p = out if isinstance(out, tuple) else (out, None)
        acc.update(probs, targets, scored, song, log2p)
    return acc


def tune_ngram(b: DictConfig, train_songs: list[np.ndarray], validation: Windows, num_drums: int,
               batch_size: int) -> tuple[NGramBaseline, list[dict]]:
    """Pick the n-gram's n and/or alpha ("auto") by NLL on the choosing split (tune), as thresholds are."""
    ns = list(range(2, int(b.ngram_max_n) + 1)) if b.ngram_n == "auto" else [int(b.ngram_n)]
    alphas = list(b.ngram_alphas) if b.ngram_alpha == "auto" else [float(b.ngram_alpha)]

    def nll(model: NGramBaseline) -> float:
        acc = score_windows(lambda s, m, a, spb, y, song: model.predict(s, m), validation, num_drums, batch_size).total()
        log.info("evaluate: n-gram n=%d alpha=%g: %.4f bits/step on validation", model.n, model.alpha,
                 acc.nll_bits / acc.steps)
        return acc.nll_bits / acc.steps

    return select_ngram(train_songs, nll, ns, alphas, float(b.eps))


def fit_baselines(cfg: DictConfig, train_songs, train_bars, validation: Windows, num_drums: int) -> tuple[dict, list]:
    """Every baseline fitted on the train songs (the n-gram's n and alpha chosen on validation)."""
    b, spb = cfg.evaluate.baselines, int(cfg.window.steps_per_bar)
    fixed_n = 4 if b.ngram_n == "auto" else int(b.ngram_n)
    fixed_alpha = 1.0 if b.ngram_alpha == "auto" else float(b.ngram_alpha)
    baselines, ngram_grid = {}, []
    for base in make_baselines(spb, fixed_n, fixed_alpha, float(b.eps), bool(b.repeat_calibrated),
                               tuple(b.position_lags)):
        log.info("evaluate: fitting baseline %s", base.name)
        if isinstance(base, NGramBaseline) and "auto" in (b.ngram_n, b.ngram_alpha):
            base, ngram_grid = tune_ngram(b, train_songs, validation, num_drums, int(cfg.evaluate.batch_size))
        else:
            base.fit(train_songs, train_bars)
        baselines[base.name] = base
    return baselines, ngram_grid


def song_subsets(store: Store, songs: np.ndarray, keys) -> dict[str, np.ndarray]:
    """`key=value` -> song ids, for each metadata key whose scored songs take 2 or more values
    (Groove: beat_type beat/fill, style funk/jazz/…; a style's sub-style after '/' is pooled)."""
    out = {}
    for key in keys:
        if key not in store.meta:
            raise KeyError(f"evaluate.subsets: {key!r} is not a song field of {store.path} "
                           f"(fields: {sorted(store.meta)})")
        values = np.array([str(v).split("/")[0] for v in store.meta[key][songs]])
        kinds = sorted(set(values) - {""})
        if len(kinds) >= 2:
            out.update({f"{key}={v}": songs[values == v] for v in kinds})
    return out


def scores_with_intervals(per_song: SongScores, tau: float, names: list[str], songs, boot: DictConfig) -> dict:
    r = per_song.total(songs).result(tau, names)
    r["ci95"] = per_song.bootstrap(tau, songs, int(boot.samples), float(boot.level), int(boot.seed))
    return r
