"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
The Optuna study driver on the real trainer and a tiny real store (store -> metrics -> export).
The rest is tests/unit/test_tune.py."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from omegaconf import OmegaConf

from common.config import REPO_ROOT
from train.tune import study as tune
from train.tune.storage import study_lock
from tests.unit.test_tune import FINISHED, _overrides  # noqa: F401 (fixtures and helpers shared with the unit tests)


def _cli(tiny, study_dir, *extra):
    hydra_dir = study_dir.parent / f"hydra-{study_dir.name}-{time.monotonic_ns()}"
    return [sys.executable, "-m", "train.tune", *_overrides(tiny, study_dir, *extra),
            f"hydra.run.dir={hydra_dir}"]


def _load(study_dir, name="small"):
    with study_lock(study_dir):  # the lock the workers take to create the storage
        return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def _val_losses(run_dir):
    with open(run_dir / "metrics.csv") as fh:
        return [float(r["val_loss"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def study3(tiny, tmp_path_factory):
    """A finished 3-trial study, run in-process."""
    study_dir = tmp_path_factory.mktemp("study3") / "s"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = tune.run_study(_overrides(tiny, study_dir, "tune.n_trials=3"))
    return study, study_dir


def test_study_of_tiny_trials_runs_to_completion(study3):
    study, study_dir = study3
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state in FINISHED for t in trials)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= 2
    for t in trials:
        run_dir = study_dir / "trials" / f"{t.number:04d}"
        assert t.user_attrs["run_dir"] == str(run_dir)
        assert (run_dir / "checkpoints" / "last.pt").is_file()
        # every validation of the run reached the pruner, epoch by epoch, with the trainer's numbers
        assert list(t.intermediate_values.values()) == pytest.approx(_val_losses(run_dir), rel=1e-12)
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
        assert 0.0 < t.params["dropout"] <= 0.3 and 1e-3 <= t.params["lr"] <= 3e-2
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == min(t.intermediate_values.values())
            assert json.loads((run_dir / "metrics.json").read_text())["best_val_loss"] == pytest.approx(t.value)
    # the trials differ: the sampled values reached the trainer
    assert len({t.value for t in trials}) == 3

    with open(study_dir / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["number"]), r["state"]) for r in rows] == [(t.number, t.state.name) for t in trials]
    assert [float(r["params_lr"]) for r in rows] == [t.params["lr"] for t in trials]
    for png in ("history.png", "importances.png"):
        assert (study_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = (study_dir / "best" / "config.yaml").read_text()
    assert f"lr: {study.best_params['lr']}" in best and "tune:" not in best
    # config-group options for params.yaml / dvc exp run, named after the study
    groups = study_dir / "best" / "conf"
    assert OmegaConf.load(groups / "trainer" / "small.yaml").optimizer.config.lr == study.best_params["lr"]
    assert OmegaConf.load(groups / "model" / "small.yaml").dropout == study.best_params["dropout"]
    assert (groups / "rl" / "small.yaml").is_file()


def test_best_config_retrains_to_the_trials_validation_loss(study3, tmp_path):
    study, study_dir = study3
    best_dir = study_dir / "best"
    proc = subprocess.run([sys.executable, "-m", "train", "--config-path", str(best_dir), "--config-name", "config",
                           f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((best_dir / "run" / "metrics.json").read_text())
    assert summary["best_val_loss"] == study.best_value  # deterministic CPU: bit for bit
    assert _val_losses(best_dir / "run") == list(study.best_trial.intermediate_values.values())


def test_a_bad_trial_is_pruned_by_the_median_pruner(study3, tiny):
    study, study_dir = study3
    # lr far outside the space (widened for this trial): the first validation is far above the median
    bad = {"lr": 5.0, "dropout": 0.0}
    study.enqueue_trial(bad)
    study = tune.run_study(_overrides(tiny, study_dir, "tune.n_trials=4", "tune.space.lr.high=10.0"))
    trial = study.trials[3]
    assert trial.params == bad
    assert trial.state == optuna.trial.TrialState.PRUNED
    completed = [t for t in study.trials[:3] if t.state == optuna.trial.TrialState.COMPLETE]
    if trial.intermediate_values:  # pruned by the median rule after epoch 1 (not by a NaN loss)
        assert list(trial.intermediate_values) == [1]
        assert trial.intermediate_values[1] > max(t.intermediate_values[1] for t in completed)
    assert len(_val_losses(study_dir / "trials" / "0003")) < len(_val_losses(study_dir / "trials" / "0000"))


def _wait_for(pred, proc, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the study exited early:\n{proc.stdout.read()[-3000:]}")
        try:
            if pred():
                return
        except Exception:  # storage or table not created yet
            pass
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the study")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_killed_study_resumes_without_repeating_finished_trials(tiny, tmp_path):
    study_dir = tmp_path / "s"
    # 12 epochs: trial 1 (which the median pruner cannot stop: one complete trial before it) spends
    # eleven epochs between its first report and its end. A tiny epoch takes ~0.2 s, so with 3 epochs
    # the 0.2 s poll below could miss the whole window on a busy machine and the test raced.
    cmd = _cli(tiny, study_dir, "tune.n_trials=3", "trainer.max_epochs=12")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def mid_second_trial():
        ts = _load(study_dir).trials
        return len(ts) >= 2 and ts[1].state == optuna.trial.TrialState.RUNNING and ts[1].intermediate_values

    _wait_for(mid_second_trial, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t for t in _load(study_dir).trials}
    assert before[0].state in FINISHED and before[1].state == optuna.trial.TrialState.RUNNING

    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=170)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _load(study_dir).trials
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 3
    # trial 0 was not run again: same record, and no other finished trial trained in its directory
    assert trials[0].datetime_complete == before[0].datetime_complete and trials[0].value == before[0].value
    run_dirs = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(run_dirs)) == 3
    # the killed trial 1 was failed by its stale heartbeat and re-queued with the same params; the retry
    # resumed in trial 1's directory, keeping the epoch it had reported
    assert trials[1].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 1]
    assert len(retry) == 1 and retry[0].state in FINISHED
    assert retry[0].params == trials[1].params
    assert retry[0].user_attrs["run_dir"] == trials[1].user_attrs["run_dir"]
    assert retry[0].intermediate_values[1] == trials[1].intermediate_values[1]
    assert f"resumed from {trials[1].user_attrs['run_dir']}/checkpoints/last.pt" in again.stdout


def test_two_processes_share_one_sqlite_study(tiny, tmp_path):
    study_dir = tmp_path / "s"
    # the first command also spawns a second worker process of its own (tune.n_jobs=2)
    procs = [subprocess.Popen(_cli(tiny, study_dir, "tune.n_trials=3", f"tune.n_jobs={n}"), cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in (2, 1)]
    outs = [p.communicate(timeout=170)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    trials = _load(study_dir).trials
    assert [t.number for t in trials] == [0, 1, 2]  # the requested count, no duplicates, no extras
    assert all(t.state in FINISHED for t in trials)
    assert len({t.user_attrs["run_dir"] for t in trials}) == 3
    assert len({t.params["lr"] for t in trials}) == 3  # different sampler seeds in the processes
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the work was shared
