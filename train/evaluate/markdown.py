"""`report.md` of an evaluation (and the atomic writers of its files): the tables of metrics.json
with the pictures embedded."""
from __future__ import annotations

import json
from pathlib import Path

from common.atomic import atomic_path
from train.evaluate.expressive_baselines import strongest_markdown
from train.evaluate.judge import judge_markdown
from train.evaluate.next_step import MODEL_ROW


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
    for name in [k for k in ("model", "baseline", "position_means", "running_residual") if k in e]:
        r = e[name]
        lines.append(f"| {name} | {r['velocity_mse']:.5f} | {r['offset_mse']:.5f} | {r['velocity_corr']:.3f} |")
    return lines + strongest_markdown(e)


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
             f"its end). Baselines fitted on the train split and thresholds chosen on the {result['choose_split']} split "
             f"of `{result['reference']}`. Every meter is scored, each song on its own bar: "
             + ", ".join(f"{n} songs in {m}" for m, n in result["meters"].items()) + ".", "",
             "## Next-step prediction (teacher forced)", "",
             "Lower NLL is better; the onset threshold of each row is the one that maximises its F1 on the "
             f"{result['choose_split']} split. Intervals: {boot['level']:.0%} bootstrap over songs ({boot['samples']} "
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
        lines += judge_markdown(result.get("judge") or {})
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
