"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
trainer.logger: tiny real runs with each logger, read back through the tracker's own.
The rest is tests/unit/test_loggers.py."""
import csv
import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from common.config import REPO_ROOT, compose
from train.training.checkpoint import load_checkpoint
from train.training.trainer import fit
from tests.unit.test_loggers import tiny  # noqa: F401 (fixtures and helpers shared with the unit tests)


def _csv_val(run_dir) -> dict[int, float]:
    """{global_step: val_loss} of metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as fh:
        return {int(r["global_step"]): float(r["val_loss"]) for r in csv.DictReader(fh)}


def wandb_records(path):
    """The records of a W&B offline `.wandb` file: W&B's protobuf `Record`s in its LevelDB-style log
    (a 7-byte file header, then 32 KiB blocks of [crc32, length, type] chunks, FULL=1 … LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, path
    pos, chunk, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:                  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(chunk)
            chunk = b""
            yield rec


def wandb_runs(run_dir) -> list[dict]:
    """Per offline run directory (oldest first): run id, config keys, history rows, artifacts."""
    out = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))):
        run = {"id": None, "config": set(), "history": [], "artifacts": []}
        for rec in wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run["id"] = rec.run.run_id
                run["config"] |= {u.key for u in rec.run.config.update}
            elif kind == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in rec.history.item})
            elif kind == "artifact":
                run["artifacts"].append([m.ref for m in rec.artifact.manifest.contents])
        out.append(run)
    return out


def _train_cli(tiny, run_dir, *extra, env=None):
    cmd = [sys.executable, "-m", "train", *tiny, f"trainer.run_dir={run_dir}",
           f"hydra.run.dir={run_dir}/hydra", *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_wandb_offline_logs_what_metrics_csv_holds_and_resume_continues_the_run(tiny, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}   # no API key: offline
    env.update(WANDB_CONFIG_DIR=str(tmp_path / "cfg"), WANDB_CACHE_DIR=str(tmp_path / "cache"),
               WANDB_DATA_DIR=str(tmp_path / "data"))
    run = tmp_path / "run"
    for epochs in (2, 3):                                  # the second call resumes from last.pt
        out = _train_cli(tiny, run, "trainer.logger=[csv,wandb]", f"trainer.max_epochs={epochs}", env=env)
        assert out.returncode == 0, out.stderr[-3000:]
    first, second = wandb_runs(run)
    assert first["id"] == second["id"] == load_checkpoint(run / "checkpoints" / "last.pt")["trackers"]["wandb"]
    assert {"trainer", "model", "window"} <= first["config"]          # the resolved config
    logged = {row["trainer/global_step"]: row["val/loss"] for r in (first, second) for row in r["history"]
              if "val/loss" in row}
    assert logged == pytest.approx(_csv_val(run)) and len(logged) == 3
    train_steps = [row["trainer/global_step"] for row in first["history"] if "train/loss" in row]
    assert train_steps == [2, 4, 6, 8, 10, 12]                       # trainer=tiny: log_interval 2
    assert all(ref.startswith((run / "checkpoints").as_uri()) for ref in second["artifacts"][0])
    assert not (run / "tb").exists()                                  # only the chosen loggers


def test_mlflow_logs_what_metrics_csv_holds_and_resume_continues_the_run(tiny, tmp_path):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    for epochs in (2, 3):
        fit(compose([*tiny, f"trainer.run_dir={run}", "trainer.logger=[csv,mlflow]",
                     f"trainer.max_epochs={epochs}"]))
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hierdrums")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1                                  # the resume continued the same run
    r = runs[0]
    assert r.info.run_id == load_checkpoint(run / "checkpoints" / "last.pt")["trackers"]["mlflow"]
    assert r.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "val/loss")}
    assert history == pytest.approx(_csv_val(run)) and len(history) == 3
    assert r.data.params["trainer.optimizer.config.lr"] == "0.01" and r.data.params["model.rnn_type"] == "gru"
    assert r.data.tags["checkpoint_dir"] == str((run / "checkpoints").resolve())
    assert {"train/loss", "lr", "grad_norm", "perf/samples_per_s", "perf/data_wait_fraction"} <= set(r.data.metrics)


def test_mlflow_run_is_marked_killed_when_a_trial_is_pruned(tiny, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    def prune(epoch, metrics):
        raise optuna.TrialPruned(f"epoch {epoch}")

    with pytest.raises(optuna.TrialPruned):
        fit(compose([*tiny, f"trainer.run_dir={tmp_path}", "trainer.logger=[mlflow]",
                     "trainer.limit_train_batches=2"]), on_validation=prune)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [r] = client.search_runs([client.get_experiment_by_name("hierdrums").experiment_id])
    assert r.info.status == "KILLED"


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_missing_client_is_a_config_error_naming_the_extra(tiny, tmp_path, name):
    # the client made unimportable, as on a machine without the extra
    code = (f"import sys, runpy; sys.modules[{name!r}] = None; sys.argv = ['train'] + sys.argv[1:]; "
            "runpy.run_module('train', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, *tiny, f"trainer.run_dir={tmp_path}/run",
                          f"hydra.run.dir={tmp_path}/hydra", f"trainer.logger=[tensorboard,{name}]"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"pip install 'hierdrums[{name}]'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
