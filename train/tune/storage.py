"""Where a study lives and how processes share it: the storage (SQLite, an RDB URL or a journal
file), sampler and pruner, the study-directory lock and the trial heartbeats."""
from __future__ import annotations

import contextlib
import fcntl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat  # no public name; RDB storages implement it
from omegaconf import DictConfig, OmegaConf


def study_dir(cfg: DictConfig) -> Path:
    return Path(cfg.tune.dir).resolve()


def make_storage(cfg: DictConfig) -> optuna.storages.BaseStorage:
    """SQLite in the study directory by default; any RDB URL (postgresql://…); or `journal:<file>`.

    SQLite gets a long busy timeout so processes waiting for its write lock queue instead of failing
    with 'database is locked'. Heartbeats let a crashed process's RUNNING trial be marked FAILED and
    re-queued (RetryHeartbeatStaleTrialCallback) by whichever process asks for a trial next.
    """
    tcfg = cfg.tune
    url = tcfg.storage or f"sqlite:///{study_dir(cfg) / 'study.db'}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

        path = url[len("journal:"):]
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    hb = tcfg.heartbeat
    kwargs: dict[str, Any] = {}
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9, and stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hb.interval:
            kwargs = dict(
                heartbeat_interval=int(hb.interval),
                grace_period=int(hb.grace_period),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=hb.max_retry, inherit_intermediate_values=True),
            )
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


def make_sampler(cfg: DictConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    """`tune.sampler.type`: tpe | random | cmaes | qmc | any optuna.samplers class name."""
    names = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler",
             "gp": "GPSampler", "nsga2": "NSGAIISampler"}
    kind = cfg.tune.sampler.type
    cls = getattr(optuna.samplers, names.get(kind, kind), None)
    if cls is None:
        raise ValueError(f"tune.sampler.type: unknown sampler {kind!r} (tpe, random, cmaes, qmc or an optuna.samplers class)")
    return cls(seed=seed, **OmegaConf.to_container(cfg.tune.sampler.config or {}, resolve=True))


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    """`tune.pruner.type`: median (default) | hyperband | successive_halving | percentile | none."""
    names = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner",
             "percentile": "PercentilePruner", "none": "NopPruner", "nop": "NopPruner"}
    kind = cfg.tune.pruner.type
    cls = getattr(optuna.pruners, names.get(kind, kind), None)
    if cls is None:
        raise ValueError(f"tune.pruner.type: unknown pruner {kind!r} (median, hyperband, successive_halving, percentile, none)")
    if cls is optuna.pruners.NopPruner:
        return cls()
    return cls(**OmegaConf.to_container(cfg.tune.pruner.config or {}, resolve=True))


def load_study(cfg: DictConfig) -> optuna.Study:
    """Create or load the study; under the lock, since two processes creating one SQLite schema race."""
    study_dir(cfg).mkdir(parents=True, exist_ok=True)
    with study_lock(study_dir(cfg)):
        return optuna.create_study(
        study_name=cfg.tune.study_name, storage=make_storage(cfg), direction=cfg.tune.direction,
            sampler=make_sampler(cfg, cfg.tune.seed), pruner=make_pruner(cfg), load_if_exists=True,
        )


@contextlib.contextmanager
def study_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock file in the study directory: storage creation and "count trials, then ask"
    are atomic across processes. flock is released by the kernel if the holder dies."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats, or None where the storage has none (journal, heartbeat.interval=0)."""
    storage = study._storage  # an RDBStorage inside Optuna's cache wrapper; both implement BaseHeartbeat
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every `heartbeat_interval` s while it runs (as study.optimize does)."""
    storage = study._storage
    interval = heartbeat_interval(study)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
