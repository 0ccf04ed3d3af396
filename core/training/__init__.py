"""Training: the trainer loop, its callbacks and control flags, checkpoints."""

from core.training.callbacks import BatchProgress, Callback, EpochRecord, TqdmProgress, format_seconds
from core.training.checkpoint import latest_checkpoint, read_metrics_csv
from core.training.config import TrainerConfig
from core.training.control import TrainingControl
from core.training.health import CollapseCheck, TrainingWarning
from core.training.trainer import Trainer, TrainingDiverged, TrainingResult, select_device

__all__ = [
    "BatchProgress",
    "Callback",
    "CollapseCheck",
    "EpochRecord",
    "TqdmProgress",
    "Trainer",
    "TrainerConfig",
    "TrainingControl",
    "TrainingDiverged",
    "TrainingResult",
    "TrainingWarning",
    "format_seconds",
    "latest_checkpoint",
    "read_metrics_csv",
    "select_device",
]
