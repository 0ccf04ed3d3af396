"""Checks on a run's health after every epoch, reported as warnings rather than silently ignored.

Posterior collapse: a latent level whose KL per dimension stays near zero carries no information about
the input. When every level does, cross-modal synthesis returns the average subject. When other levels
still carry the input (a hierarchy whose middle level goes unused), synthesis works and the warning says
so, rather than alarming a user about output that is fine. Models report the mean KL per latent dimension
of each level as ``kl_per_dim[<level>]`` terms; :class:`CollapseCheck` reads them from the validation
metrics (the training ones without a validation set) once the KL warm-up is over.
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
        levels = latent_kl_per_dimension(metrics)
        for level, kl in levels.items():
            self.below[level] = self.below.get(level, 0) + 1 if kl < self.threshold else 0
        active = [level for level, kl in levels.items() if kl >= self.threshold]
        warnings = []
        for level, kl in levels.items():
            if self.below[level] >= self.patience and level not in self.reported:
                self.reported.add(level)
                warnings.append(self._warning(epoch, level, kl, active))
        return warnings

    def _warning(self, epoch: int, level: str, kl: float, active: list[str]) -> TrainingWarning:
        """A collapse of the model (no level carries the input), or one unused level beside active ones."""
        stays = f"(KL {kl:.2g} nats per dimension for {self.below[level]} epochs)"
        details: dict[str, float | str] = {"level": level, "kl_per_dimension": float(kl), "threshold": self.threshold}
        if active:
            return TrainingWarning(
                kind="unused_latent_level",
                epoch=epoch,
                message=(
                    f"Latent level '{level}' is unused {stays}: its posterior is its prior (given the levels above), so it adds nothing. "
                    f"{', '.join(active)} still carr{'ies' if len(active) == 1 else 'y'} the input, so synthesis is not "
                    "the average subject; judge it by the Synthesize page's verdict."
                ),
                details={**details, "active_levels": ", ".join(active)},
            )
        return TrainingWarning(
            kind="posterior_collapse",
            epoch=epoch,
            message=(
                f"Latent '{level}' has collapsed to its prior {stays}: it no longer encodes the input, so synthesis "
                "through it returns the average subject. Try a calibrated decoder scale (decoder_scale), a longer "
                "KL warm-up (warmup) or free bits."
            ),
            details=details,
        )

    def state_dict(self) -> dict[str, object]:
        return {"below": dict(self.below), "reported": sorted(self.reported)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.below = {str(k): int(v) for k, v in dict(state.get("below", {})).items()}  # type: ignore[arg-type]
        self.reported = {str(level) for level in state.get("reported", [])}  # type: ignore[union-attr]
