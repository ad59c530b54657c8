"""Generated vs real: windows generated from nothing against the split's real windows, compared per
kernel window metric by overlapping area and KL divergence (Yang & Lerch 2020).

Used by `python -m train.evaluate`, the decoding sweep and tune's generated objective.
"""
from __future__ import annotations

import inspect
import logging
import math

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.store import Store
from train.evaluate.scores import compare_sets
from train.evaluate.windows import Windows
from train.model import played_values, sample, torch_threads

log = logging.getLogger("train.evaluate.run")   # one logger name for every line evaluate logs


def metric_kwargs(cfg: DictConfig) -> dict:
    """The kernels' window_metrics options that conf/metrics sets (ngram_n, fast_threshold, …)."""
    from kernels import window_metrics

    params = inspect.signature(window_metrics).parameters
    metrics_cfg = cfg.get("metrics")
    metrics_cfg = (OmegaConf.to_container(metrics_cfg, resolve=True) if metrics_cfg is not None else None) or {}
    kw = {k: v for k, v in metrics_cfg.items() if k in params and k not in ("seq_len", "stride")}
    spb = int(cfg.window.steps_per_bar)
    kw["steps_per_bar"] = spb
    if "bars_per_phrase" in params:  # the structure metrics' phrase (fill placement)
        kw["bars_per_phrase"] = int(cfg.window.bars_per_phrase)
    if "num_bars" in params:  # fixes bar_hits' width, so a short real window stacks with the rest
        kw["num_bars"] = int(cfg.window.seq_len) // spb
    return kw


def window_metric_sets(rolls: list[np.ndarray], seq_len: int, kw: dict,
                       played: list | None = None) -> dict[str, np.ndarray]:
    """Kernel window metrics of each roll as one window ([N, ...] per metric); with `played`
    ((velocity, offset) per roll), the velocity and timing metrics too."""
    from kernels import expressive_metrics, window_metrics

    per_metric: dict[str, list] = {}
    for j, roll in enumerate(rolls):
        if len(roll) == 0:
            continue
        m = window_metrics(np.ascontiguousarray(roll, dtype=np.uint8), seq_len=min(seq_len, len(roll)),
                           stride=max(len(roll), 1), **kw)
        if played is not None:
            spb = kw["steps_per_bar"]
            m.update(expressive_metrics(roll, *played[j], seq_len=min(seq_len, len(roll)), stride=max(len(roll), 1),
                                        steps_per_bar=spb, beats_per_bar=kw.get("beats_per_bar", 4), positions=spb))
        for name, value in m.items():
            value = np.asarray(value)
            if value.dtype.kind in "biuf" and len(value):
                per_metric.setdefault(name, []).append(value[0])
    return {name: np.stack(v) for name, v in per_metric.items()}


def generated_vs_real(cfg: DictConfig, model, windows: Windows, num_drums: int,
                      store: Store | None = None, played_out: list | None = None) -> tuple[dict, dict, dict, np.ndarray]:
    """(comparison per metric, real metric sets, generated metric sets, generated rolls).

    With `store`, the velocity and timing metrics join the table: real windows with the store's
    velocities and offsets; generated parts with the velocity and timing the model's expressive
    heads give them (at velocity 100 on the grid for a model without heads, as generate writes)."""
    gcfg = cfg.evaluate.generated
    seq_len = int(cfg.window.seq_len)
    real_rolls, real_songs, real_starts = comparison_windows(cfg, windows)
    split_steps = sum(len(r) for r in real_rolls)
    num = max(2, min(int(gcfg.max_samples), math.ceil(split_steps / seq_len)))
    log.info("evaluate: generating %d windows of %d steps", num, seq_len)
    expressive = store is not None and bool(model.config.get("expressive", False))
    with torch_threads(int(gcfg.get("num_threads", 1))):   # one thread: see generate.num_threads
        gen = sample(model, num, seq_len, num_drums=num_drums, temperature=float(gcfg.temperature),
                     top_p=gcfg.top_p, top_k=gcfg.get("top_k"), seed=int(gcfg.seed), expressive=expressive,
                     expressive_temperature=float(gcfg.get("expressive_temperature", 1.0)))
    gen, *heads = gen if expressive else (gen, None, None)
    log.info("evaluate: window metrics of %d real and %d generated windows; OA and KL", len(real_rolls), num)
    kw = metric_kwargs(cfg)
    real_played = gen_played = None
    if store is not None:
        real_played = [tuple(store.rows(a, int(s), st, len(r)) for a in ("velocity", "offset"))
                       for r, s, st in zip(real_rolls, real_songs, real_starts)]
        gen_played = [played_values(g, heads[0][i] if expressive else None, heads[1][i] if expressive else None,
                                    0, 100) for i, g in enumerate(gen)]
    if played_out is not None:     # the judge's texture classifier hears velocities and timing too
        played_out += [real_played, gen_played]
    real = window_metric_sets(real_rolls, seq_len, kw, real_played)
    generated = window_metric_sets(list(gen), seq_len, kw, gen_played)
    boot = cfg.evaluate.get("bootstrap") or {}     # tune's objective asks for no intervals
    comparison = compare_sets(real, generated, max_samples=int(gcfg.max_set_size), groups=real_songs,
                              samples=int(gcfg.get("bootstrap_samples", 0)), level=float(boot.get("level", 0.95)),
                              seed=int(boot.get("seed", 0)))
    return comparison, real, generated, gen


