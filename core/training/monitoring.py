"""Optional mirrors of a run in TensorBoard event files and in a local MLflow store.

The run folder (``metrics.csv``, ``status.json``, checkpoints) stays the source of truth; these
callbacks copy the same per-epoch numbers to tools people already use, and never reach the network:

* :class:`TensorBoardCallback` writes event files to ``<run>/tensorboard/`` (view them with
  ``tensorboard --logdir <run>/tensorboard``). It uses ``tensorboardX`` (small, no TensorFlow), or
  ``torch.utils.tensorboard`` when only the ``tensorboard`` package is installed.
* :class:`MLflowCallback` logs params, per-epoch metrics and the final status to an MLflow tracking
  store on disk, by default the SQLite file ``<run>/mlflow/mlflow.db`` (MLflow 3 keeps the plain
  ``./mlruns`` folder store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is
  set). View it with ``mlflow ui --backend-store-uri sqlite:///<run>/mlflow/mlflow.db``. Only local
  ``sqlite:`` and ``file:`` stores are accepted, and MLflow's telemetry is switched off.

Both resume with the run: TensorBoard purges the epochs after the checkpoint it resumes from, and
MLflow continues the same MLflow run (its id is in the callback state and in ``<run>/mlflow/run.json``).
Under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from pydantic.dataclasses import dataclass

from core.config import CONFIG_DICT, advanced, config_to_dict
from core.training.callbacks import Callback, EpochRecord

if TYPE_CHECKING:
    from core.training.trainer import Trainer, TrainingResult

__all__ = [
    "MonitoringConfig",
    "MonitoringError",
    "TensorBoardCallback",
    "MLflowCallback",
    "monitoring_callbacks",
    "read_tensorboard_scalars",
    "PACKAGES",
]

# The versions this project is tested with (pip install "mmvae-workbench[monitoring]").
PACKAGES = {"tensorboardX": "tensorboardX==2.6.5", "mlflow": "mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1"}


class MonitoringError(RuntimeError):
    """A monitoring backend cannot be used (package missing, non-local store); the message says what to do."""


@dataclass(config=CONFIG_DICT)
class MonitoringConfig:
    """Mirrors of the run's metrics in TensorBoard and MLflow (the run folder stays the reference)."""

    tensorboard: bool = Field(False, description="Write TensorBoard event files to <run>/tensorboard.")
    mlflow: bool = Field(False, description="Log params and metrics to a local MLflow store (<run>/mlflow/mlflow.db).")
    mlflow_tracking_uri: str | None = Field(
        None, **advanced("Local MLflow store: sqlite:///path.db or file:///folder (default: inside the run folder).")
    )
    mlflow_experiment: str = Field("mmvae-workbench", **advanced("MLflow experiment name."))


def _is_main(trainer: Trainer) -> bool:
    return bool(getattr(trainer, "is_main_process", True))


