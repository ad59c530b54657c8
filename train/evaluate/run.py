"""`python -m train.evaluate checkpoint=… split=validation`: held-out scores, baselines, generated vs real.

1. Windows of the split, cut from `data/store.zarr` as the metrics stage cuts them (starts 0,
   stride, 2·stride, … while start + seq_len <= T; a shorter song is one padded, masked window),
   with `evaluate.stride` (default seq_len: every step scored once). As in training
   (train.training.data.ReadyDataset), songs whose steps_per_bar differs from `window.steps_per_bar`
   (e.g. 3/4 songs) are left out, for the model and the baselines alike (fitting included), and
   the counts left out are reported.
2. Teacher-forced scores (train.evaluate.scores) of the model and of the three baselines (train.evaluate.baselines,
   fitted on the train split) on exactly those windows; each one's onset threshold is chosen on
   the validation split and reported with its scores.
3. Generated vs real: as many seq_len windows as the split holds (up to
   evaluate.generated.max_samples) are generated from nothing; the kernels' window metrics of both
   sets are compared per metric by overlapping area and KL divergence (Yang & Lerch 2020).
4. Out: `metrics.json` (DVC metrics), `plots/*.png` (DVC plots) and `report.md` embedding them.
Config: `conf/evaluate.yaml` (its own config_name, including the root config).
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import pipeline.config
from pipeline.atomic import atomic_path
from kernels.spec import window_grid
from pipeline.store import Store
from train.evaluate.baselines import NGramBaseline, make_baselines, select_ngram
from train.generate.run import sample
from train.training.checkpoint import load_for_inference
from train.training.optim import ConfigError
from train.evaluate.scores import ScoreAccumulator, compare_sets

MODEL_ROW = "model"


@dataclass
class Windows:
    """Windows of one split: steps [N, L, D] uint8 (0/1), mask [N, L]; song, start, steps_per_bar [N]."""

    steps: np.ndarray
    mask: np.ndarray
    song: np.ndarray
    start: np.ndarray
    steps_per_bar: np.ndarray      # the bar length of each window's song (its meter)
    excluded_songs: int = 0        # songs of the split left out for their meter
    excluded_windows: int = 0      # ... and the windows they would have given

    def __len__(self) -> int:
        return len(self.steps)

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            sl = slice(i, i + batch_size)
            yield self.steps[sl], self.mask[sl], self.start[sl], self.steps_per_bar[sl]


def window_starts(num_steps: int, seq_len: int, stride: int) -> list[int]:
    """The metrics stage's rule (`kernels.window_grid`), so scored windows are the stored ones."""
    return window_grid(num_steps, seq_len, stride)[0].tolist()


def split_songs_ids(store: Store, split: str) -> np.ndarray:
    """Song indices of a split; `all` is every song (a store built from a folder kept for testing)."""
    return np.arange(store.num_songs) if split == "all" else store.songs_in_split(split)


def same_meter(store: Store, ids: np.ndarray, steps_per_bar: int | None) -> np.ndarray:
    """Bool per song id: its steps_per_bar is the training window's (the trainer's rule); all True
    for steps_per_bar None."""
    if steps_per_bar is None:
        return np.ones(len(ids), bool)
    return store.meta["steps_per_bar"][np.asarray(ids, np.int64)] == int(steps_per_bar)


def _num_steps(store: Store, i) -> int:
    sl = store.song_slice(int(i))
    return sl.stop - sl.start


def split_windows(store: Store, split: str, seq_len: int, stride: int, hits: np.ndarray | None = None,
                  steps_per_bar: int | None = None) -> Windows:
    """The split's windows; with `steps_per_bar`, only songs of that bar length (others counted)."""
    songs = split_songs_ids(store, split)
    if len(songs) == 0:
        raise ValueError(f"{store.path}: no song in split {split!r} (splits: {store.attrs.get('splits')})")
    keep = same_meter(store, songs, steps_per_bar)
    if not keep.any():
        raise ValueError(f"{store.path}: no song of split {split!r} has steps_per_bar={steps_per_bar} "
                         f"(the model's window); nothing to score")
    excluded_windows = sum(len(window_starts(_num_steps(store, i), seq_len, stride)) for i in songs[~keep])
    hits = np.asarray(store.hits[:]) if hits is None else hits
    rows, masks, song_ids, starts = [], [], [], []
    for i in songs[keep]:
        sl = store.song_slice(int(i))
        song = hits[sl]
        for a in window_starts(len(song), seq_len, stride):
            w = np.zeros((seq_len, store.num_drums), np.uint8)
            part = song[a:a + seq_len]
            w[: len(part)] = part > 0
            m = np.zeros(seq_len, bool)
            m[: len(part)] = True
            rows.append(w), masks.append(m), song_ids.append(int(i)), starts.append(a)
    song_ids = np.array(song_ids, np.int64)
    return Windows(np.stack(rows), np.stack(masks), song_ids, np.array(starts, np.int64),
                   store.meta["steps_per_bar"][song_ids].astype(np.int64),
                   int((~keep).sum()), int(excluded_windows))


