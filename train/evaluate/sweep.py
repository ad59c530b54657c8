"""`python -m train.evaluate.sweep checkpoint=… split=validation`: choose decoding by generated-vs-real fit.

For every point of the grid `evaluate.decoding_sweep.{temperature, top_k, top_p}` (all
combinations), the checkpoint generates the same number of windows `train.evaluate` would
(`evaluate.generated.*`, same seed) and their window metrics are compared with the split's real
windows (Yang & Lerch overlapping area, `train.evaluate.scores.compare_sets`). Per point:
the mean and the minimum OA over the metrics, the generated/real ratio of mean `ngram_unique`
and the generated − real mean lag-1 bar similarity. The suggested default (`best`) is the point
of highest mean OA among those whose n-gram ratio and lag-1 difference are inside
`evaluate.decoding_sweep.within` (the generation bars: n-gram ratio within ±20%, lag-1 similarity within ±0.05; the mean OA of ~27 metrics
hardly moves when one structure metric is far off, and those two are what a listener hears as
"too busy" or "stuck"), or of highest mean OA overall when no point is. Out: `<evaluate.out_dir>/decoding_sweep.{json,md}` and a sheet of
the best point's first generated rolls next to real ones (`decoding_sweep.png`).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import common.config
from common.atomic import atomic_path
from common.config import ConfigError


# the decoding keys swept (evaluate.generated.*); expressive_temperature scales the velocity and
# timing draws around the heads' means (model.expressive_spread)
AXES = ("temperature", "top_k", "top_p", "expressive_temperature")


def _points(grid: DictConfig) -> list[dict]:
    values = {k: list(grid[k]) for k in AXES if k in grid}
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


def _summary(comparison: dict) -> dict:
    oa = {k: v["overlap_area"] for k, v in comparison.items()}

    def ratio(name, fn):
        c = comparison.get(name)
        return None if c is None else fn(c["generated_mean"], c["real_mean"])

    return {"mean_oa": sum(oa.values()) / max(len(oa), 1), "min_oa": min(oa.values(), default=0.0),
            "worst_metric": min(oa, key=oa.get) if oa else None,
            "ngram_unique_ratio": ratio("ngram_unique", lambda g, r: g / r if r else None),
            "lag1_similarity_diff": ratio("bar_sim_lag1", lambda g, r: g - r), "oa": oa,
            "generated_mean": {k: v["generated_mean"] for k, v in comparison.items()},
            "real_mean": {k: v["real_mean"] for k, v in comparison.items()}}


def within(row: dict, bars) -> bool:
    """Whether the point's n-gram ratio is within 1 ± bars.ngram_unique_ratio and its lag-1
    difference within ± bars.lag1_similarity_diff (a missing bar or value: no constraint)."""
    bars = dict(bars or {})
    nu, lag = row.get("ngram_unique_ratio"), row.get("lag1_similarity_diff")
    ok_nu = bars.get("ngram_unique_ratio") is None or nu is None or abs(nu - 1) <= bars["ngram_unique_ratio"]
    ok_lag = bars.get("lag1_similarity_diff") is None or lag is None or abs(lag) <= bars["lag1_similarity_diff"]
    return ok_nu and ok_lag


def _rank(row: dict, bars) -> tuple[bool, float]:
    return within(row, bars), row["mean_oa"]


def sweep(cfg: DictConfig) -> dict:
    from train.report.rolls import save_roll_sheet
    from train.evaluate.generated import comparison_windows, generated_vs_real
    from train.evaluate.run import load_inputs
    from train.evaluate.windows import split_windows

    model, ckpt_path, ready, store, _ = load_inputs(cfg)   # the windows the export wrote (one grid)
    if cfg.split == "validation" and not cfg.evaluate.decoding_sweep.get("final_report", False):
        raise ConfigError("split=validation is the reported split and chooses nothing; sweep on split=tune, "
                          "or pass evaluate.decoding_sweep.final_report=true for a final report")
    seq_len, spb = int(cfg.window.seq_len), int(cfg.window.steps_per_bar)
    windows = split_windows(ready, cfg.split, seq_len, int(cfg.evaluate.stride), spb, int(cfg.window.bars_per_phrase))
    rows, best, best_gen = [], None, None
    for point in _points(cfg.evaluate.decoding_sweep):
        run_cfg = OmegaConf.merge(cfg, {"evaluate": {"generated": {**point, "bootstrap_samples": 0}}})   # means only
        comparison, _, _, gen = generated_vs_real(run_cfg, model, windows, store.num_drums, store)
        row = {**point, **_summary(comparison)}
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in point.items()) + ": "
              f"mean OA {row['mean_oa']:.3f}  min OA {row['min_oa']:.3f} ({row['worst_metric']})", flush=True)
        if best is None or _rank(row, cfg.evaluate.decoding_sweep.get("within")) > \
                _rank(best, cfg.evaluate.decoding_sweep.get("within")):
            best, best_gen = row, gen
    out = Path(cfg.evaluate.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = min(4, len(best_gen))
    real_rows = comparison_windows(cfg, windows)[0][:k]    # the real windows the comparison used
    save_roll_sheet(out / "decoding_sweep.png", list(best_gen[:k]) + real_rows, store.drum_names, spb,
                    int(store.attrs.get("steps_per_quarter", 4)), same_scale=True,
                    titles=[f"generated {i}" for i in range(k)] + [f"real {i}" for i in range(k)])
    result = {"checkpoint": str(ckpt_path), "split": cfg.split, "rows": rows,
              "best": {key: best[key] for key in AXES if key in best}}
    with atomic_path(out / "decoding_sweep.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2))
    with atomic_path(out / "decoding_sweep.md") as tmp:
        Path(tmp).write_text(markdown(rows, cfg.evaluate.decoding_sweep.get("within")))
    return result


def markdown(rows: list[dict], bars=None) -> str:
    axes = [k for k in AXES if rows and k in rows[0]]
    lines = ["| " + " | ".join(axes) + " | mean OA | min OA (metric) | ngram_unique gen/real | lag-1 sim gen − real | within |",
             "|" + "---:|" * len(axes) + "---:|---|---:|---:|:-:|"]
    for r in rows:
        nu = "–" if r["ngram_unique_ratio"] is None else f"{r['ngram_unique_ratio']:.2f}"
        lag = "–" if r["lag1_similarity_diff"] is None else f"{r['lag1_similarity_diff']:+.3f}"
        lines.append("| " + " | ".join(str(r[k]) for k in axes) + f" | {r['mean_oa']:.3f} | "
                     f"{r['min_oa']:.3f} ({r['worst_metric']}) | {nu} | {lag} | {'yes' if within(r, bars) else 'no'} |")
    return "\n".join(lines) + "\n"


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with common.config.exit_on("evaluate.sweep", FileNotFoundError, ValueError, KeyError), \
            common.config.exit_on("evaluate.sweep", ConfigError, code=2):
        result = sweep(cfg)
    print(f"best: {result['best']}  table: {Path(cfg.evaluate.out_dir) / 'decoding_sweep.md'}")


if __name__ == "__main__":
    main()