def _flat_params(trainer: Trainer) -> dict[str, str]:
    params: dict[str, str] = {"model.name": trainer.model.name}
    for prefix, config in (("training", trainer.config), ("model", trainer.model.model_config)):
        for key, value in config_to_dict(config).items():
            params[f"{prefix}.{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return params


def _epoch_scalars(record: EpochRecord) -> dict[str, float]:
    scalars = {f"train/{k}": v for k, v in record.train.items()}
    scalars.update({f"val/{k}": v for k, v in record.validation.items()})
    scalars.update({"lr": record.learning_rate, "seconds": record.seconds})
    return {k: float(v) for k, v in scalars.items()}


# ---------------------------------------------------------------------------------------------- TensorBoard
def _summary_writer_class() -> Any:
    if importlib.util.find_spec("tensorboardX") is not None:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    if importlib.util.find_spec("tensorboard") is not None:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter
    raise MonitoringError(
        "TensorBoard logging needs the 'tensorboardX' package (or 'tensorboard'). Install it with: "
        f"pip install {PACKAGES['tensorboardX']}   (or pip install \"mmvae-workbench[monitoring]\")."
    )


class TensorBoardCallback(Callback):
    """Per-epoch train/val terms, learning rate and epoch time as TensorBoard scalars (step = epoch).

    Args:
        log_dir: where the event files go (default ``<run>/tensorboard``).
        log_every_n_steps: also log the training loss every n steps (tag ``step/loss``, in the
            ``steps`` sub-folder so that its step axis does not mix with the epochs); None = off.
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, log_every_n_steps: int | None = None) -> None:
        self._writer_class = _summary_writer_class()
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.log_every_n_steps = log_every_n_steps
        self.writer: Any = None
        self.step_writer: Any = None
        self._step = 0

    def on_train_start(self, trainer: Trainer) -> None:
        if not _is_main(trainer):
            return
        if self.log_dir is None:
            if trainer.run_dir is None:
                raise MonitoringError("TensorBoardCallback needs a log_dir or a trainer with a run folder.")
            self.log_dir = trainer.run_dir / "tensorboard"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        resumed = trainer.epoch > 0 or trainer.step_in_epoch > 0
        # A unique suffix: a writer opened in the same second as an earlier one must not overwrite its file.
        self.writer = self._writer_class(str(self.log_dir), purge_step=trainer.epoch + 1 if resumed else None,
                                         filename_suffix=f".{uuid.uuid4().hex[:8]}")
        if self.log_every_n_steps is not None:
            self.step_writer = self._writer_class(str(self.log_dir / "steps"), purge_step=self._step + 1 if resumed else None,
                                                  filename_suffix=f".{uuid.uuid4().hex[:8]}")
        if not resumed:
            text = "\n".join(f"    {k}: {v}" for k, v in _flat_params(trainer).items())
            self.writer.add_text("config", text, 0)

    def on_batch_end(self, trainer: Trainer, progress: Any) -> None:
        if self.step_writer is None or progress.phase != "train":
            return
        self._step += 1
        if self._step % self.log_every_n_steps == 0:
            self.step_writer.add_scalar("step/loss", progress.loss, self._step)

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if self.writer is None:
            return
        for tag, value in _epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, record.epoch)
        self.writer.flush()

    def _close(self) -> None:
        for writer in (self.writer, self.step_writer):
            if writer is not None:
                writer.close()
        self.writer = self.step_writer = None

    def on_train_end(self, trainer: Trainer, result: TrainingResult) -> None:
        self._close()

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        self._close()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state.get("step", 0))


def _records(path: Path) -> Iterator[bytes]:
    """The payloads of a TFRecord file (length, masked CRC, data, masked CRC)."""
    with open(path, "rb") as handle:
        while header := handle.read(12):
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = handle.read(length)
            handle.read(4)
            if len(data) < length:
                return
            yield data


def read_tensorboard_scalars(log_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of ``log_dir``: tag -> [(step, value)] in file order.

    Like TensorBoard, a restart marker (written when a run resumes) drops the scalars logged earlier at
    that step or later, so the epochs repeated after a resume appear once.
    """
    try:
        from tensorboardX.proto.event_pb2 import Event
    except ImportError:
        try:
            from tensorboard.compat.proto.event_pb2 import Event
        except ImportError:
            raise MonitoringError(f"Reading event files needs tensorboardX: pip install {PACKAGES['tensorboardX']}.") from None
    files = [[Event.FromString(payload) for payload in _records(path)] for path in Path(log_dir).glob("events.out.tfevents.*")]
    files = sorted((events for events in files if events), key=lambda events: events[0].wall_time)  # oldest writer first
    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in files:
        for event in events:
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                scalars = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in scalars.items()}
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return scalars


# ---------------------------------------------------------------------------------------------- MLflow
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "stopped": "KILLED", "cancelled": "KILLED", "failed": "FAILED"}


def mlflow_key(name: str) -> str:
    """An MLflow-legal metric name: ``train/elbo[T1+T2]`` -> ``train/elbo_T1_T2``."""
    return _METRIC_KEY.sub("_", name).rstrip("_")


def _import_mlflow() -> Any:
    if importlib.util.find_spec("mlflow") is None:
        raise MonitoringError(
            "MLflow logging needs the 'mlflow' package. Install it with: "
            f"pip install {PACKAGES['mlflow']}   (or pip install \"mmvae-workbench[monitoring]\")."
        )
    # No network: MLflow's usage telemetry is read from the environment when mlflow is imported.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow
    from mlflow.tracking import MlflowClient

    return mlflow, MlflowClient


def _local_uri(uri: str) -> str:
    if "://" not in uri and not uri.startswith(("sqlite:", "file:")):
        return Path(uri).expanduser().resolve().as_uri()
    scheme = uri.split(":", 1)[0].lower()
    if scheme not in ("sqlite", "file"):
        raise MonitoringError(
            f"mlflow_tracking_uri '{uri}' is not a local store; the workbench logs only to sqlite:///file.db or file:///folder."
        )
    return uri


