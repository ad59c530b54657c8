"""One trial: ask the study for it (under the lock), compose its config, run the trainer with the
`Objective` as its validation callback, and tell the study how it ended."""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from train.tune.space import RUN_DIR_KEY, compose, format_value, override_key, param_overrides, suggest
from train.tune.storage import heartbeat, heartbeat_interval, make_sampler, study_dir, study_lock

log = logging.getLogger("train.tune")


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
    from pipeline.splits import monitored_split
    from train.evaluate.generated import generated_vs_real
    from train.evaluate.windows import split_windows
    from train.training.checkpoint import load_for_inference

    model, _, _ = load_for_inference(cfg.trainer.checkpoint_dir)
    seq_len = int(cfg.window.seq_len)
    windows = split_windows(cfg.paths.ready, monitored_split(cfg.paths.ready, "tune"), seq_len, seq_len,
                            int(cfg.window.steps_per_bar),
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
