"""A run's bookkeeping: what rank 0 writes beside the checkpoints, and the sums behind it.

`trainer.logger` picks the loggers (`tensorboard`, `wandb`, `mlflow`, `csv`); each is one small
class behind one interface (`scalars(values, step)`, `epoch_row(row)`, `close(status)`, `run_id`),
so every logger gets the same scalars at the same steps. `RunLog` holds the chosen ones and writes
`metrics.json` (the run's summary, for `dvc metrics`) whatever the choice; `write_run_files` puts
`config.yaml` and `versions.json` beside the checkpoints. Every file is written atomically
(`common.atomic`). The tracker clients (`wandb`, `mlflow`) are optional extras, imported only
when chosen. Kept out of trainer.py so the loop reads in one sitting.
"""
from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.atomic import atomic_path

CSV_FIELDS = ["epoch", "global_step", "train_loss", "val_loss", "lr", "samples_per_s", "data_wait_fraction"]
# logger -> (module it needs, the pyproject extra that installs it)
CLIENTS = {"wandb": ("wandb", "hierdrums[wandb]"), "mlflow": ("mlflow", "hierdrums[mlflow]")}
LOGGERS = ("tensorboard", "wandb", "mlflow", "csv")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "numpy", "numba", "zarr", "hydra-core", "omegaconf", "dask", "tensorboard",
                "wandb", "mlflow-skinny", "mlflow"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def write_text(path: Path, text: str) -> None:
    """Write a whole file through a temporary sibling: a crash leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def logger_names(tc) -> list[str]:
    value = tc.get("logger")
    return [] if value is None else [str(v) for v in ([value] if isinstance(value, str) else value)]


def check_loggers(tc) -> list[str]:
    """Config problems of trainer.logger: unknown names, and chosen trackers whose client is missing."""
    names = logger_names(tc)
    problems = [f"trainer.logger: unknown logger {n!r} (choose from {list(LOGGERS)}, or [] for none)"
                for n in names if n not in LOGGERS]
    for name in dict.fromkeys(n for n in names if n in CLIENTS):
        module, extra = CLIENTS[name]
        try:
            importlib.import_module(module)
        except ImportError as e:
            problems.append(f"trainer.logger includes {name!r} but its client is not installed ({e}): "
                            f"pip install '{extra}', or drop {name} from trainer.logger")
    return problems


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --- the loggers: one interface ---------------------------------------------------------------

class Logger:
    """What the trainer calls; a logger overrides what it records. `run_id`: the tracker's run to
    continue on resume (None where there is none)."""
    run_id: str | None = None

    def scalars(self, values: dict, step: int) -> None: ...

    def epoch_row(self, row: dict) -> None: ...

    def close(self, status: str) -> None: ...


class TensorBoardLogger(Logger):
    def __init__(self, run_dir: Path, config: dict, **_):
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"))
        # hyperparameters as the config's YAML text: hparams would open a second run per write
        self.tb.add_text("config", "```\n" + OmegaConf.to_yaml(config) + "\n```")

    def scalars(self, values, step):
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)

    def close(self, status):
        self.tb.close()


class CsvLogger(Logger):
    """metrics.csv: one row per epoch (DVC plots); rewritten whole, atomically, at every row."""

    def __init__(self, run_dir: Path, resumed_epoch: int, fields: list[str], **_):
        self.path, self.fields = run_dir / "metrics.csv", fields
        self.rows = []
        if resumed_epoch > 0 and self.path.exists():  # keep the epochs the checkpoint has seen
            with open(self.path, newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= resumed_epoch]
        self._write()

    def epoch_row(self, row):
        self.rows.append({k: row.get(k, "") for k in self.fields})
        self._write()

    def _write(self):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())


class WandbLogger(Logger):
    """Weights & Biases; offline (nothing leaves the machine, `wandb sync` later) unless
    trainer.wandb.mode, WANDB_MODE or an API key (WANDB_API_KEY) says otherwise."""

    def __init__(self, run_dir: Path, config: dict, tc, run_id: str | None, **_):
        import wandb

        wc = plain(tc.get("wandb"))
        mode = wc.get("mode") or os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=wc.get("project") or "hierdrums", entity=wc.get("entity"),
                              name=str(tc.run_name), dir=str(run_dir), id=run_id,
                              resume="allow" if run_id else None, mode=mode, config=config,
                              settings=wandb.Settings(**(wc.get("settings") or {})))
        self.run_id = self.run.id
        # steps on their own axis: a resumed run repeats the steps after its checkpoint, which
        # wandb's own `step` would drop as going backwards
        self.run.define_metric("trainer/global_step")
        self.run.define_metric("*", step_metric="trainer/global_step")
        self.ckpt_dir = Path(tc.checkpoint_dir).resolve()

    def scalars(self, values, step):
        self.run.log({**values, "trainer/global_step": step})

    def close(self, status):
        import wandb

        if status == "FINISHED" and self.ckpt_dir.is_dir():   # a reference: the files stay on disk
            art = wandb.Artifact(f"checkpoints-{self.run_id}", type="model")
            art.add_reference(self.ckpt_dir.as_uri(), checksum=False)
            self.run.log_artifact(art)
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class MlflowLogger(Logger):
    """MLflow through its client; a SQLite store under the run directory unless
    trainer.mlflow.tracking_uri names another (a server, a database)."""

    def __init__(self, run_dir: Path, config: dict, tc, run_id: str | None, **_):
        from mlflow.tracking import MlflowClient

        mc = plain(tc.get("mlflow"))
        run_dir.mkdir(parents=True, exist_ok=True)
        uri = mc.get("tracking_uri") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        name = str(mc.get("experiment") or "hierdrums")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            name, artifact_location=(run_dir / "mlartifacts").resolve().as_uri())
        params = {k: str(v)[:6000] for k, v in flatten(config).items()}
        logged = self._logged_params(run_id, uri) if run_id else None
        if logged is not None:                       # a resumed run: the same MLflow run again
            self.client.update_run(run_id, status="RUNNING")
            params = {k: v for k, v in params.items() if k not in logged}   # MLflow params never change
        else:
            run_id = self.client.create_run(exp_id, run_name=str(tc.run_name)).info.run_id
        self.run_id = run_id
        self._log_params(params)
        self.client.set_tag(run_id, "checkpoint_dir", str(Path(tc.checkpoint_dir).resolve()))

    def _logged_params(self, run_id: str, uri: str) -> dict | None:
        """The params of the stored run, or None (with a warning) when this store does not hold it."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).data.params
        except MlflowException:
            print(f"warning: MLflow run {run_id} of the checkpoint is not in {uri}: starting a new run",
                  file=sys.stderr, flush=True)
            return None

    def _log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):          # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def scalars(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def close(self, status):
        self.client.set_terminated(self.run_id, status=status)


