"""Missingness simulation for experiments: hide modalities completely at random or not at random.

Every simulator returns new masks (``modality -> bool (n,)``, True = observed) and never touches the
complete data, which stays available as ground truth. Every sample keeps at least one modality.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from core.data.dataset import DatasetError, IncompleteDataset, MultimodalBaseDataset

__all__ = [
    "simulate_mcar",
    "simulate_mnar_by_label",
    "simulate_mnar_by_content",
    "ensure_one_observed",
    "apply_masks",
]

Masks = dict[str, torch.Tensor]


def _check_names(names: Sequence[str], valid: Sequence[str], what: str) -> None:
    unknown = [m for m in names if m not in valid]
    if unknown:
        raise DatasetError(f"{what} names unknown modalities {unknown}; valid modalities are {list(valid)}.")


def _check_probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise DatasetError(f"The missing probability of {name} is {value}; it must be between 0 and 1.")
    return value


def ensure_one_observed(
    masks: Mapping[str, torch.Tensor],
    seed: int = 0,
    prefer: str | None = None,
    available: Mapping[str, torch.Tensor] | None = None,
) -> Masks:
    """Re-enable one modality (``prefer`` or a random one) for samples left with none.

    ``available`` (modality -> bool ``(n,)``) says what each subject really has, e.g. the dataset's own
    masks when simulating on top of real missingness: only those modalities can come back, otherwise a
    subject would be handed a volume that was never acquired.
    """
    names = list(masks)
    if prefer is not None:
        _check_names([prefer], names, "prefer")
    out = {m: torch.as_tensor(v).bool().clone() for m, v in masks.items()}
    can_return = {m: torch.ones_like(out[m]) for m in names}
    if available is not None:
        _check_names(list(available), names, "available")
        can_return.update({m: torch.as_tensor(v).bool() for m, v in available.items()})
    empty = ~torch.stack([out[m] for m in names]).any(0)
    rng = np.random.default_rng(seed)
    for i in torch.nonzero(empty).flatten().tolist():
        candidates = [m for m in names if bool(can_return[m][i])]
        if not candidates:
            continue  # nothing was ever acquired for this subject; only the dataset can drop it
        chosen = prefer if prefer in candidates else candidates[rng.integers(len(candidates))]
        out[chosen][i] = True
    return out


def simulate_mcar(
    n_or_masks: int | Mapping[str, torch.Tensor],
    rates: Mapping[str, float],
    seed: int = 0,
    modalities: Sequence[str] | None = None,
) -> Masks:
    """Missing completely at random: each (subject, modality) hidden independently with its rate.

    ``n_or_masks`` is the number of subjects, or existing masks to hide more entries from.
    """
    if isinstance(n_or_masks, int):
        names = list(modalities or rates)
        base = {m: torch.ones(n_or_masks, dtype=torch.bool) for m in names}
    else:
        base = {m: torch.as_tensor(v).bool() for m, v in n_or_masks.items()}
        names = list(base)
    _check_names(list(rates), names, "rates")
    rng = np.random.default_rng(seed)
    out = {}
    for m in names:
        p = _check_probability(m, rates.get(m, 0.0))
        hidden = torch.from_numpy(rng.random(len(base[m])) < p)
        out[m] = base[m] & ~hidden
    return ensure_one_observed(out, seed, available=base)


def simulate_mnar_by_label(
    labels: torch.Tensor,
    probabilities: Mapping[str, Sequence[float]],
    modalities: Sequence[str],
    seed: int = 0,
) -> Masks:
    """Missingness that depends on a class label: ``probabilities[m][c]`` is P(m missing | label = c)."""
    _check_names(list(probabilities), modalities, "probabilities")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() and not bool(torch.all(labels == labels.round())):
        raise DatasetError("labels must be integer class values (0, 1, ...) that index the per-class probabilities.")
    labels = labels.long()
    if len(labels) and int(labels.min()) < 0:
        raise DatasetError(f"labels must be class values 0, 1, ...; got {int(labels.min())}. Map the classes to 0..K-1 first.")
    rng = np.random.default_rng(seed)
    out = {}
    for m in modalities:
        per_class = [_check_probability(m, p) for p in probabilities.get(m, [])]
        if per_class and int(labels.max()) >= len(per_class):
            raise DatasetError(f"probabilities['{m}'] has {len(per_class)} classes but labels go up to {int(labels.max())}.")
        p = torch.tensor(per_class, dtype=torch.float64)[labels].numpy() if per_class else np.zeros(len(labels))
        out[m] = torch.from_numpy(rng.random(len(labels)) >= p)
    return ensure_one_observed(out, seed)


def simulate_mnar_by_content(
    data: Mapping[str, torch.Tensor],
    modality: str,
    score: str | Callable[[torch.Tensor], torch.Tensor] = "mean",
    slope: float = 4.0,
    offset: float = 0.0,
    seed: int = 0,
) -> Masks:
    """Missing not at random: ``modality`` is hidden with probability sigmoid(slope * (z - offset)),
    where z is the standardized per-sample ``score`` of that modality's own content.

    ``score`` is ``"mean"``, ``"std"`` or a callable mapping the ``(n, *shape)`` tensor to ``(n,)``.
    A positive slope hides the high-scoring samples more often.
    """
    _check_names([modality], list(data), "modality")
    x = torch.as_tensor(data[modality]).float().flatten(1)
    if callable(score):
        values = torch.as_tensor(score(data[modality])).float()
    elif score == "mean":
        values = x.mean(1)
    elif score == "std":
        values = x.std(1)
    else:
        raise DatasetError(f"score must be 'mean', 'std' or a callable, got {score!r}.")
    spread = values.std().clamp_min(1e-12) if len(values) > 1 else torch.ones(())  # one sample: z = 0
    z = (values - values.mean()) / spread
    p_missing = torch.sigmoid(slope * (z - offset)).numpy()
    rng = np.random.default_rng(seed)
    out = {m: torch.ones(x.shape[0], dtype=torch.bool) for m in data}
    out[modality] = torch.from_numpy(rng.random(x.shape[0]) >= p_missing)
    return ensure_one_observed(out, seed, prefer=next(m for m in data if m != modality) if len(data) > 1 else None)


def apply_masks(dataset: MultimodalBaseDataset, masks: Mapping[str, torch.Tensor]) -> IncompleteDataset:
    """An incomplete copy of ``dataset`` with ``masks`` (hidden entries zeroed; ids, labels kept)."""
    _check_names(list(masks), dataset.modalities, "masks")
    combined = {m: dataset.masks[m] & torch.as_tensor(masks.get(m, torch.ones(len(dataset), dtype=torch.bool))).bool()
                for m in dataset.modalities}
    return IncompleteDataset(
        dataset.data, combined, labels=dataset.labels, ids=dataset.ids, observation_masks=dataset.observation_masks
    )
