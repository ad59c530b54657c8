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
   come from the same counts; each row's onset threshold is chosen on the tune split (evaluate.choose_split).
3. Generated vs real: as many seq_len windows as the split holds (up to
   evaluate.generated.max_samples) are generated from nothing; the kernels' window metrics of both
   sets are compared per metric by overlapping area and KL divergence (Yang & Lerch 2020).
4. Out: `metrics.json` (DVC metrics), `plots/*.png` (DVC plots) and `report.md` embedding them.
Config: `conf/evaluate.yaml` (its own config_name, including the root config).

Here: `evaluate(cfg)` in that order. Its pieces: `next_step` (step 2), `generated` (step 3),
`markdown` (report.md), `velocity_offset_scores` (expressive heads), `plots` (the PNGs).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

import common.config
from common.config import ConfigError
from common.lock import LockHeld, report_dir_lock
from pipeline.store import Store
from pipeline.ready_paths import recorded
from pipeline.splits import monitored_split
from train.evaluate.expressive_baselines import stronger_baselines
from train.evaluate.generated import comparison_windows, generated_vs_real, guided_sets
from train.evaluate.judge import judge_tables
from train.evaluate.markdown import report_markdown, write_json, write_text
from train.evaluate.next_step import (MODEL_ROW, fit_baselines, model_probs, score_windows, scores_with_intervals,
                                      song_conditions, song_subsets)
from train.evaluate.windows import songs_by_meter, split_song_ids, split_songs, split_windows
from train.training.checkpoint import load_for_inference, train_hint
from train.training.data import resolve_ready_dir

log = logging.getLogger("train.evaluate.run")


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
    from train.evaluate.plots import save_paired_histograms, save_score_bars
    from train.report.rolls import save_roll_columns, save_roll_sheet

    ecfg = cfg.evaluate
    seq_len, spb, bpp = int(cfg.window.seq_len), int(cfg.window.steps_per_bar), int(cfg.window.bars_per_phrase)
    if int(ecfg.stride) % spb:
        raise ConfigError(f"evaluate.stride={ecfg.stride} is not a whole number of bars of window.steps_per_bar="
                          f"{spb}: scored windows must start on bar lines, as the training windows do")
    model, ckpt_path, ready, store, names = load_inputs(cfg)
    D, batch = len(names), int(ecfg.batch_size)
    windows = split_windows(ready, cfg.split, seq_len, int(ecfg.stride), spb, bpp)
    # The reference export's train split fits the baselines and its tune split picks thresholds:
    # the scored data's own by default, the training data's when scoring data built elsewhere.
    ref = resolve_ready_dir(ecfg.reference_store or ready)
    same = ref.resolve() == ready.resolve()
    if not same and json.loads((ref / "manifest.json").read_text())["drum_names"] != names:
        raise ValueError(f"{ref} holds other drums than {ready} ({names})")
    choose = monitored_split(ref, str(ecfg.choose_split))       # thresholds, n-gram: never the reported split
    validation = windows if same and cfg.split == choose else split_windows(ref, choose, seq_len, int(ecfg.stride), spb, bpp)
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
        "reference": str(ref), "choose_split": choose, "windows": len(windows), "seq_len": seq_len, "stride": int(ecfg.stride),
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
        from train.evaluate.velocity_offset_scores import expressive_scores
        # the baseline's means come from the reference export's train songs (those the dataset reads)
        ref_store = store if same else Store(recorded(ref, json.loads((ref / "manifest.json").read_text()), "store"))
        train_ids = split_song_ids(ref, "train", spb, seq_len, bpp)
        result["expressive"] = expressive_scores(model, store, windows, ref_store, train_ids, spb, int(ecfg.batch_size),
                                                 cond_of)
        result["expressive"].update(stronger_baselines(store, windows, ref_store, train_ids, result["expressive"]))
    if ecfg.generated.enabled:
        played = []
        comparison, real, generated, gen = generated_vs_real(cfg, model, windows, D, store, played)
        if ecfg.judge.enabled:   # with a style-conditioned model, guided samples in the real set's style mix too
            guided, per_style = guided_sets(cfg, model, ready, comparison_windows(cfg, windows)[1], D)
            result["judge"] = judge_tables(cfg, store, *comparison_windows(cfg, windows)[:2], played[0], real,
                                           {"generated": (list(gen), played[1], generated), **guided}, ref)
            result["judge"].update({"guided_styles": per_style} if guided else {})
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
            spq = int(store.attrs.get("steps_per_quarter", 4))     # the rolls' beat bands
            pictures["generated_samples"] = save_roll_sheet(plots / "generated_samples.png", list(gen[:k]), names, spb,
                                                            spq, titles=[f"generated {i}" for i in range(k)])
            rolls, songs, starts = comparison_windows(cfg, windows)
            real_rows = rolls[:k]      # the real windows the comparison used (no one-bar fills beside 16 bars)
            real_titles = [f"real: {store.meta['name'][s]} @ {a}" for s, a in zip(songs[:k], starts[:k])]
            pictures["real_samples"] = save_roll_sheet(plots / "real_samples.png", real_rows, names, spb, spq,
                                                       titles=real_titles, same_scale=True)
            pictures["real_vs_generated_rolls"] = save_roll_columns(
                plots / "real_vs_generated_rolls.png", real_rows, list(gen[:k]), names, spb, spq,
                left_titles=real_titles, right_titles=[f"generated {i}" for i in range(k)])
    write_json(out_dir / "metrics.json", result)
    write_text(out_dir / "report.md", report_markdown(result, pictures, out_dir, names))
    from train.report import write_eval_page   # report.html: the same, with audio (train/report)
    write_eval_page(cfg, result, pictures, store, gen if ecfg.generated.enabled else None)
    return result


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
