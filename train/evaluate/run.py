"""`python -m train.evaluate checkpoint=… split=validation`: held-out scores, baselines, generated vs real.

1. Windows of the split, read from the export (`paths.ready`) through the training dataset
   (train.evaluate.windows): the songs the dataset reads for the split (every meter, each window
   on its song's bar; the report counts the songs per meter), cut by `kernels.spec.scoring_windows` at
   `evaluate.stride` (default seq_len) so that every predictable step (1 .. T-1 of each song) is
   scored exactly once: each window also predicts the step after it, and a song's last window
   ends at the song's end, its already-scored steps masked.
2. Teacher-forced scores (train.evaluate.scores) of the model and of every baseline
   (train.evaluate.baselines, fitted on the train split) on exactly those steps, per song, so the
   split's subsets (`evaluate.subsets`: beat vs fill, style) and bootstrap 95% intervals over songs
   come from the same counts; each row's onset threshold is chosen on the validation split.
3. Generated vs real: as many seq_len windows as the split holds (up to
   evaluate.generated.max_samples) are generated from nothing; the kernels' window metrics of both
   sets are compared per metric by overlapping area and KL divergence (Yang & Lerch 2020).
4. Out: `metrics.json` (DVC metrics), `plots/*.png` (DVC plots) and `report.md` embedding them.
Config: `conf/evaluate.yaml` (its own config_name, including the root config).
"""
from __future__ import annotations

import inspect
import json
import logging
import math
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import common.config
from common.atomic import atomic_path
from common.lock import LockHeld, report_dir_lock
from pipeline.store import Store
from train.evaluate.baselines import NGramBaseline, make_baselines, select_ngram
from train.evaluate.scores import SongScores, compare_sets
from train.evaluate.windows import Windows, songs_by_meter, split_song_ids, split_songs, split_windows
from train.generate.run import played_values, sample, torch_threads
from train.training.checkpoint import load_for_inference, train_hint
from train.training.data import resolve_ready_dir
from common.config import ConfigError

log = logging.getLogger(__name__)

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
    from train.training.conditioning import read_song_labels, song_ids
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
    """Pick the n-gram's n and/or alpha ("auto") by NLL on the validation split, as thresholds are."""
    ns = list(range(2, int(b.ngram_max_n) + 1)) if b.ngram_n == "auto" else [int(b.ngram_n)]
    alphas = list(b.ngram_alphas) if b.ngram_alpha == "auto" else [float(b.ngram_alpha)]

    def nll(model: NGramBaseline) -> float:
        acc = score_windows(lambda s, m, a, spb, y, song: model.predict(s, m), validation, num_drums, batch_size).total()
        log.info("evaluate: n-gram n=%d alpha=%g: %.4f bits/step on validation", model.n, model.alpha,
                 acc.nll_bits / acc.steps)
        return acc.nll_bits / acc.steps

    return select_ngram(train_songs, nll, ns, alphas, float(b.eps))


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
                      store: Store | None = None) -> tuple[dict, dict, dict, np.ndarray]:
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


def load_inputs(cfg: DictConfig):
    """(model, checkpoint, its path, ready dir, store (metadata), names) with their consistency checked."""
    model, ckpt, ckpt_path = load_for_inference(cfg.checkpoint, train_hint(cfg))
    for key in ("steps_per_bar", "bars_per_phrase"):   # score on the grid the model was trained on
        if key in model.config and int(model.config[key]) != int(cfg.window[key]):
            raise ValueError(f"{ckpt_path}: trained with {key}={model.config[key]}, but window.{key}="
                             f"{cfg.window[key]}; evaluate with window.{key}={model.config[key]}")
    ready = resolve_ready_dir(cfg.paths.ready)
    manifest = json.loads((ready / "manifest.json").read_text())
    store = Store(cfg.paths.store)
    if store.hash != manifest.get("store_hash"):
        raise ValueError(f"{ready}: exported from another store than {store.path} (hash "
                         f"{manifest.get('store_hash')!r} vs {store.hash!r}); rerun the export")
    names = list(manifest["drum_names"])
    if [str(n) for n in ckpt["drum_names"]] != names:
        raise ValueError(f"{ckpt_path}: trained on drums {list(ckpt['drum_names'])}, but {ready} holds {names}")
    return model, ckpt_path, ready, store, names


