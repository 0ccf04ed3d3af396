"""Typed outputs shared by every model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.outputs import ModelOutput

__all__ = ["ModelOutput", "LossOutput"]


@dataclass
class LossOutput:
    """What ``forward`` returns: the loss to minimise and the named terms that make it up.

    Attributes:
        loss: scalar tensor, the per-sample mean of the objective over the batch (what the optimiser sees).
        terms: named scalar tensors for monitoring (detached); the names are fixed per model, so plots
            and CSV columns are stable across epochs.
        batch_size: number of samples the loss was averaged over, to weight epoch means correctly.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    batch_size: int = 1

    @property
    def metrics(self) -> dict[str, float]:
        """Every term (and the loss) as plain floats: the documented ``output.metrics`` mapping."""
        out = {"loss": float(self.loss.detach())}
        out.update({k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in self.terms.items()})
        return out
