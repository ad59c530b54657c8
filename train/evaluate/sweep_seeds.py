"""`python -m train.evaluate.sweep_seeds [--final-report] DIR [DIR ...]`: one decoding choice from several seeds' sweeps.

Each DIR holds a `decoding_sweep.json` that `python -m train.evaluate.sweep` wrote for one seed's
checkpoint (same grid, same split). A point's row is averaged over the seeds: mean OA per metric,
n-gram ratio, lag-1 gap; `best` is chosen as the sweep chooses (highest mean OA among the points
inside `evaluate.decoding_sweep.within`: n-gram ratio 1 ± 0.2, lag-1 gap ± 0.05), so one seed's luck does not pick the
decoding. Prints the markdown table and the best point; writes nothing. Sweeps of split=validation
(the reported split) are refused unless `--final-report` says the table is a final report.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from train.evaluate.sweep import AXES, _rank, markdown


def combine(results: list[dict]) -> list[dict]:
    """Rows of the seeds' sweeps averaged point by point (points matched by their decoding keys)."""
    def key(row):   # a sweep written before expressive_temperature was an axis drew at 1.0
        return tuple(row.get(k, 1.0 if k == "expressive_temperature" else None) for k in AXES)
    by_point = [{key(r): r for r in res["rows"]} for res in results]
    rows = []
    for point, first in by_point[0].items():
        same = [b[point] for b in by_point if point in b]
        if len(same) < len(by_point):
            continue        # a point not every seed swept
        oa = {m: statistics.mean(r["oa"][m] for r in same) for m in first["oa"]}
        rows.append({**dict(zip(AXES, point)), "oa": oa,
                     "mean_oa": statistics.mean(r["mean_oa"] for r in same),
                     "min_oa": min(oa.values()), "worst_metric": min(oa, key=oa.get),
                     "ngram_unique_ratio": _mean([r["ngram_unique_ratio"] for r in same]),
                     "lag1_similarity_diff": _mean([r["lag1_similarity_diff"] for r in same])})
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    final = "--final-report" in argv
    argv = [a for a in argv if a != "--final-report"]
    results = [json.loads((Path(d) / "decoding_sweep.json").read_text()) for d in argv]
    if not final and any(r.get("split") == "validation" for r in results):
        print("sweep_seeds: these sweeps scored split=validation, the reported split, which chooses nothing; "
              "sweep on split=tune, or pass --final-report", file=sys.stderr)
        return 2
    rows = combine(results)
    if not rows:
        print("sweep_seeds: no decoding point is in every sweep", file=sys.stderr)
        return 1
    from common.config import compose

    within = compose(config_name="evaluate").evaluate.decoding_sweep.within   # the sweep's own bars
    best = max(rows, key=lambda r: _rank(r, within))
    print(markdown(rows, within))
    print("best:", {k: best[k] for k in AXES if k in best})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