class MLflowCallback(Callback):
    """Params (training and model config), per-epoch metrics and the final status in a local MLflow store.

    Args:
        tracking_uri: a local store (default ``sqlite:///<run>/mlflow/mlflow.db``).
        experiment: experiment name (created when missing).
        run_name: MLflow run name (default: the run folder's name).
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "mmvae-workbench", run_name: str | None = None) -> None:
        self._mlflow, self._client_class = _import_mlflow()
        self.tracking_uri = _local_uri(tracking_uri) if tracking_uri else None
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None
        self.client: Any = None

    def _pointer(self, trainer: Trainer) -> Path | None:
        return trainer.run_dir / "mlflow" / "run.json" if trainer.run_dir is not None else None

    def on_train_start(self, trainer: Trainer) -> None:
        if not _is_main(trainer):
            return
        artifacts = None
        if self.tracking_uri is None:
            if trainer.run_dir is None:
                raise MonitoringError("MLflowCallback needs a tracking_uri or a trainer with a run folder.")
            folder = (trainer.run_dir / "mlflow").resolve()
            folder.mkdir(parents=True, exist_ok=True)
            self.tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
            artifacts = (folder / "artifacts").as_uri()
        try:
            with warnings.catch_warnings():  # SQLAlchemy deprecation notices from inside MLflow's store
                warnings.simplefilter("ignore", DeprecationWarning)
                self.client = self._client_class(tracking_uri=self.tracking_uri)
                experiment = self.client.get_experiment_by_name(self.experiment)
            experiment_id = (
                experiment.experiment_id if experiment is not None
                else self.client.create_experiment(self.experiment, artifact_location=artifacts)
            )
        except self._mlflow.exceptions.MlflowException as error:
            raise MonitoringError(f"Cannot open the MLflow store {self.tracking_uri}: {error}") from None
        pointer = self._pointer(trainer)
        if self.run_id is None and pointer is not None and pointer.is_file():
            self.run_id = json.loads(pointer.read_text(encoding="utf-8")).get("run_id")
        if self.run_id is not None:
            try:
                self.client.update_run(self.run_id, status="RUNNING")
                return
            except self._mlflow.exceptions.MlflowException:
                self.run_id = None  # the store was replaced: start a new MLflow run
        name = self.run_name or (trainer.run_dir.name if trainer.run_dir is not None else None)
        tags = {"mmvae.model": trainer.model.name}
        if trainer.run_dir is not None:
            tags["mmvae.run_dir"] = str(Path(trainer.run_dir).resolve())
        run = self.client.create_run(experiment_id, run_name=name, tags=tags)
        self.run_id = run.info.run_id
        params = [self._mlflow.entities.Param(k, v[:6000]) for k, v in _flat_params(trainer).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        if pointer is not None:
            pointer.parent.mkdir(parents=True, exist_ok=True)
            pointer.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.tracking_uri,
                                           "experiment": self.experiment}, indent=2) + "\n")

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if self.client is None:
            return
        import time

        stamp = int(time.time() * 1000)
        metrics = [self._mlflow.entities.Metric(mlflow_key(k), v, stamp, record.epoch) for k, v in _epoch_scalars(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_train_end(self, trainer: Trainer, result: TrainingResult) -> None:
        if self.client is None:
            return
        if result.best_validation_loss is not None:
            self.client.set_tag(self.run_id, "mmvae.best_epoch", str(result.best_epoch))
            self.client.log_metric(self.run_id, "best_validation_loss", float(result.best_validation_loss), step=result.epochs_completed)
        self.client.set_tag(self.run_id, "mmvae.status", result.status)
        self.client.set_terminated(self.run_id, status=_STATUS.get(result.status, "FINISHED"))
        self.client = None

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        if self.client is not None:
            self.client.set_tag(self.run_id, "mmvae.error", str(error)[:5000])
            self.client.set_terminated(self.run_id, status="FAILED")
            self.client = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id
        self.tracking_uri = state.get("tracking_uri") or self.tracking_uri


def monitoring_callbacks(config: MonitoringConfig | None) -> list[Callback]:
    """The callbacks ``config`` switches on (a missing package raises before training starts)."""
    if config is None:
        return []
    callbacks: list[Callback] = []
    if config.tensorboard:
        callbacks.append(TensorBoardCallback())
    if config.mlflow:
        callbacks.append(MLflowCallback(config.mlflow_tracking_uri, config.mlflow_experiment))
    return callbacks
