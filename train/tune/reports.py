"""The study's reports: `trials.csv`, `best/` (the best trial as a full config, its overrides and
its config groups) and the PNG plots."""
from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict

from common.atomic import atomic_path
from train.tune.space import RUN_DIR_KEY, compose, format_value
from train.tune.storage import study_dir

log = logging.getLogger("train.tune")


TRAIN_GROUPS = ("model", "trainer", "rl")  # the config groups params.yaml selects for `dvc repro train`


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
