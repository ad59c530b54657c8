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
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import math
import multiprocessing
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.storages._heartbeat import BaseHeartbeat  # no public name; RDB storages implement it
from omegaconf import DictConfig, OmegaConf, open_dict

import common.config
from common.atomic import atomic_path

log = logging.getLogger("train.tune")

RUN_DIR_KEY = "trainer.run_dir"  # the trainer's per-run directory (checkpoints, logs, config)
TRAIN_GROUPS = ("model", "trainer", "rl")  # the config groups params.yaml selects for `dvc repro train`


# ---------------------------------------------------------------- config -> overrides

def compose(overrides: list[str]) -> DictConfig:
    """Compose the project config; inside a running Hydra app reuse its (already initialised) Hydra."""
    if GlobalHydra.instance().is_initialized():
        return hydra.compose(config_name="config", overrides=list(overrides))
    return common.config.compose(list(overrides))


def override_key(override: str) -> str:
    """The key (or config group) an override string sets: `+model.x=1` -> `model.x`."""
    return OverridesParser.create().parse_override(override).key_or_group


def format_value(value: Any) -> str:
    """A Python value as Hydra override syntax (floats keep full precision; strings are quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_group(path: str) -> bool:
    """A config group (`model`, `rl`) is chosen by name (`model=lstm`); a value by `key=value`."""
    return (common.config.CONF_DIR / path.replace(".", "/")).is_dir()


def suggest(trial: optuna.Trial, name: str, spec: Mapping[str, Any]) -> Any:
    """Sample one parameter of `tune.space` with Optuna's suggest API."""
    kind = spec.get("type")
    if kind == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step"))
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1))
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    raise ValueError(f"tune.space.{name}: type must be float, int or categorical, got {kind!r}")


def space_paths(spec: Mapping[str, Any]) -> list[str]:
    """`path` may be one config path or a list (one sampled value set at every path, e.g. hidden sizes)."""
    path = spec.get("path")
    paths = [path] if isinstance(path, str) else list(path or [])
    if not paths:
        raise ValueError(f"tune.space entry {dict(spec)} needs a `path` (config key or group)")
    return paths


