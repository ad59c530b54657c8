"""trainer.logger: tiny real runs with each logger, read back through the tracker's own
client (MLflow) or its offline run directory (W&B), against metrics.csv; resume continues the run."""


import pytest

from common.config import compose
from tests.trainer_data import build_tiny_ready
from train.training.trainer import fit

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_ready(tmp_path_factory.mktemp("ready"))

def test_no_logger_writes_only_the_summary(tiny, tmp_path):
    fit(compose([*tiny, f"trainer.run_dir={tmp_path}", "trainer.logger=[]", "trainer.max_epochs=1"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "checkpoints", "metrics.json"]   # .lock: the run lock

def test_mlflow_resume_into_a_store_without_the_run_starts_a_new_one(tiny, tmp_path, capsys):
    from train.training.runlog import MlflowLogger

    cfg = compose([*tiny, f"trainer.run_dir={tmp_path}"])
    lg = MlflowLogger(run_dir=tmp_path, config={"a": {"b": 1}}, tc=cfg.trainer, run_id="0" * 32)
    lg.close("FINISHED")
    assert lg.run_id != "0" * 32 and f"MLflow run {'0' * 32} of the checkpoint is not in" in capsys.readouterr().err
    assert lg.client.get_run(lg.run_id).data.params == {"a.b": "1"}
