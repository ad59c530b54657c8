"""What a study costs on top of the training it runs: per-trial driver overhead of `train.tune`.

    python benchmarks/tune.py [--trials 4] [--epochs 2]

Runs `--trials` tiny trials through `train.tune.run_study` (SQLite storage, heartbeats, median
pruner off so every trial trains fully, reports written at the end), then trains the very same
composed configs with plain `train.training.trainer.fit`, in one process each time. Prints one JSON object:
seconds per trial both ways, the driver's overhead per trial (compose + storage + lock + callback +
heartbeat) and the time to write the reports (CSV, best config, three plots).
Figures and the machine: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    import optuna
    import torch

    from tests.trainer_data import build_tiny_ready
    from train.tune.reports import write_reports
    from train.tune.space import compose
    from train.tune.storage import load_study
    from train.tune.study import worker
    from train.training.trainer import fit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_tiny_ready(tmp / "tiny") + [f"trainer.max_epochs={args.epochs}"]
        overrides = base + ["tune=small", f"tune.dir={tmp / 'study'}", f"tune.n_trials={args.trials}",
                            "tune.pruner.type=none"]
        fit(compose(base + [f"trainer.run_dir={tmp / 'warm'}"]))  # imports, numba caches: not timed

        cfg = compose(overrides)
        t0 = time.perf_counter()
        study = load_study(cfg)
        worker(cfg, overrides)
        t1 = time.perf_counter()
        write_reports(cfg, study)
        t2 = time.perf_counter()

        t3 = time.perf_counter()
        for t in study.trials:  # the same configs, trained directly
            plain = compose(t.user_attrs["overrides"] + [f"trainer.run_dir={tmp / 'plain' / str(t.number)}"])
            fit(plain)
        t4 = time.perf_counter()

    n = len(study.trials)
    tuned, plain = (t1 - t0) / n, (t4 - t3) / n
    print(json.dumps({
        "trials": n, "epochs": args.epochs, "tune_s_per_trial": round(tuned, 3), "fit_s_per_trial": round(plain, 3),
        "overhead_s_per_trial": round(tuned - plain, 3), "overhead_pct": round(100 * (tuned - plain) / plain, 1),
        "reports_s": round(t2 - t1, 3), "machine": f"{platform.machine()} {platform.python_version()}",
    }))


if __name__ == "__main__":
    main()
