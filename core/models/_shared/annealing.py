"""KL annealing schedules: pure functions of training progress, owned by the model's config and
evaluated from the progress the trainer passes in."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainingProgress", "linear_warmup_per_step", "linear_warmup_per_epoch"]


@dataclass(frozen=True)
class TrainingProgress:
    """Where training stands: 1-based ``epoch`` and the fraction of it already done."""

    epoch: int
    batch_ratio: float = 0.0


def linear_warmup_per_step(progress: TrainingProgress | None, warmup: int, beta: float) -> float:
    """MVAE schedule: ``beta * (epoch - 1 + batch_ratio) / warmup`` during warm-up, from 0 at the first step.

    ``progress=None`` (evaluation outside training) gives the full ``beta``.
    """
    if progress is None or warmup <= 0 or progress.epoch > warmup:
        return beta
    return beta * min(1.0, (progress.epoch - 1 + progress.batch_ratio) / warmup)


def linear_warmup_per_epoch(progress: TrainingProgress | None, warmup: int) -> float:
    """Per-epoch factor ``min(epoch / warmup, 1)``: 1/W at the first epoch (JMVAE, Nexus)."""
    if progress is None or warmup <= 0:
        return 1.0
    return min(1.0, progress.epoch / warmup)
