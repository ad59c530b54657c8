"""The judge of generated windows: tables that can fail, each beside the figures that calibrate it.

`judge_tables` (called by train.evaluate.run when `evaluate.judge.enabled`) returns, for every
generated set (the model's; guided samples too when given):
- novelty: memorisation against the training songs (train.evaluate.novelty), beside the same
  figures of the reported split's real windows (the natural rate) and of training windows copied
  (what a copy looks like: every share 1);
- two_sample: held-out accuracy of a texture judge and a form judge telling the set from the
  reported split's real windows (train.evaluate.two_sample), beside the floor (real train windows
  against the split's: no difference) and the power rows (train windows with their bars shuffled,
  with 20% of their hits dropped: differences the judges should see);
- oa: the relative OA (mgeval) per metric and its headline mean with a bootstrap interval, and the
  absolute comparison of the values (their densities' overlap, the mean shift in real SDs), for
  the set, for training windows copied, and for the real-vs-real ceiling, each against the same
  real windows: half of the split's songs (A); the ceiling row is the other half (B). Metrics
  constant in the real set are left out of the mean and listed apart.
`tables` holds the same as display tables ({title, legend, columns, rows}) for report.md and
report.html.
"""
from __future__ import annotations

import json
import logging

import numpy as np
from omegaconf import DictConfig

from pipeline.store import Store
from train.evaluate import novelty as nov
from train.evaluate import two_sample as ts
from train.evaluate.scores import compare_sets, constant_in_real, mean_oa_with_interval, value_shift

log = logging.getLogger(__name__)

COPIED = "training windows, copied"


def train_windows(store: Store, ids, seq_len: int, spb: int) -> tuple[list, np.ndarray, list]:
    """Every whole seq_len window (starts 0, seq_len, …) of the songs `ids` in bars of `spb` steps:
    (hit rolls, song of each, (velocity, offset) of each)."""
    bar = np.asarray(store.meta["steps_per_bar"])
    rolls, songs, played = [], [], []
    for i in ids:
        if int(bar[int(i)]) != spb:
            continue
        sl = store.song_slice(int(i))
        for start in range(0, sl.stop - sl.start - seq_len + 1, seq_len):
            rolls.append(store.rows("hits", int(i), start, seq_len) > 0)
            played.append(tuple(store.rows(a, int(i), start, seq_len) for a in ("velocity", "offset")))
            songs.append(int(i))
    return [r.astype(np.uint8) for r in rolls], np.asarray(songs, np.int64), played


def _pick(n_total: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_total, min(n, n_total), replace=False))


