"""Checks on a run's health after every epoch, reported as warnings rather than silently ignored.

Posterior collapse: a latent level whose KL per dimension stays near zero carries no information about
the input, so cross-modal synthesis from it returns the average subject. Models report the mean KL
per latent dimension of each level as ``kl_per_dim[<level>]`` terms; :class:`CollapseCheck` reads them
from the validation metrics (the training ones without a validation set) once the KL warm-up is over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from core.models import COLLAPSE_TERM_PREFIX

__all__ = ["TrainingWarning", "CollapseCheck", "latent_kl_per_dimension"]


@dataclass(frozen=True)
class TrainingWarning:
    """Something a user must know about a run that still runs: ``kind``, the epoch, and plain words."""

    kind: str
    epoch: int
    message: str
    details: dict[str, float | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def latent_kl_per_dimension(metrics: Mapping[str, float]) -> dict[str, float]:
    """``{level: mean KL per dimension}`` from an epoch's metrics (the ``kl_per_dim[...]`` terms)."""
    prefix = COLLAPSE_TERM_PREFIX + "["
    return {key[len(prefix) : -1]: value for key, value in metrics.items() if key.startswith(prefix) and key.endswith("]")}


@dataclass
class CollapseCheck:
    """Warn once per level whose KL per dimension stays under ``threshold`` nats for ``patience`` epochs.

    Epochs up to ``first_epoch`` (the end of the model's KL warm-up) are not judged: with a KL weight
    near 0 the posterior is free, and a collapse then says nothing.
    """

    threshold: float = 0.01
    patience: int = 2
    first_epoch: int = 1
    below: dict[str, int] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)

    def update(self, epoch: int, metrics: Mapping[str, float]) -> list[TrainingWarning]:
        """Feed one epoch's metrics; returns the new warnings (each level is reported once)."""
        if epoch < self.first_epoch:
            return []
        warnings = []
        for level, kl in latent_kl_per_dimension(metrics).items():
            self.below[level] = self.below.get(level, 0) + 1 if kl < self.threshold else 0
            if self.below[level] >= self.patience and level not in self.reported:
                self.reported.add(level)
                warnings.append(
                    TrainingWarning(
                        kind="posterior_collapse",
                        epoch=epoch,
                        message=(
                            f"Latent '{level}' has collapsed to its prior (KL {kl:.2g} nats per dimension for "
                            f"{self.below[level]} epochs): it no longer encodes the input, so synthesis through it "
                            "returns the average subject. Try a calibrated decoder scale (decoder_scale), a longer "
                            "KL warm-up (warmup) or free bits."
                        ),
                        details={"level": level, "kl_per_dimension": float(kl), "threshold": self.threshold},
                    )
                )
        return warnings

    def state_dict(self) -> dict[str, object]:
        return {"below": dict(self.below), "reported": sorted(self.reported)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.below = {str(k): int(v) for k, v in dict(state.get("below", {})).items()}  # type: ignore[arg-type]
        self.reported = {str(level) for level in state.get("reported", [])}  # type: ignore[union-attr]
