"""TensorBoard and MLflow mirrors of a run: written, readable, resumed, local only."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch

from core.data import IncompleteDataset, split_by_subject
from core.models import MVAE, MVAEConfig
from core.training import Trainer, TrainerConfig, monitoring
from core.training.monitoring import (
    MLflowCallback,
    MonitoringConfig,
    MonitoringError,
    TensorBoardCallback,
    mlflow_key,
    monitoring_callbacks,
    read_tensorboard_scalars,
)

DIMS = {"a": (6,), "b": (4,)}
_EXTRA = "the monitoring extra is not installed (pip install -e '.[monitoring]')"
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboardX") is None, reason=_EXTRA)
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason=_EXTRA)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def splits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 2, generator=g)
    data = {m: z @ torch.randn(2, s[0], generator=g) for m, s in DIMS.items()}
    masks = {"a": torch.rand(40, generator=g) > 0.2, "b": torch.ones(40, dtype=torch.bool)}
    return split_by_subject(IncompleteDataset(data, masks), (0.75, 0.25, 0.0), seed=0)[:2]


def train(run_dir, callbacks, epochs, resume=False):
    torch.manual_seed(0)
    model = MVAE(MVAEConfig(n_modalities=2, latent_dim=2, input_dims=DIMS, warmup=1))
    config = TrainerConfig(num_epochs=epochs, batch_size=10, device="cpu", seed=1)
    return Trainer(model, *splits(), config, callbacks=callbacks, run_dir=run_dir).train(resume_from=run_dir if resume else None)


def csv_column(run_dir, column):
    with open(run_dir / "metrics.csv", encoding="utf-8") as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]


@needs_tensorboard
def test_tensorboard_scalars_match_the_run_and_resume_without_duplicates(tmp_path):
    train(tmp_path, [TensorBoardCallback(log_every_n_steps=1)], epochs=2)
    train(tmp_path, [TensorBoardCallback(log_every_n_steps=1)], epochs=4, resume=True)
    scalars = read_tensorboard_scalars(tmp_path / "tensorboard")
    assert [step for step, _ in scalars["val/loss"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["val/loss"]] == pytest.approx(csv_column(tmp_path, "val/loss"), rel=1e-6)
    assert {"train/loss", "train/kl", "lr", "seconds"} <= set(scalars)
    steps = read_tensorboard_scalars(tmp_path / "tensorboard" / "steps")["step/loss"]
    assert [step for step, _ in steps] == list(range(1, 4 * 3 + 1))  # 30 training subjects, batches of 10


@needs_tensorboard
def test_a_restart_marker_drops_the_repeated_epochs(tmp_path):
    log_dir = tmp_path / "tb"
    from tensorboardX import SummaryWriter

    first = SummaryWriter(str(log_dir), filename_suffix=".first")
    for step in (1, 2, 3):
        first.add_scalar("val/loss", float(step), step)
    first.close()
    second = SummaryWriter(str(log_dir), purge_step=3, filename_suffix=".second")  # resumed from epoch 2
    second.add_scalar("val/loss", 30.0, 3)
    second.close()
    assert read_tensorboard_scalars(log_dir)["val/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


@needs_mlflow
def test_mlflow_run_holds_params_metrics_status_and_continues_after_resume(tmp_path):
    train(tmp_path, [MLflowCallback(experiment="tests")], epochs=2)
    pointer = json.loads((tmp_path / "mlflow" / "run.json").read_text(encoding="utf-8"))
    assert pointer["tracking_uri"].startswith("sqlite:///") and (tmp_path / "mlflow" / "mlflow.db").is_file()
    train(tmp_path, [MLflowCallback(experiment="tests")], epochs=4, resume=True)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(pointer["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == pointer["run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["mmvae.status"] == "completed"
    assert run.data.params["training.batch_size"] == "10" and run.data.params["model.name"] == "MVAE"
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx(csv_column(tmp_path, "val/loss"), rel=1e-6)
    assert mlflow_key("train/elbo[a+b]") == "train/elbo_a_b" and "train/elbo_a_b" in run.data.metrics


@needs_tensorboard
@needs_mlflow
def test_config_switches_callbacks_on_and_refuses_remote_stores(monkeypatch):
    assert monitoring_callbacks(None) == [] and monitoring_callbacks(MonitoringConfig()) == []
    both = monitoring_callbacks(MonitoringConfig(tensorboard=True, mlflow=True))
    assert [type(c) for c in both] == [TensorBoardCallback, MLflowCallback]
    with pytest.raises(MonitoringError, match="not a local store"):
        MLflowCallback(tracking_uri="https://mlflow.example.org")
    with pytest.raises(ValueError):
        MonitoringConfig(tensorboard=True, tensorbaord=True)


def test_a_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(monitoring.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboardX", "tensorboard", "mlflow") else real(name, *a))
    with pytest.raises(MonitoringError, match=r"pip install tensorboardX==2\.6\.5"):
        TensorBoardCallback()
    with pytest.raises(MonitoringError, match=r"pip install mlflow-skinny==3\.17\.2"):
        MLflowCallback()