CLASSES = {"tensorboard": TensorBoardLogger, "csv": CsvLogger, "wandb": WandbLogger, "mlflow": MlflowLogger}


class RunLog:
    """Rank 0's outputs: the chosen loggers, and metrics.json (DVC metrics) whatever they are.
    A context manager: leaving it closes every logger, marking the tracker run FINISHED, KILLED
    (an Optuna prune, Ctrl-C) or FAILED (anything else, e.g. a NaN loss)."""

    def __init__(self, cfg: DictConfig, enabled: bool, resumed_epoch: int, run_ids: dict,
                 extra_fields: list[str] = ()):
        tc = cfg.trainer
        self.enabled, self.run_dir = enabled, Path(tc.run_dir)
        self.loggers: dict[str, Logger] = {}
        if not enabled:
            return
        kw = dict(run_dir=self.run_dir, config=OmegaConf.to_container(cfg, resolve=True), tc=tc,
                  resumed_epoch=resumed_epoch, fields=CSV_FIELDS + list(extra_fields))
        try:
            for name in dict.fromkeys(logger_names(tc)):
                self.loggers[name] = CLASSES[name](run_id=run_ids.get(name), **kw)
        except BaseException:
            self.close("FAILED")
            raise

    def run_ids(self) -> dict:
        """{logger: tracker run id} to store in the checkpoint, so a resume continues those runs."""
        return {k: lg.run_id for k, lg in self.loggers.items() if lg.run_id is not None}

    def scalars(self, values: dict, step: int) -> None:
        for lg in self.loggers.values():
            lg.scalars(values, step)

    def epoch_row(self, row: dict) -> None:
        for lg in self.loggers.values():
            lg.epoch_row(row)

    def summary(self, values: dict) -> None:
        if self.enabled:
            write_text(self.run_dir / "metrics.json", json.dumps(values, indent=1))

    def close(self, status: str = "FINISHED") -> None:
        loggers, self.loggers = self.loggers, {}
        for lg in loggers.values():
            with contextlib.suppress(Exception):   # one tracker's failure must not hide the run's error
                lg.close(status)

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        pruned = kind is not None and (issubclass(kind, KeyboardInterrupt) or kind.__name__ in ("TrialPruned", "Preempted"))
        self.close("FINISHED" if kind is None else "KILLED" if pruned else "FAILED")


@dataclass
class LogWindow:
    """Sums of the step logs since the last log line, across epoch boundaries; the means divide
    by the optimizer steps actually summed."""
    sums: dict = field(default_factory=dict)
    steps: int = 0

    def add(self, step_logs: dict) -> None:
        for k, v in step_logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def reset(self) -> None:
        self.sums, self.steps = {}, 0


@dataclass
class EpochStats:
    """Per-epoch sums for the epoch row and progress bar."""
    loss_sum: float = 0.0
    loss_n: int = 0
    wait_sum: float = 0.0
    time_sum: float = 0.0
    samples: int = 0

    def add(self, step_logs: dict, wait: float, dt: float, samples: int) -> None:
        self.wait_sum, self.time_sum, self.samples = self.wait_sum + wait, self.time_sum + dt, self.samples + samples
        self.loss_sum, self.loss_n = self.loss_sum + step_logs["loss"], self.loss_n + 1

    def perf(self) -> dict:
        return {"samples_per_s": self.samples / max(self.time_sum, 1e-9),
                "data_wait_fraction": self.wait_sum / max(self.time_sum, 1e-9)}


def write_run_files(cfg: DictConfig, ckpt_dir: Path) -> None:
    """The composed config and package versions beside the checkpoints (rank 0 only)."""
    write_text(ckpt_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_text(ckpt_dir / "versions.json", json.dumps(package_versions(), indent=1))