def judge_tables(cfg: DictConfig, store: Store, real_rolls: list, real_songs: np.ndarray, real_played,
                 real_sets: dict, generated: dict, ref) -> dict:
    """The judge's figures (see the module docstring). `generated`: {name: (rolls, played or None,
    metric sets)}; `ref`: the export whose train split is the training data."""
    from pipeline.ready_paths import recorded
    from train.evaluate.generated import metric_kwargs, window_metric_sets
    from train.evaluate.windows import split_song_ids

    j = cfg.evaluate.judge
    seq_len, spb, bpp = int(cfg.window.seq_len), int(cfg.window.steps_per_bar), int(cfg.window.bars_per_phrase)
    seed = int(j.seed)
    train_store = Store(recorded(ref, json.loads((ref / "manifest.json").read_text()), "store"))
    train_ids = split_song_ids(ref, "train", spb, seq_len, bpp)
    t_rolls, t_songs, t_played = train_windows(train_store, train_ids, seq_len, spb)
    if not t_rolls:
        log.warning("evaluate.judge: the train split has no whole window of %d steps; no judge tables", seq_len)
        return {}
    n_gen = max(len(v[0]) for v in generated.values())
    copy_rows = _pick(len(t_rolls), n_gen, seed)
    copied = ([t_rolls[i] for i in copy_rows], [t_played[i] for i in copy_rows])
    log.info("evaluate.judge: novelty against %d train songs", len(train_ids))
    index = nov.TrainIndex([np.asarray(train_store.rows("hits", int(i), 0, 1 << 62)) for i in train_ids], spb)
    novelty = {name: nov.novelty(list(v[0]), index, int(j.novelty.max_segments), seed) for name, v in generated.items()}
    novelty[f"real ({cfg.split})"] = nov.novelty(real_rolls, index, int(j.novelty.max_segments), seed)
    novelty[COPIED] = nov.novelty(copied[0], index, int(j.novelty.max_segments), seed)

    log.info("evaluate.judge: classifier two-sample tests")
    real = ts.stack_windows(real_rolls, real_played, real_songs, seq_len)
    train = ts.stack_windows(t_rolls, t_played, t_songs + 1 + int(np.max(real_songs, initial=0)), seq_len)
    c = j.two_sample
    kw = dict(folds=int(c.folds), max_per_side=int(c.max_per_side), steps=int(c.steps),
              samples=int(j.bootstrap_samples), seed=seed)
    two = {name: ts.two_sample_test(ts.stack_windows(list(v[0]), v[1], -1 - np.arange(len(v[0])), seq_len),
                                    real, spb, **kw) for name, v in generated.items()}
    two["floor: real train vs real"] = ts.two_sample_test(train, real, spb, **kw)
    two["power: train, bars shuffled"] = ts.two_sample_test(ts.shuffle_bars(train, spb, seed), real, spb, **kw)
    two[f"power: train, {float(c.drop_share):.0%} of hits dropped"] = ts.two_sample_test(
        ts.drop_hits(train, float(c.drop_share), seed), real, spb, **kw)

    log.info("evaluate.judge: OA with the copied row and the real-vs-real ceiling")
    mkw = metric_kwargs(cfg)
    rows = {name: v[2] for name, v in generated.items()}
    rows[COPIED] = window_metric_sets(copied[0], seq_len, mkw, copied[1] if real_played is not None else None)
    oa = oa_rows(real_sets, real_songs, rows, int(j.bootstrap_samples), seed)
    out = {"novelty": novelty, "two_sample": two, "oa": oa, "train_windows": len(t_rolls)}
    out["tables"] = display_tables(out, cfg.split)
    return out


