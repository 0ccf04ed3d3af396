"""What the metrics share and nothing else needs: their error, subsets, labels, features and scores."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from core.data.dataset import spatial_dims

__all__ = [
    "MetricError",
    "labels_of",
    "default_subsets",
    "resolve_subsets",
    "downsample",
    "class_scores",
]


class MetricError(ValueError):
    """A metric cannot be computed as asked (no labels, no observed sample, an unknown modality)."""


def labels_of(dataset: Dataset, label: str | None = None) -> np.ndarray:
    """Integer class labels ``(n,)`` of a dataset; ``label`` names one when the dataset holds several."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise MetricError("The dataset has no labels; coherence, clustering and probes need class labels.")
    if isinstance(labels, Mapping):
        if label is None:
            if len(labels) != 1:
                raise MetricError(f"The dataset has several labels {sorted(labels)}; choose one with label=...")
            label = next(iter(labels))
        if label not in labels:
            raise MetricError(f"Unknown label '{label}'; the dataset has {sorted(labels)}.")
        labels = labels[label]
    values = torch.as_tensor(labels)
    if values.dim() != 1:
        raise MetricError(f"Class labels must be one value per subject; got shape {tuple(values.shape)}.")
    if values.is_floating_point():
        if not bool(torch.all(values == values.round())):
            raise MetricError("The labels are continuous; coherence and clustering need integer class labels.")
    return values.long().numpy()


def default_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Conditioning subsets evaluated by default: every non-empty subset for up to 4 modalities;
    otherwise the singletons, the leave-one-out subsets and the full set."""
    modalities = list(modalities)
    if len(modalities) <= 4:
        return [s for r in range(1, len(modalities) + 1) for s in itertools.combinations(modalities, r)]
    singles = [(m,) for m in modalities]
    leave_one_out = [tuple(x for x in modalities if x != m) for m in modalities]
    return singles + leave_one_out + [tuple(modalities)]


def resolve_subsets(subsets: Sequence[Sequence[str]] | None, modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Validated conditioning subsets in the model's modality order (default :func:`default_subsets`)."""
    if subsets is None:
        return default_subsets(modalities)
    resolved: list[tuple[str, ...]] = []
    for subset in subsets:
        if isinstance(subset, str):
            subset = [subset]
        unknown = [m for m in subset if m not in modalities]
        if unknown or not subset:
            raise MetricError(f"Subset {list(subset)} must be a non-empty list of the model's modalities {list(modalities)}.")
        ordered = tuple(m for m in modalities if m in subset)
        if ordered not in resolved:
            resolved.append(ordered)
    return resolved


def downsample(x: torch.Tensor, size: int, observed: torch.Tensor | None = None) -> torch.Tensor:
    """Flattened features ``(B, F)``: images and volumes average-pooled to at most ``size`` per axis
    (only over observed voxels when ``observed`` is given), vectors kept as they are."""
    x = x.float()
    dims = spatial_dims(x.shape[1:])
    if dims == 0:
        if observed is not None:
            x = torch.where(observed, x, torch.zeros((), dtype=x.dtype))
        return x.flatten(1)
    pool = torch.nn.functional.adaptive_avg_pool2d if dims == 2 else torch.nn.functional.adaptive_avg_pool3d
    target = tuple(min(s, size) for s in x.shape[2:])
    if observed is None:
        return pool(x, target).flatten(1)
    weight = observed.float()
    num = pool(x * weight, target)
    den = pool(weight, target)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros((), dtype=x.dtype)).flatten(1)


def class_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Class-balanced accuracy (the mean over the classes present in ``y_true`` of their recall) and
    plain accuracy. The balanced score equals ``sklearn.metrics.balanced_accuracy_score``; it is computed
    here so that a split holding a single class gives its recall instead of a warning."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return {"balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
            "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")}
