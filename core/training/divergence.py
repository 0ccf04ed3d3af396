"""Divergence without a NaN: the loss stays finite but explodes (a learning rate of 10 gives about 1e10).

The trainer already stops on a NaN or infinite loss (:class:`core.training.trainer.TrainingDiverged`). A
finite explosion used to complete silently; :class:`DivergenceCheck` watches every training step and, at the
end of an epoch whose mean training loss rose far above the lowest step loss seen so far, warns once through
``trainer.warn`` (so the warning is logged, sent to the GUI and kept in ``status.json``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from core.training.callbacks import BatchProgress, Callback, EpochRecord
from core.training.health import TrainingWarning

if TYPE_CHECKING:
    from core.training.trainer import Trainer

__all__ = ["DivergenceCheck", "diverged"]


def diverged(loss: float, lowest: float, factor: float = 100.0) -> bool:
    """Has ``loss`` risen more than ``factor`` times the magnitude of the ``lowest`` loss above it?

    Magnitudes below 1 count as 1, so a loss near zero (or a negative Gaussian NLL) is not judged by noise.
    """
    if not (math.isfinite(loss) and math.isfinite(lowest)):
        return False
    return loss - lowest > factor * max(abs(lowest), 1.0)


class DivergenceCheck(Callback):
    """Warn once when the training loss explodes while staying finite (see :func:`diverged`)."""

    def __init__(self, factor: float = 100.0) -> None:
        self.factor = factor
        self.lowest = math.inf
        self.reported = False

    def on_batch_end(self, trainer: Trainer, progress: BatchProgress) -> None:
        if progress.phase == "train" and math.isfinite(progress.loss):
            self.lowest = min(self.lowest, progress.loss)

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        loss = record.train.get("loss", math.nan)
        if self.reported or not diverged(loss, self.lowest, self.factor):
            return
        self.reported = True
        trainer.warn(TrainingWarning(
            kind="divergence",
            epoch=record.epoch,
            message=(f"Training is diverging: the mean training loss of epoch {record.epoch} is {loss:.3g}, up from "
                     f"{self.lowest:.3g} earlier in the run, with no NaN. The weights are unlikely to be useful. "
                     "Fix: lower training.learning_rate (by 10x) or set training.grad_clip_norm, and train again."),
            details={"loss": float(loss), "lowest_loss": float(self.lowest), "factor": self.factor},
        ))

    def state_dict(self) -> dict[str, Any]:
        return {"lowest": self.lowest if math.isfinite(self.lowest) else None, "reported": self.reported}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lowest = math.inf if state.get("lowest") is None else float(state["lowest"])
        self.reported = bool(state.get("reported", False))
