"""Training events and the callbacks that receive them.

The trainer emits events; callbacks only observe (and may ask to stop through the trainer's
``should_stop``). The terminal turns them into a tqdm bar; the GUI turns them into Qt signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from core.training.health import TrainingWarning
    from core.training.trainer import Trainer, TrainingResult

__all__ = ["BatchProgress", "EpochRecord", "Callback", "TqdmProgress", "format_seconds"]


@dataclass(frozen=True)
class BatchProgress:
    """Heartbeat after every step: where we are, how long it took so far, and how long is left."""

    epoch: int
    num_epochs: int
    stage: str
    phase: str  # "train" or "validation"
    batch: int  # 1-based within the phase
    num_batches: int
    loss: float
    elapsed_seconds: float
    eta_seconds: float | None
    overall_fraction: float


@dataclass(frozen=True)
class EpochRecord:
    """Metrics of one finished epoch (train and validation terms, learning rate, timing)."""

    epoch: int
    stage: str
    train: dict[str, float]
    validation: dict[str, float]
    learning_rate: float
    seconds: float
    is_best: bool

    def flat(self) -> dict[str, float | int | str]:
        row: dict[str, float | int | str] = {"epoch": self.epoch, "stage": self.stage, "lr": self.learning_rate,
                                             "seconds": round(self.seconds, 3)}
        row.update({f"train/{k}": v for k, v in self.train.items()})
        row.update({f"val/{k}": v for k, v in self.validation.items()})
        return row


class Callback:
    """Override the events you need; every method is a no-op by default."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int, stage: str) -> None: ...

    def on_batch_end(self, trainer: Trainer, progress: BatchProgress) -> None: ...

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None: ...

    def on_checkpoint(self, trainer: Trainer, path: str) -> None: ...

    def on_pause(self, trainer: Trainer, paused: bool) -> None: ...

    def on_error(self, trainer: Trainer, error: BaseException) -> None: ...

    def on_warning(self, trainer: Trainer, warning: TrainingWarning) -> None: ...

    def on_train_end(self, trainer: Trainer, result: TrainingResult) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class TqdmProgress(Callback):
    """A terminal progress bar over all steps of the run, with the loss, the stage and the ETA."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self._bar: tqdm | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self._bar = tqdm(total=100.0, unit="%", disable=self.disable, bar_format="{l_bar}{bar}| {postfix}")

    def on_batch_end(self, trainer: Trainer, progress: BatchProgress) -> None:
        if self._bar is None:
            return
        self._bar.n = round(100 * progress.overall_fraction, 1)
        self._bar.set_description(f"epoch {progress.epoch}/{progress.num_epochs} [{progress.stage}] {progress.phase}")
        self._bar.set_postfix_str(f"loss {progress.loss:.4g}  ETA {format_seconds(progress.eta_seconds)}", refresh=True)

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if self._bar is not None and not self.disable:
            val = record.validation.get("loss")
            best = " *" if record.is_best else ""
            self._bar.write(
                f"epoch {record.epoch:>4}  train {record.train.get('loss', float('nan')):.5g}"
                + (f"  val {val:.5g}{best}" if val is not None else "")
                + f"  ({record.seconds:.1f}s)"
            )

    def on_train_end(self, trainer: Trainer, result: TrainingResult) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