def evaluate(cfg: DictConfig) -> dict:
    """Score everything, write metrics.json, plots and report.md; return the metrics dict."""
    from train.evaluate.plots import save_paired_histograms, save_score_bars, save_sheet, save_side_by_side

    ecfg = cfg.evaluate
    seq_len, spb, bpp = int(cfg.window.seq_len), int(cfg.window.steps_per_bar), int(cfg.window.bars_per_phrase)
    if int(ecfg.stride) % spb:
        raise ConfigError(f"evaluate.stride={ecfg.stride} is not a whole number of bars of window.steps_per_bar="
                          f"{spb}: scored windows must start on bar lines, as the training windows do")
    model, ckpt_path, ready, store, names = load_inputs(cfg)
    D, batch = len(names), int(ecfg.batch_size)
    windows = split_windows(ready, cfg.split, seq_len, int(ecfg.stride), spb, bpp)
    # The reference export's train split fits the baselines and its validation split picks thresholds:
    # the scored data's own by default, the training data's when scoring data built elsewhere.
    ref = resolve_ready_dir(ecfg.reference_store or ready)
    same = ref.resolve() == ready.resolve()
    if not same and json.loads((ref / "manifest.json").read_text())["drum_names"] != names:
        raise ValueError(f"{ref} holds other drums than {ready} ({names})")
    validation = windows if same and cfg.split == "validation" else split_windows(
        ref, "validation", seq_len, int(ecfg.stride), spb, bpp)
    train_songs, train_bars = split_songs(ref, "train", spb, seq_len, bpp)
    if not train_songs:
        raise ValueError(f"{ref}: no song in the train split to fit the baselines on")
    baselines, ngram_grid = fit_baselines(cfg, train_songs, train_bars, validation, D)
    def model_row(cond_fn):
        return lambda s, m, a, bars, y, song: model_probs(model, s, m, a, y, bars, cond_fn(song))
    cond_of = song_conditions(model, ready)
    # the reference export's own labels for its validation windows (its song ids)
    val_predict = model_row(cond_of if same else song_conditions(model, ref))
    predictors = {MODEL_ROW: model_row(cond_of)}
    for name, base in baselines.items():
        predictors[name] = lambda s, m, a, bars, y, song, base=base: base.predict(s, m, bars, a)

    songs = np.unique(windows.song)
    meters = songs_by_meter(store.meta, songs, int(store.attrs.get("steps_per_quarter", 4)))
    subsets = song_subsets(store, songs, list(ecfg.subsets))
    if len(meters) >= 2:     # each meter's songs scored on their own too
        subsets.update({f"meter={name}": ids for name, ids in meters.items()})
    scores, subset_scores = {}, {k: {"songs": int(len(v)), "scores": {}} for k, v in subsets.items()}
    for name, predict in predictors.items():
        log.info("evaluate: scoring %s on %d windows of %s", name, len(windows), cfg.split)
        per_song = score_windows(predict, windows, D, batch)
        val = per_song if validation is windows else score_windows(
            val_predict if name == MODEL_ROW else predict, validation, D, batch)
        tau = val.total().best_threshold()
        scores[name] = scores_with_intervals(per_song, tau, names, None, ecfg.bootstrap)
        for key, ids in subsets.items():
            r = scores_with_intervals(per_song, tau, names, ids, ecfg.bootstrap)
            subset_scores[key]["scores"][name] = {k: r[k] for k in ("nll_bits_per_step", "f1", "scored_steps", "ci95")}
    scores["ngram"].update({"n": baselines["ngram"].n, "alpha": baselines["ngram"].alpha})
    lengths = np.diff(np.load(ready / "song_offsets.npy"))[songs]

    out_dir = Path(ecfg.out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    pictures = {"scores": save_score_bars(plots / "scores.png", scores)}
    result = {
        "checkpoint": str(ckpt_path), "split": cfg.split, "ready": str(ready), "store": str(store.path),
        "reference": str(ref), "windows": len(windows), "seq_len": seq_len, "stride": int(ecfg.stride),
        "steps_per_bar": spb, "songs": int(len(songs)),
        "predictable_steps": int(np.maximum(lengths - 1, 0).sum()),
        "meters": {name: int(len(ids)) for name, ids in meters.items()},
        "bootstrap": OmegaConf.to_container(ecfg.bootstrap, resolve=True),
        "scores": scores, "subsets": subset_scores,
        "ngram_selection": ngram_grid,
        "model_beats_baselines_nll": all(scores[MODEL_ROW]["nll_bits_per_step"] < s["nll_bits_per_step"]
                                         for n, s in scores.items() if n != MODEL_ROW),
    }
    if model.config.get("expressive"):
        from pipeline.ready_paths import recorded
        from train.evaluate.expressive import expressive_scores
        # the baseline's means come from the reference export's train songs (those the dataset reads)
        ref_store = store if same else Store(recorded(ref, json.loads((ref / "manifest.json").read_text()), "store"))
        train_ids = split_song_ids(ref, "train", spb, seq_len, bpp)
        result["expressive"] = expressive_scores(model, store, windows, ref_store, train_ids, spb, int(ecfg.batch_size),
                                                 cond_of)
    if ecfg.generated.enabled:
        comparison, real, generated, gen = generated_vs_real(cfg, model, windows, D, store)
        result["generated_vs_real"] = comparison
        result["generated_samples"] = int(len(gen))
        result["generated_real_windows"] = int(len(next(iter(real.values()), [])))
        result["generated_real_min_steps"] = int(ecfg.generated.get("real_min_steps") or 0)
        notes = {k: f"OA {v['overlap_area']:.2f}  KL {v['kl_divergence']:.2f}" for k, v in comparison.items()}
        if comparison:  # needs at least 2 real windows for intra-set distances
            pictures["generated_vs_real"] = save_paired_histograms(
                plots / "generated_vs_real.png", {k: real[k] for k in comparison}, generated, annotations=notes)
        k = min(int(ecfg.sheet_samples), len(gen))
        if k:
            pictures["generated_samples"] = save_sheet(plots / "generated_samples.png", list(gen[:k]), names, spb,
                                                       titles=[f"generated {i}" for i in range(k)])
            rolls, songs, starts = comparison_windows(cfg, windows)
            real_rows = rolls[:k]      # the real windows the comparison used (no one-bar fills beside 16 bars)
            real_titles = [f"real: {store.meta['name'][s]} @ {a}" for s, a in zip(songs[:k], starts[:k])]
            pictures["real_samples"] = save_sheet(plots / "real_samples.png", real_rows, names, spb, titles=real_titles)
            pictures["real_vs_generated_rolls"] = save_side_by_side(
                plots / "real_vs_generated_rolls.png", real_rows, list(gen[:k]), names, spb, seq_len,
                left_titles=real_titles, right_titles=[f"generated {i}" for i in range(k)])
    write_json(out_dir / "metrics.json", result)
    write_text(out_dir / "report.md", report_markdown(result, pictures, out_dir, names))
    from train.report import write_eval_page   # report.html: the same, with audio (train/report)
    write_eval_page(cfg, result, pictures, store, gen if ecfg.generated.enabled else None)
    return result


def write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def expressive_markdown(e: dict) -> list[str]:
    lines = ["", "## Velocity and timing (teacher forced, on the true hits)", "",
             f"{e['hits']} hits. Velocity MSE in (velocity / 127)^2, offset MSE in steps^2. Baseline: the "
             "train split's mean velocity per drum and bar position, every hit on the grid.", "",
             "| predictor | velocity MSE | offset MSE | velocity correlation |", "|---|---:|---:|---:|"]
    for name in ("model", "baseline"):
        r = e[name]
        lines.append(f"| {name} | {r['velocity_mse']:.5f} | {r['offset_mse']:.5f} | {r['velocity_corr']:.3f} |")
    return lines
def _ci(r: dict, key: str, fmt: str) -> str:
    ci = r.get("ci95", {}).get(key)
    return f"{fmt.format(ci[0])}–{fmt.format(ci[1])}" if ci else "—"


def report_markdown(result: dict, pictures: dict, out_dir: Path, drum_names: list[str]) -> str:
    s = result["scores"]
    boot = result["bootstrap"]
    lines = [f"# Evaluation on the {result['split']} split", "",
             f"Checkpoint `{result['checkpoint']}`, export `{result['ready']}`: {result['songs']} songs, "
             f"{result['windows']} windows of {result['seq_len']} steps (stride {result['stride']}); "
             f"{s[MODEL_ROW]['scored_steps']} of the songs' {result['predictable_steps']} predictable steps "
             "scored, each once (a window also predicts the step after it; a song's last window ends at "
             f"its end). Baselines fitted on the train split and thresholds chosen on the validation split "
             f"of `{result['reference']}`. Every meter is scored, each song on its own bar: "
             + ", ".join(f"{n} songs in {m}" for m, n in result["meters"].items()) + ".", "",
             "## Next-step prediction (teacher forced)", "",
             "Lower NLL is better; the onset threshold of each row is the one that maximises its F1 on the "
             f"validation split. Intervals: {boot['level']:.0%} bootstrap over songs ({boot['samples']} "
             "resamples).", "",
             "| predictor | NLL (bits/step) | NLL 95% CI | BCE (nats) | threshold | precision | recall | F1 | F1 95% CI |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in s.items():
        lines.append(f"| {name} | {r['nll_bits_per_step']:.4f} | {_ci(r, 'nll_bits_per_step', '{:.3f}')} | "
                     f"{r['bce']:.4f} | {r['threshold']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['f1']:.3f} | {_ci(r, 'f1', '{:.3f}')} |")
    verdict = "beats" if result["model_beats_baselines_nll"] else "does NOT beat"
    ng = s["ngram"]
    chosen = " (chosen by validation NLL)" if result.get("ngram_selection") else ""
    lines += ["", f"The model {verdict} every baseline on NLL. The n-gram uses n = {ng['n']}, "
              f"alpha = {ng['alpha']:g}{chosen}.", ""]
    lines += subset_tables(result)
    lines += ["### F1 per drum", "", "| predictor | " + " | ".join(drum_names) + " |",
              "|---|" + "---:|" * len(drum_names)]
    for name, r in s.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['per_drum'][d]['f1']:.3f}" for d in drum_names) + " |")
    lines += ["", _img(pictures, "scores", out_dir)]
    if "expressive" in result:
        lines += expressive_markdown(result["expressive"])
    if "generated_vs_real" in result:
        lines += ["", "## Generated vs real", "",
                  f"{result['generated_samples']} generated windows of {result['seq_len']} steps against the "
                  f"split's {result.get('generated_real_windows', '')} windows in the model's bar of "
                  f"{result['steps_per_bar']} steps and of at least {result.get('generated_real_min_steps', 0)} "
                  "real steps (shorter ones, one-bar fills and song ends, are left out: "
                  "`evaluate.generated.real_min_steps`). OA and KL compare the intra-set distances of the real "
                  "windows with the real-to-generated distances (Yang & Lerch 2020): OA near 1 and KL near 0 "
                  "mean the generated windows sit among the real ones as the real ones sit among each other.", "",
                  "| metric | real mean | real std | generated mean | generated std | OA | OA 95% CI | KL | KL 95% CI |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        if not result["generated_vs_real"]:
            lines.append("| (the split has fewer than 2 real windows: no distances to compare) | | | | | | | | |")
        for name, c in result["generated_vs_real"].items():
            flag = " *" if c.get("zero_variance") else ""
            lines.append(f"| {name}{flag} | {c['real_mean']:.4f} | {c['real_std']:.4f} | {c['generated_mean']:.4f} | "
                         f"{c['generated_std']:.4f} | {c['overlap_area']:.3f} | {_ci(c, 'overlap_area', '{:.2f}')} | "
                         f"{c['kl_divergence']:.3f} | {_ci(c, 'kl_divergence', '{:.2f}')} |")
        if any(c.get("zero_variance") for c in result["generated_vs_real"].values()):
            lines += ["", "Metrics marked * are constant in one set (zero variance, `zero_variance` in the JSON). "
                      "Where the real set is constant its intra-set distances are all 0, so OA and KL then only "
                      "say whether the generated windows sit at that same value."]
        if "real_vs_generated_rolls" in pictures:
            lines += ["", "Real windows (left) and generated ones (right), drawn at the same scale:", "",
                      _img(pictures, "real_vs_generated_rolls", out_dir)]
        if "generated_vs_real" in pictures:
            lines += ["", _img(pictures, "generated_vs_real", out_dir)]
    return "\n".join(lines) + "\n"


def subset_tables(result: dict) -> list[str]:
    """NLL and F1 of every predictor on each subset of the split (songs of one kind), with intervals."""
    subsets = result.get("subsets") or {}
    if not subsets:
        return []
    rows = list(result["scores"])
    lines = ["### Subsets of the split", "",
             "The same scores on the songs of one kind (beat vs fill, style), each with its 95% interval "
             "over the subset's songs.", "",
             "| subset | songs | steps | " + " | ".join(rows) + " |", "|---|---:|---:|" + "---:|" * len(rows)]
    for key in ("nll_bits_per_step", "f1"):
        label = "NLL" if key != "f1" else "F1"
        for name, sub in subsets.items():
            sc = sub["scores"]
            cells = [f"{sc[r][key]:.3f} ({_ci(sc[r], key, '{:.2f}')})" for r in rows]
            lines.append(f"| {label}: {name} | {sub['songs']} | {sc[MODEL_ROW]['scored_steps']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _img(pictures: dict, key: str, out_dir: Path) -> str:
    return f"![{key}]({Path(pictures[key]).relative_to(out_dir).as_posix()})"


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with common.config.exit_on("evaluate", FileNotFoundError, ValueError, KeyError, LockHeld), \
            common.config.exit_on("evaluate", ConfigError, code=2), report_dir_lock(cfg.evaluate.out_dir):
        result = evaluate(cfg)
    out = Path(cfg.evaluate.out_dir)
    for name, r in result["scores"].items():
        print(f"{name:>12}: NLL {r['nll_bits_per_step']:.4f} bits/step  F1 {r['f1']:.3f} (threshold {r['threshold']:.3f})")
    print(f"Report: {out / 'report.md'}  metrics: {out / 'metrics.json'}  pictures: {out / 'plots'}/")
    print(f"Listen: {out / 'report.html'} (open it in a browser)")
