"""Hyperparameter search with Optuna: `python -m train.tune [overrides]`.

One study = a directory `tune.dir` holding the storage (`study.db`, SQLite, unless `tune.storage`
names another Optuna storage URL), one ordinary training run per trial under `trials/NNNN/`, and the
reports (`trials.csv`, `best/`, PNG plots). A trial is the trainer's own code path: its config is
composed from the same overrides the command got, plus the sampled values (`tune.space`) and its
run directory; after every validation the trainer calls back with the metrics, the objective goes to
`trial.report`, and the pruner may stop the run (the trial is then PRUNED, not FAILED).

Running the same command again continues the study (`load_if_exists`): `tune.n_trials` is the total
the study should reach (like Optuna's n_trials: every trial counts except one re-queued after its
process died), so finished trials are never repeated. Several processes (`tune.n_jobs` spawns them,
or start the command several times; on several machines use a PostgreSQL URL) share the storage: a
file lock around "count, then ask" keeps them from overshooting `n_trials`, and heartbeats mark a
killed process's trial FAILED and re-queue it (its run resumes from its `last.pt`). docs/tuning.md.

Here: the workers and the entry points. Their pieces: `space` (tune.space as overrides), `storage`
(storage, sampler, pruner, lock, heartbeats), `trials` (one trial), `reports` (trials.csv, best/, plots).
"""
from __future__ import annotations

import logging
import multiprocessing
import time

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import common.config
from train.tune.reports import write_reports
from train.tune.space import check_space, compose
from train.tune.storage import load_study, study_dir
from train.tune.trials import run_trial

log = logging.getLogger("train.tune")


def worker(cfg: DictConfig, base_overrides: list[str]) -> None:
    """Run trials until the study has n_trials or this process has run for tune.timeout seconds."""
    study = load_study(cfg)
    start = time.monotonic()
    while cfg.tune.timeout is None or time.monotonic() - start < cfg.tune.timeout:
        if not run_trial(cfg, study, base_overrides):
            break


def _spawned_worker(overrides: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    worker(compose(overrides), overrides)


def run_study(overrides: list[str]) -> optuna.Study:
    """Run (or continue) the study configured by `overrides`; then write the reports."""
    cfg = compose(overrides)
    check_space(cfg, cfg.tune.space)
    study = load_study(cfg)  # creates the storage once, before workers race to do it
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_spawned_worker, args=(list(overrides),)) for _ in range(int(cfg.tune.n_jobs) - 1)]
    for p in procs:
        p.start()
    try:
        worker(cfg, list(overrides))
    finally:
        for p in procs:
            p.join()
    write_reports(cfg, study)
    return study


@hydra.main(config_path=str(common.config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_study(list(HydraConfig.get().overrides.task))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        log.info("best trial %d: %.6g %s -> %s", study.best_trial.number, study.best_value, study.best_params,
                 study_dir(cfg) / "best" / "config.yaml")