def comparison_windows(cfg: DictConfig, windows: Windows) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The real windows generated ones are compared with (and drawn beside): `real_windows` of the
    model's bar and at least `evaluate.generated.real_min_steps` steps."""
    return real_windows(windows, int(cfg.evaluate.generated.get("real_min_steps") or 0),
                        int(cfg.window.steps_per_bar))


def real_windows(windows: Windows, min_steps: int = 0, steps_per_bar: int | None = None
                 ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The split's songs laid end to end in seq_len windows (starts 0, seq_len, …; no tail windows,
    which overlap), each trimmed to its real steps; and the song and start of each. With
    `steps_per_bar`, only songs of that bar length (the meter the model generates in, whose bar
    the metrics are computed on), unless the split has none.

    Windows of fewer than `min_steps` real steps are left out: a one-bar Groove fill (76 of the 122
    validation songs are fills of ~21 steps) has no bar-to-bar similarity and few hits, so beside
    16-bar generated windows it compares lengths, not grooves. When fewer than two windows are that
    long (tiny data), all are kept and a warning says so."""
    L = windows.seq_len
    keep = (windows.start % L == 0) & windows.mask.any(1)
    if steps_per_bar is not None and (keep & (windows.steps_per_bar == steps_per_bar)).any():
        keep &= windows.steps_per_bar == steps_per_bar
    long_enough = keep & (windows.mask.sum(1) >= min_steps)
    if min_steps > 0 and long_enough.sum() < 2 <= keep.sum():
        log.warning("evaluate: fewer than 2 real windows of %d steps; comparing all %d", min_steps, int(keep.sum()))
    elif min_steps > 0:
        log.info("evaluate: %d of %d real windows have at least %d steps (the rest: short songs and song ends)",
                 int(long_enough.sum()), int(keep.sum()), min_steps)
        keep = long_enough
    return ([w[m] for w, m in zip(windows.steps[keep], windows.mask[keep])], windows.song[keep],
            windows.start[keep])


def guided_sets(cfg: DictConfig, model, ready, real_songs: np.ndarray, num_drums: int) -> tuple[dict, dict]:
    """A style-conditioned model's guided samples, for the judge's tables beside the unconditional
    ones: for each style of the real windows (`real_songs`' top-level style in the export `ready`),
    as many windows guided towards it as the real set has of it (at most
    `evaluate.judge.guided.per_style`), so the guided set has the real set's style mix; decoding as
    `evaluate.generated`. Returns ({name: (rolls, (velocity, offset) per roll, metric sets)},
    {style: windows}); ({}, {}) for a model not conditioned on style or with `guided.enabled` false."""
    from train.model import conditioning as C
    from train.model import guidance_of

    g, gcfg = cfg.evaluate.judge.get("guided") or {}, cfg.evaluate.generated
    vocab = model.config.get("conditioning") or {}
    if not g.get("enabled", False) or "style" not in vocab or not len(real_songs):
        return {}, {}
    styles, counts = np.unique(C.song_values(C.read_song_labels(ready), "style", ())[real_songs], return_counts=True)
    unknown = [s for s in styles.tolist() if s not in vocab["style"]]
    if unknown:   # a style the model never saw cannot be asked for
        log.warning("evaluate.judge.guided: no guided windows for the real windows' styles %s (not in the model's "
                    "vocabulary)", unknown)
    seq_len, expressive = int(cfg.window.seq_len), bool(model.config.get("expressive", False))
    rolls, played, per_style = [], [], {}
    for k, (style, n) in enumerate(zip(styles.tolist(), counts.tolist())):
        if style in unknown:
            continue
        n = min(int(n), int(g.per_style))
        cond = C.request_ids(vocab, model.config.get("bpm_buckets", ()), {"style": style})
        log.info("evaluate.judge: generating %d windows guided towards style %s", n, style)
        with torch_threads(int(gcfg.get("num_threads", 1))):
            out = sample(model, n, seq_len, num_drums=num_drums, temperature=float(gcfg.temperature),
                         top_p=gcfg.top_p, top_k=gcfg.get("top_k"), seed=int(gcfg.seed) + 1000 * (k + 1),
                         expressive=expressive, expressive_temperature=float(gcfg.get("expressive_temperature", 1.0)),
                         cond=cond, guidance=guidance_of(g, cond))
        hits, *heads = out if expressive else (out, None, None)
        rolls += list(hits)
        played += [played_values(h, heads[0][i] if expressive else None, heads[1][i] if expressive else None, 0, 100)
                   for i, h in enumerate(hits)]
        per_style[style] = n
    if not rolls:
        return {}, per_style
    sets = window_metric_sets(rolls, seq_len, metric_kwargs(cfg), played)
    return {f"guided (style, g={float(g.guidance):g})": (rolls, played, sets)}, per_style