def split_songs(store: Store, split: str, hits: np.ndarray,
                steps_per_bar: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """The split's whole songs and their bar lengths (what the baselines are fitted on); with
    `steps_per_bar`, only the songs of that bar length, as the trainer reads them."""
    ids = store.songs_in_split(split)
    ids = ids[same_meter(store, ids, steps_per_bar)]
    return [hits[store.song_slice(int(i))] for i in ids], [int(store.meta["steps_per_bar"][i]) for i in ids]


@torch.no_grad()
def model_probs(model, steps: np.ndarray, mask: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-drum probabilities [B, L, D] float64, probs[:, t] the prediction for step t+1;
    log2 p of each next step's whole drum vector [B, L−1]): the model's own whole-vector NLL,
    right for joint and autoregressive output heads too."""
    x = torch.as_tensor(steps, dtype=torch.float32)
    logits = model(x, mask=torch.as_tensor(mask), start=torch.as_tensor(start))[0].double()
    log2p = model.step_log_prob(x.double(), step_logits=logits)
    return model.step_marginals(logits).numpy(), log2p.numpy()


def score_windows(predict, windows: Windows, num_drums: int, batch_size: int) -> ScoreAccumulator:
    """`predict(steps, mask, start, steps_per_bar)` -> probs, or (probs, log2 p per step),
    accumulated over the windows."""
    acc = ScoreAccumulator(num_drums)
    for steps, mask, start, spb in windows.batches(batch_size):
        out = predict(steps, mask, start, spb)
        probs, log2p = out if isinstance(out, tuple) else (out, None)
        acc.update(probs, steps, mask, log2p)
    return acc


def tune_ngram(b: DictConfig, train_songs: list[np.ndarray], validation: Windows, num_drums: int,
               batch_size: int) -> tuple[NGramBaseline, list[dict]]:
    """Pick the n-gram's n and/or alpha ("auto") by NLL on the validation split, as thresholds are."""
    ns = list(range(2, int(b.ngram_max_n) + 1)) if b.ngram_n == "auto" else [int(b.ngram_n)]
    alphas = list(b.ngram_alphas) if b.ngram_alpha == "auto" else [float(b.ngram_alpha)]

    def nll(model: NGramBaseline) -> float:
        acc = score_windows(lambda s, m, a, spb: model.predict(s, m), validation, num_drums, batch_size)
        return acc.nll_bits / acc.steps

    return select_ngram(train_songs, nll, ns, alphas, float(b.eps))


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


def window_metric_sets(rolls: list[np.ndarray], seq_len: int, kw: dict) -> dict[str, np.ndarray]:
    """Kernel window metrics of each roll as one window ([N, ...] per metric)."""
    from kernels import window_metrics

    per_metric: dict[str, list] = {}
    for roll in rolls:
        if len(roll) == 0:
            continue
        m = window_metrics(np.ascontiguousarray(roll, dtype=np.uint8), seq_len=min(seq_len, len(roll)),
                           stride=max(len(roll), 1), **kw)
        for name, value in m.items():
            value = np.asarray(value)
            if value.dtype.kind in "biuf" and len(value):
                per_metric.setdefault(name, []).append(value[0])
    return {name: np.stack(v) for name, v in per_metric.items()}


def generated_vs_real(cfg: DictConfig, model, windows: Windows, num_drums: int) -> tuple[dict, dict, dict, np.ndarray]:
    """(comparison per metric, real metric sets, generated metric sets, generated rolls)."""
    gcfg = cfg.evaluate.generated
    seq_len = int(cfg.window.seq_len)
    # Real set: the split's windows laid end to end (stride = seq_len), trimmed to their real steps.
    real_rolls = [w[m] for w, m, a in zip(windows.steps, windows.mask, windows.start) if a % seq_len == 0]
    real_rolls = [r for r in real_rolls if len(r)]
    split_steps = sum(len(r) for r in real_rolls)
    num = max(2, min(int(gcfg.max_samples), math.ceil(split_steps / seq_len)))
    gen = sample(model, num, seq_len, num_drums=num_drums, temperature=float(gcfg.temperature),
                 top_p=gcfg.top_p, top_k=gcfg.get("top_k"), seed=int(gcfg.seed))
    kw = metric_kwargs(cfg)
    real = window_metric_sets(real_rolls, seq_len, kw)
    generated = window_metric_sets(list(gen), seq_len, kw)
    return compare_sets(real, generated, max_samples=int(gcfg.max_set_size)), real, generated, gen


def evaluate(cfg: DictConfig) -> dict:
    """Score everything, write metrics.json, plots and report.md; return the metrics dict."""
    from train.evaluate.plots import save_paired_histograms, save_score_bars, save_sheet

    ecfg = cfg.evaluate
    seq_len, spb = int(cfg.window.seq_len), int(cfg.window.steps_per_bar)
    if int(ecfg.stride) % spb:
        raise ConfigError(f"evaluate.stride={ecfg.stride} is not a whole number of bars of window.steps_per_bar="
                          f"{spb}: scored windows must start on bar lines, as the training windows do")
    model, ckpt, ckpt_path = load_for_inference(cfg.checkpoint)
    for key in ("steps_per_bar", "bars_per_phrase"):   # score on the grid the model was trained on
        if key in model.config and int(model.config[key]) != int(cfg.window[key]):
            raise ValueError(f"{ckpt_path}: trained with {key}={model.config[key]}, but window.{key}="
                             f"{cfg.window[key]}; evaluate with window.{key}={model.config[key]}")
    store = Store(cfg.paths.store)
    names = store.drum_names
    if [str(n) for n in ckpt["drum_names"]] != names:
        raise ValueError(f"{ckpt_path}: trained on drums {list(ckpt['drum_names'])}, but {store.path} holds {names}")
    hits = np.asarray(store.hits[:])
    windows = split_windows(store, cfg.split, seq_len, int(ecfg.stride), hits, spb)
    # The reference store's train split fits the baselines and its validation split picks thresholds:
    # the store itself by default, the training data's store when scoring a store built elsewhere.
    ref_path = Path(ecfg.reference_store or cfg.paths.store)
    same = ref_path.resolve() == store.path.resolve()
    ref, ref_hits = (store, hits) if same else (Store(ref_path), None)
    if not same:
        ref_hits = np.asarray(ref.hits[:])
        if ref.drum_names != names:
            raise ValueError(f"{ref.path} holds drums {ref.drum_names}, {store.path} holds {names}")
    validation = windows if same and cfg.split == "validation" else split_windows(
        ref, "validation", seq_len, int(ecfg.stride), ref_hits, spb)
    train_songs, train_bars = split_songs(ref, "train", ref_hits, spb)
    if not train_songs:
        raise ValueError(f"{ref.path}: no song in the train split to fit the baselines on")

    b = ecfg.baselines
    fixed_n = 4 if b.ngram_n == "auto" else int(b.ngram_n)
    fixed_alpha = 1.0 if b.ngram_alpha == "auto" else float(b.ngram_alpha)
    baselines, ngram_grid = {}, []
    for base in make_baselines(spb, fixed_n, fixed_alpha, float(b.eps), bool(b.repeat_calibrated)):
        if isinstance(base, NGramBaseline) and "auto" in (b.ngram_n, b.ngram_alpha):
            base, ngram_grid = tune_ngram(b, train_songs, validation, store.num_drums, int(ecfg.batch_size))
        else:
            base.fit(train_songs, train_bars)
        baselines[base.name] = base
    predictors = {MODEL_ROW: lambda s, m, a, bars: model_probs(model, s, m, a)}
    for name, base in baselines.items():
        predictors[name] = lambda s, m, a, bars, base=base: base.predict(s, m, bars)

    scores = {}
    for name, predict in predictors.items():
        acc = score_windows(predict, windows, store.num_drums, int(ecfg.batch_size))
        val = acc if validation is windows else score_windows(predict, validation, store.num_drums,
                                                              int(ecfg.batch_size))
        scores[name] = acc.result(val.best_threshold(), names)
    scores["ngram"].update({"n": baselines["ngram"].n, "alpha": baselines["ngram"].alpha})

    out_dir = Path(ecfg.out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    pictures = {"scores": save_score_bars(plots / "scores.png", scores)}
    result = {
        "checkpoint": str(ckpt_path), "split": cfg.split, "store": str(store.path), "reference_store": str(ref.path),
        "windows": len(windows), "seq_len": seq_len, "stride": int(ecfg.stride), "steps_per_bar": spb,
        "excluded_songs": windows.excluded_songs, "excluded_windows": windows.excluded_windows,
        "scores": scores,
        "ngram_selection": ngram_grid,
        "model_beats_baselines_nll": all(scores[MODEL_ROW]["nll_bits_per_step"] < s["nll_bits_per_step"]
                                         for n, s in scores.items() if n != MODEL_ROW),
    }
    if ecfg.generated.enabled:
        comparison, real, generated, gen = generated_vs_real(cfg, model, windows, store.num_drums)
        result["generated_vs_real"] = comparison
        result["generated_samples"] = int(len(gen))
        notes = {k: f"OA {v['overlap_area']:.2f}  KL {v['kl_divergence']:.2f}" for k, v in comparison.items()}
        if comparison:  # needs at least 2 real windows for intra-set distances
            pictures["generated_vs_real"] = save_paired_histograms(
                plots / "generated_vs_real.png", {k: real[k] for k in comparison}, generated, annotations=notes)
        k = min(int(ecfg.sheet_samples), len(gen))
        if k:
            pictures["generated_samples"] = save_sheet(plots / "generated_samples.png", list(gen[:k]), names, spb,
                                                       titles=[f"generated {i}" for i in range(k)])
            real_rows = [w[m] for w, m in zip(windows.steps[:k], windows.mask[:k])]
            pictures["real_samples"] = save_sheet(plots / "real_samples.png", real_rows, names, spb,
                                                  titles=[f"real: {store.meta['name'][s]} @ {a}"
                                                          for s, a in zip(windows.song[:k], windows.start[:k])])
    write_json(out_dir / "metrics.json", result)
    write_text(out_dir / "report.md", report_markdown(result, pictures, out_dir, names))
    return result


def write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def report_markdown(result: dict, pictures: dict, out_dir: Path, drum_names: list[str]) -> str:
    s = result["scores"]
    lines = [f"# Evaluation on the {result['split']} split", "",
             f"Checkpoint `{result['checkpoint']}`, store `{result['store']}`: {result['windows']} windows of "
             f"{result['seq_len']} steps (stride {result['stride']}), "
             f"{s[MODEL_ROW]['scored_steps']} scored steps. Baselines fitted on the train split and "
             f"thresholds chosen on the validation split of `{result['reference_store']}`. "
             f"As in training, only songs of {result['steps_per_bar']} steps a bar are scored: "
             f"{result['excluded_songs']} songs ({result['excluded_windows']} windows) of other meters "
             f"left out.", "",
             "## Next-step prediction (teacher forced)", "",
             "Lower NLL is better; the onset threshold of each row is the one that maximises its F1 on the "
             "validation split.", "",
             "| predictor | NLL (bits/step) | BCE (nats) | threshold | precision | recall | F1 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in s.items():
        lines.append(f"| {name} | {r['nll_bits_per_step']:.4f} | {r['bce']:.4f} | {r['threshold']:.3f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")
    verdict = "beats" if result["model_beats_baselines_nll"] else "does NOT beat"
    ng = s["ngram"]
    chosen = " (chosen by validation NLL)" if result.get("ngram_selection") else ""
    lines += ["", f"The model {verdict} every baseline on NLL. The n-gram uses n = {ng['n']}, "
              f"alpha = {ng['alpha']:g}{chosen}.", "",
              "### F1 per drum", "", "| predictor | " + " | ".join(drum_names) + " |",
              "|---|" + "---:|" * len(drum_names)]
    for name, r in s.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['per_drum'][d]['f1']:.3f}" for d in drum_names) + " |")
    lines += ["", _img(pictures, "scores", out_dir)]
    if "generated_vs_real" in result:
        lines += ["", "## Generated vs real", "",
                  f"{result['generated_samples']} generated windows of {result['seq_len']} steps against the "
                  "split's windows. OA and KL compare the intra-set distances of the real windows with the "
                  "real-to-generated distances (Yang & Lerch 2020): OA near 1 and KL near 0 mean the generated "
                  "windows sit among the real ones as the real ones sit among each other.", "",
                  "| metric | real mean | real std | generated mean | generated std | OA | KL |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        if not result["generated_vs_real"]:
            lines.append("| (the split has fewer than 2 real windows: no distances to compare) | | | | | | |")
        for name, c in result["generated_vs_real"].items():
            lines.append(f"| {name} | {c['real_mean']:.4f} | {c['real_std']:.4f} | {c['generated_mean']:.4f} | "
                         f"{c['generated_std']:.4f} | {c['overlap_area']:.3f} | {c['kl_divergence']:.3f} |")
        for key in ("generated_vs_real", "generated_samples", "real_samples"):
            if key in pictures:
                lines += ["", _img(pictures, key, out_dir)]
    return "\n".join(lines) + "\n"


def _img(pictures: dict, key: str, out_dir: Path) -> str:
    return f"![{key}]({Path(pictures[key]).relative_to(out_dir).as_posix()})"


@hydra.main(config_path=str(pipeline.config.CONF_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with pipeline.config.exit_on("evaluate", FileNotFoundError, ValueError, KeyError), \
            pipeline.config.exit_on("evaluate", ConfigError, code=2):
        result = evaluate(cfg)
    out = Path(cfg.evaluate.out_dir)
    for name, r in result["scores"].items():
        print(f"{name:>12}: NLL {r['nll_bits_per_step']:.4f} bits/step  F1 {r['f1']:.3f} (threshold {r['threshold']:.3f})")
    print(f"Report: {out / 'report.md'}  metrics: {out / 'metrics.json'}  pictures: {out / 'plots'}/")