def param_overrides(space: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """Override strings that put the sampled `params` at their config paths."""
    out = []
    for name, spec in space.items():
        if name in params:
            out += [f"{p}={format_value(params[name])}" for p in space_paths(spec)]
    return out


def check_space(base: DictConfig, space: Mapping[str, Any]) -> None:
    """Fail before any trial runs if a search-space entry is malformed or its path is not in the config."""
    for name, spec in space.items():
        if spec.get("type") not in ("float", "int", "categorical"):
            raise ValueError(f"tune.space.{name}: type must be float, int or categorical, got {spec.get('type')!r}")
        need = ["choices"] if spec["type"] == "categorical" else ["low", "high"]
        if missing := [k for k in need if spec.get(k) is None]:
            raise ValueError(f"tune.space.{name}: a {spec['type']} parameter needs {missing}")
        for path in space_paths(spec):
            if not is_group(path) and OmegaConf.select(base, path, default="__missing__") == "__missing__":
                raise ValueError(f"tune.space.{name}: config path {path!r} does not exist in the composed config")
    check_objective(base, space)


def check_objective(base: DictConfig, space: Mapping[str, Any]) -> None:
    """Refuse a space the objective cannot judge: reward-shaping settings (rl.*) only pull the
    model away from the data's likelihood, so against validation metrics alone the search could
    only prefer the weakest reward. Their objective must score generated windows too."""
    rl = [name for name, spec in space.items() if any(p == "rl" or p.startswith("rl.") for p in space_paths(spec))]
    gen = base.tune.objective.get("generated") or {}
    if rl and float(gen.get("weight", 0.0) or 0.0) <= 0:
        raise ValueError(f"tune.space {rl} search reward shaping (rl.*), but the objective is validation "
                         f"{base.tune.objective.metric!r} only, which reward shaping can only worsen: set "
                         "tune.objective.generated.weight > 0 (as tune=rewards does), or drop them from tune.space")


# ---------------------------------------------------------------- study set-up

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


# ---------------------------------------------------------------- one trial

class Objective:
    """Turns the metrics the trainer passes after each validation into the value Optuna optimises.

    value(epoch) = metrics[tune.objective.metric] + Σ_k w_k · metrics[k]   (k, w_k in tune.objective.terms)
    where `metrics` are the validation means the trainer passes (`loss`, `step`, `bar`, `phrase`, …).
    The trial's result is the best value over its epochs (min or max by `tune.direction`).
    """

    def __init__(self, cfg: DictConfig, trial: optuna.Trial, config: DictConfig,
                 reported: Mapping[int, float] | None = None):
        self.config = config  # the trial's composed training config
        self.metric = cfg.tune.objective.metric
        self.terms = dict(cfg.tune.objective.terms or {})
        self.better = min if cfg.tune.direction == "minimize" else max
        self.trial = trial
        self.values: dict[int, float] = dict(reported or {})

    def value(self, metrics: Mapping[str, Any]) -> float:
        missing = [k for k in [self.metric, *self.terms] if k not in metrics]
        if missing:
            raise KeyError(f"tune.objective: metrics {missing} not among the trainer's validation metrics {sorted(metrics)}")
        return float(metrics[self.metric]) + sum(float(w) * float(metrics[k]) for k, w in self.terms.items())

    def __call__(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """The trainer's validation callback: report, then let the pruner decide (raises TrialPruned)."""
        value = self.value(metrics)
        if not math.isfinite(value):
            # A diverged run: nothing to compare, nothing to gain from more epochs.
            raise optuna.TrialPruned(f"objective is {value} at epoch {epoch}")
        self.values[int(epoch)] = value
        self.trial.report(value, int(epoch))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (objective {value:.6g})")

    def best(self) -> float:
        if not self.values:
            raise RuntimeError("the trainer finished without a validation: set trainer.check_val_every_n_epoch")
        return self.better(self.values.values())


def generated_distance(cfg: DictConfig, spec: DictConfig) -> float:
    """How far the trial's samples are from the data: mean over `spec.metrics` of (1 − OA), OA the
    overlapping area of the intra-set (validation) and inter-set (validation × generated) distance
    distributions of a window metric (Yang & Lerch 2020, as `python -m train.evaluate` reports it).
    0 = generated windows indistinguishable from validation windows, 1 = disjoint. Samples: windows
    of seq_len generated from nothing by the run's best checkpoint (temperature 1, seed spec.seed)."""
    from train.evaluate.run import generated_vs_real
    from pipeline.splits import monitored_split
    from train.evaluate.windows import split_windows
    from train.training.checkpoint import load_for_inference

    model, _, _ = load_for_inference(cfg.trainer.checkpoint_dir)
    seq_len = int(cfg.window.seq_len)
    windows = split_windows(cfg.paths.ready, monitored_split(cfg.paths.ready, "tune"), seq_len, seq_len, int(cfg.window.steps_per_bar),
                            int(cfg.window.bars_per_phrase))
    ecfg = OmegaConf.create({"window": cfg.window, "metrics": cfg.metrics, "evaluate": {"generated": {
        "max_samples": int(spec.num_samples), "temperature": 1.0, "top_p": None, "seed": int(spec.seed),
        "max_set_size": 500}}})
    comparison, *_ = generated_vs_real(ecfg, model, windows, windows.rows.shape[-1])
    missing = [m for m in spec.metrics if m not in comparison]
    if missing:
        raise KeyError(f"tune.objective.generated.metrics: {missing} not among the compared metrics {sorted(comparison)}")
    return float(sum(1.0 - comparison[m]["overlap_area"] for m in spec.metrics) / len(spec.metrics))


def run_training(cfg: DictConfig, on_validation: Callable[[int, Mapping[str, Any]], None]) -> dict:
    """The trainer's entry function, the same one `python -m train` calls (one process per trial)."""
    from train.training.trainer import fit

    return fit(cfg, on_validation=on_validation)


def trial_config(cfg: DictConfig, base_overrides: list[str], params: Mapping[str, Any], run_dir: Path) -> tuple[DictConfig, list[str]]:
    """Compose a trial's config: the command's overrides, tune.trial_overrides, the sampled values, its run dir."""
    space = cfg.tune.space
    sampled = param_overrides(space, params)
    fixed = list(cfg.tune.trial_overrides or [])
    replaced = {override_key(o) for o in sampled + fixed} | {RUN_DIR_KEY}
    kept = [o for o in base_overrides if override_key(o) not in replaced and override_key(o).split(".")[0] != "tune"]
    overrides = kept + fixed + sampled
    return compose(overrides + [f"{RUN_DIR_KEY}={format_value(str(run_dir))}"]), overrides


def count_trials(study: optuna.Study) -> int:
    """Trials that use up `tune.n_trials`: all but WAITING ones and FAILED ones re-queued by a retry."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}  # RetryHeartbeatStaleTrialCallback's record
    waiting = optuna.trial.TrialState.WAITING
    return sum(t.state != waiting and t.number not in retried for t in trials)


def ask(cfg: DictConfig, study: optuna.Study) -> tuple[optuna.Trial | str, dict[str, Any]]:
    """Under the study lock: re-queue dead trials, then start a trial; "done" once n_trials is
    reached, "wait" while trials of other (possibly dead) workers still run and could be re-queued."""
    with study_lock(study_dir(cfg)), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        optuna.storages.fail_stale_trials(study)
        if count_trials(study) >= cfg.tune.n_trials:
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            return ("wait" if running and heartbeat_interval(study) else "done"), {}
        # One sampler per trial, seeded by the trial count: reproducible, and never the same seed in two processes.
        seed = None if cfg.tune.seed is None else int(cfg.tune.seed) + len(study.get_trials(deepcopy=False))
        study.sampler = make_sampler(cfg, seed)
        trial = study.ask()
        params = {name: suggest(trial, name, spec) for name, spec in cfg.tune.space.items()}
    return trial, params


def start_trial(cfg: DictConfig, study: optuna.Study, trial: optuna.Trial, params: Mapping[str, Any],
                base_overrides: list[str]) -> Objective:
    """Compose the trial's config and run dir; a re-queued trial carries on from its original."""
    frozen = study._storage.get_trial(trial._trial_id)
    # A re-queued trial (its process died) inherits its original's run dir and reported epochs,
    # so the trainer resumes from that run's last.pt.
    run_dir = Path(frozen.user_attrs.get("run_dir") or study_dir(cfg) / "trials" / f"{trial.number:04d}")
    tcfg, overrides = trial_config(cfg, base_overrides, params, run_dir)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    log.info("trial %d: %s -> %s", trial.number, params, run_dir)
    return Objective(cfg, trial, tcfg, frozen.intermediate_values)


def run_trial(cfg: DictConfig, study: optuna.Study, base_overrides: list[str]) -> bool:
    """Run one trial to COMPLETE / PRUNED / FAIL; False once the study has its n_trials."""
    trial, params = ask(cfg, study)
    if trial == "wait":
        time.sleep(min(heartbeat_interval(study), 2.0))  # poll: the running trials finish or go stale
        return True
    if trial == "done":
        return False
    try:
        objective = start_trial(cfg, study, trial, params, base_overrides)
        with heartbeat(study, trial):
            run_training(objective.config, objective)
            value = final_value(cfg, trial, objective)
    except (optuna.TrialPruned, FloatingPointError) as e:  # FloatingPointError: the trainer saw a NaN/inf loss
        log.info("trial %d pruned: %s", trial.number, e)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return True
    except Exception:
        log.exception("trial %d failed", trial.number)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if cfg.tune.catch_failures:
            return True
        raise
    except BaseException:  # Ctrl-C: record the trial as failed, then stop
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    study.tell(trial, value)
    log.info("trial %d: objective %.6g", trial.number, value)
    return True


def final_value(cfg: DictConfig, trial: optuna.Trial, objective: Objective) -> float:
    """The trial's value: its best epoch, plus weight · generated_distance when that term is on."""
    value = objective.best()
    gen = cfg.tune.objective.get("generated")
    if gen is not None and float(gen.weight) != 0.0:  # judged once, on the finished run's best checkpoint
        distance = generated_distance(objective.config, gen)
        trial.set_user_attr("best_epoch_value", value)
        trial.set_user_attr("generated_distance", distance)
        value += float(gen.weight) * distance
    return value


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


# ---------------------------------------------------------------- reports

def write_reports(cfg: DictConfig, study: optuna.Study) -> dict[str, Path]:
    """trials.csv, best/ (config.yaml, overrides.txt, params.yaml, conf/<group>/<study>.yaml), PNG plots."""
    out = study_dir(cfg)
    written = {"trials": write_trials_csv(study, out / "trials.csv")}
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        written.update(write_best(cfg, study, out / "best"))
    written.update(write_plots(study, out))
    return written


def write_trials_csv(study: optuna.Study, path: Path) -> Path:
    trials = study.get_trials(deepcopy=False)
    names = sorted({p for t in trials for p in t.params})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["number", "state", "value", "epochs", "duration_s", *[f"params_{n}" for n in names], "run_dir"])
        for t in trials:
            duration = t.duration.total_seconds() if t.duration else ""
            w.writerow([t.number, t.state.name, "" if t.value is None else t.value, len(t.intermediate_values),
                        duration, *[t.params.get(n, "") for n in names], t.user_attrs.get("run_dir", "")])
    return path


def write_best(cfg: DictConfig, study: optuna.Study, path: Path) -> dict[str, Path]:
    """The best trial as a full Hydra config (`python -m train --config-path <dir>/best --config-name config`)
    retraining into `<dir>/best/run`, plus its overrides (for params.yaml / `dvc exp run -S`)."""
    best = study.best_trial
    overrides = list(best.user_attrs["overrides"])
    run_dir = path / "run"
    best_cfg = compose(overrides + [f"{RUN_DIR_KEY}={format_value(str(run_dir))}"])
    with open_dict(best_cfg):
        best_cfg.pop("tune", None)  # the search settings are not part of the training run
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "config.yaml") as tmp:
        header = (f"# Best trial {best.number} of study {study.study_name!r}: {cfg.tune.objective.metric} objective = {best.value}\n"
                  f"# Re-train: python -m train --config-path {path} --config-name config\n")
        tmp.write_text(header + OmegaConf.to_yaml(best_cfg))
    with atomic_path(path / "overrides.txt") as tmp:
        tmp.write_text("".join(o + "\n" for o in overrides))
    with atomic_path(path / "params.yaml") as tmp:
        doc = {"trial": best.number, "value": best.value, "params": dict(best.params), "overrides": overrides}
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(doc)))
    # The train stage of dvc.yaml picks model/trainer/rl options by name from params.yaml: the best
    # trial's composed groups as options named after the study can be copied into conf/ and selected.
    plain = compose(overrides)
    for group in TRAIN_GROUPS:
        with atomic_path(path / "conf" / group / f"{study.study_name}.yaml") as tmp:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(f"# {group} of best trial {best.number} of study {study.study_name!r}\n"
                           + OmegaConf.to_yaml(plain[group]))
    return {"best_config": path / "config.yaml", "best_overrides": path / "overrides.txt",
            "best_params": path / "params.yaml", "best_groups": path / "conf"}


def write_plots(study: optuna.Study, out: Path) -> dict[str, Path]:
    """Optimisation history and parameter importances (PED-ANOVA: numpy only, no scikit-learn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots = {
        "history": lambda: ovm.plot_optimization_history(study),
        "importances": lambda: ovm.plot_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()),
        "intermediate": lambda: ovm.plot_intermediate_values(study),
    }
    written = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.filterwarnings("ignore", "The number of trials is too small")  # equal bars say it
                ax = plot()
        except Exception as e:  # e.g. importances need ≥ 2 complete trials that differ
            log.warning("plot %s skipped: %s", name, e)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        with atomic_path(out / f"{name}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written[name] = out / f"{name}.png"
    return written


# ---------------------------------------------------------------- entry points

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