def oa_rows(real: dict, songs: np.ndarray, rows: dict, samples: int, seed: int) -> dict:
    """Each row's metric sets, and the split's half B (the ceiling), against the split's half A."""
    uniq = np.unique(songs)
    half_a = np.isin(songs, uniq[np.random.default_rng(seed).permutation(len(uniq))[: (len(uniq) + 1) // 2]])
    if half_a.all() or not half_a.any():
        return {}
    ref = {k: v[half_a] for k, v in real.items()}
    rows = {**rows, "real vs real (ceiling)": {k: v[~half_a] for k, v in real.items()}}
    constant = constant_in_real(real)
    out = {"reference_windows": int(half_a.sum()), "constant_in_real": constant, "rows": {}}
    for name, sets in rows.items():
        per = compare_sets(ref, sets)
        for k in per:
            per[k].update(value_shift(ref[k], sets[k]))
        head = mean_oa_with_interval(ref, sets, songs[half_a], samples=samples, seed=seed, exclude=constant)
        kept = [k for k in per if k not in constant]
        shifts = [per[k]["mean_shift_sd"] for k in kept if per[k]["mean_shift_sd"] is not None]
        out["rows"][name] = {"mean_oa": head["mean_oa"], "mean_oa_ci95": head["ci95"],
                             "mean_value_overlap": float(np.mean([per[k]["value_overlap"] for k in kept])) if kept else None,
                             "mean_shift_sd": float(np.mean(shifts)) if shifts else None, "metrics": per}
    return out


def _f(v, fmt="{:.3f}") -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def _acc(r) -> str:
    return "—" if not r else f"{r['accuracy']:.3f} ({r['ci95'][0]:.2f}–{r['ci95'][1]:.2f})"


def display_tables(judge: dict, split: str) -> list[dict]:
    """The judge's figures as tables of strings (report.md and report.html render the same)."""
    tables = [{"title": "Novelty: copied from the training songs",
               "legend": "Share of non-silent bar-aligned segments found verbatim (at any offset) in a training song; "
                         "the longest run of bars found together in one training song (mean / max per window); the "
                         "Jaccard similarity of each 4-bar segment to its nearest bar-aligned training segment "
                         f"(mean / share ≥ 0.9); windows whose whole pattern repeats within the set. Read the "
                         f"generated rows against the real {split} windows (the natural rate) and the copied row "
                         "(what copying looks like).",
               "columns": ["set", "windows", "1-bar", "2-bar", "4-bar", "longest run", "nearest Jaccard",
                           "duplicates"],
               "rows": [[name, str(r["windows"]), _f(r["found_1bar"]), _f(r["found_2bar"]), _f(r["found_4bar"]),
                         f"{r['longest_run_mean']:.1f} / {r['longest_run_max']}",
                         f"{_f(r['jaccard_4bar_mean'])} / {_f(r['jaccard_4bar_ge_0.9'])}", _f(r["duplicates"])]
                        for name, r in judge["novelty"].items()]},
              {"title": "Classifier two-sample test",
               "legend": f"Held-out accuracy (95% interval, bootstrap over songs) of a judge telling the row's windows "
                         f"from the real {split} windows, cross-validated with folds split by song. 0.5 = "
                         "indistinguishable. The floor row is two real samples; the power rows are real windows with a "
                         "known defect: a generated row is only as good as it is close to the floor.",
               "columns": ["windows against real", "per side", "texture (CNN)", "form (bar self-similarity)"],
               "rows": [[name, str(r["windows_per_side"]), _acc(r.get("texture")), _acc(r.get("form"))]
                        for name, r in judge["two_sample"].items()]}]
    oa = judge.get("oa") or {}
    if oa.get("rows"):
        names = list(oa["rows"])
        tables.append({
            "title": "OA with its copy row and ceiling",
            "legend": f"Every row against the same {oa['reference_windows']} real windows (half A of the split's "
                      "songs); the ceiling is the other half. Mean relative OA (Yang & Lerch) with its 95% interval "
                      "(bootstrap over songs), the mean overlap of the metric values' own densities, and the mean "
                      "|difference of means| in real SDs. Left out of the means (constant in the real set): "
                      + (", ".join(oa["constant_in_real"]) or "none") + ".",
            "columns": ["row", "mean OA", "95% CI", "value overlap", "mean shift (SD)"],
            "rows": [[n, _f(r["mean_oa"]), "—" if not r["mean_oa_ci95"] else
                      f"{r['mean_oa_ci95'][0]:.3f}–{r['mean_oa_ci95'][1]:.3f}", _f(r["mean_value_overlap"]),
                      _f(r["mean_shift_sd"], "{:.2f}")] for n, r in oa["rows"].items()]})
        metrics = list(oa["rows"][names[0]]["metrics"])
        tables.append({
            "title": "OA per metric, beside the copy row and the ceiling",
            "legend": "Per row: relative OA / value overlap / mean shift in real SDs.",
            "columns": ["metric"] + names,
            "rows": [[m + (" (constant in real)" if m in oa["constant_in_real"] else "")]
                     + [_cell(oa["rows"][n]["metrics"].get(m)) for n in names] for m in metrics]})
    return tables


def _cell(c) -> str:
    if not c:
        return "—"
    return f"{c['overlap_area']:.2f} | {c['value_overlap']:.2f} | {_f(c['mean_shift_sd'], '{:.2f}')}"


def judge_markdown(judge: dict) -> list[str]:
    lines = []
    for t in judge.get("tables", []):
        lines += ["", f"## {t['title']}", "", t["legend"], "",
                  "| " + " | ".join(t["columns"]) + " |", "|---|" + "---:|" * (len(t["columns"]) - 1)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in t["rows"]]
    return lines
