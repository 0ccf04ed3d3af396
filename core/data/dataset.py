"""Multimodal datasets where any modality may be missing for any subject.

Conventions (shared by every model, metric and exporter):

* ``data`` maps a modality name to a tensor of shape ``(n, *shape)``; images are ``(C, H, W)`` and
  volumes ``(C, X, Y, Z)`` per sample.
* ``masks`` maps a modality name to a bool tensor ``(n,)``; ``False`` means the modality is missing for
  that subject. Missing entries hold zeros, and nothing downstream ever reads them.
* ``observation_masks`` (optional) maps a modality to a bool tensor ``(n, *shape)`` marking which voxels
  were actually observed (the ultrasound sector, a partial slab). Losses and metrics ignore the rest.
* Subject ids travel with the samples, so a split, a batch or an export always knows who it holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core.outputs import AttrDict

__all__ = [
    "DatasetOutput",
    "MultimodalBaseDataset",
    "IncompleteDataset",
    "DatasetError",
    "collate_multimodal",
    "split_by_subject",
    "MissingnessSummary",
    "missingness_summary",
    "batches_of",
    "spatial_dims",
]


class DatasetError(ValueError):
    """Raised when data handed to a dataset is inconsistent; the message says what and how to fix it."""


class DatasetOutput(AttrDict):
    """A sample or a batch: ``data``, ``masks``, ``labels``, ``ids`` and ``observation_masks``.

    ``batch.data`` and ``batch["data"]`` both work. In a batch, ``masks`` is always present (all True
    for complete data), so models never test for its existence.
    """

    @property
    def modalities(self) -> list[str]:
        return list(self["data"].keys())

    @property
    def batch_size(self) -> int:
        return next(iter(self["data"].values())).shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DatasetOutput:
        """Move every tensor (data, masks, labels, observation masks) to ``device``."""

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.to(device, non_blocking=non_blocking)
            if isinstance(value, Mapping):
                return {k: move(v) for k, v in value.items()}
            return value

        return DatasetOutput({k: move(v) for k, v in self.items()})


Labels = torch.Tensor | Mapping[str, torch.Tensor] | None


def _check_labels(labels: Labels, n: int) -> Labels:
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        out = {}
        for name, value in labels.items():
            value = torch.as_tensor(value)
            if value.shape[0] != n:
                raise DatasetError(f"Label '{name}' has {value.shape[0]} entries but the data has {n} samples.")
            out[str(name)] = value
        return out
    labels = torch.as_tensor(labels)
    if labels.shape[0] != n:
        raise DatasetError(f"labels has {labels.shape[0]} entries but the data has {n} samples.")
    return labels


def _index_labels(labels: Labels, index: Any) -> Labels:
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        return {k: v[index] for k, v in labels.items()}
    return labels[index]


class MultimodalBaseDataset(Dataset):
    """A complete multimodal dataset: every modality observed for every subject.

    Args:
        data: modality name -> tensor ``(n, *shape)``.
        labels: optional tensor ``(n, ...)`` or a dict of named label tensors.
        ids: optional subject ids (default ``"0"``, ``"1"``, ...); must be unique.
        observation_masks: optional modality -> bool tensor ``(n, *shape)`` of observed voxels.
    """

    def __init__(
        self,
        data: Mapping[str, torch.Tensor],
        labels: Labels = None,
        ids: Sequence[str] | None = None,
        observation_masks: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if not data:
            raise DatasetError("A dataset needs at least one modality; 'data' is empty.")
        self.data = {str(m): torch.as_tensor(x) for m, x in data.items()}
        lengths = {m: x.shape[0] for m, x in self.data.items()}
        if len(set(lengths.values())) != 1:
            raise DatasetError(f"Modalities have different numbers of samples: {lengths}. "
                               "Every modality needs one entry per subject (zeros where missing).")
        self._n = next(iter(lengths.values()))
        for m, x in self.data.items():
            if not torch.is_floating_point(x):
                self.data[m] = x.float()
        self.labels = _check_labels(labels, self._n)
        if ids is None:
            ids = [str(i) for i in range(self._n)]
        self.ids = [str(i) for i in ids]
        if len(self.ids) != self._n:
            raise DatasetError(f"{len(self.ids)} subject ids given for {self._n} samples.")
        if len(set(self.ids)) != len(self.ids):
            dupes = [i for i, c in Counter(self.ids).items() if c > 1][:5]
            raise DatasetError(f"Subject ids must be unique; duplicated: {dupes}.")
        self.observation_masks = self._check_observation_masks(observation_masks)
        self.masks = {m: torch.ones(self._n, dtype=torch.bool) for m in self.data}

    def _check_observation_masks(self, observation_masks: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for m, vm in (observation_masks or {}).items():
            if m not in self.data:
                raise DatasetError(f"Observation mask given for unknown modality '{m}'; modalities are {self.modalities}.")
            vm = torch.as_tensor(vm).bool()
            if tuple(vm.shape) != tuple(self.data[m].shape):
                raise DatasetError(
                    f"Observation mask of '{m}' has shape {tuple(vm.shape)}, expected {tuple(self.data[m].shape)} (one flag per voxel)."
                )
            out[m] = vm
        return out

    @property
    def modalities(self) -> list[str]:
        return list(self.data.keys())

    @property
    def input_dims(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of each modality, as the model configs expect."""
        return {m: tuple(x.shape[1:]) for m, x in self.data.items()}

    @property
    def is_complete(self) -> bool:
        return all(bool(mask.all()) for mask in self.masks.values())

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> DatasetOutput:
        return DatasetOutput(
            data={m: x[index] for m, x in self.data.items()},
            masks={m: mask[index] for m, mask in self.masks.items()},
            labels=_index_labels(self.labels, index),
            ids=self.ids[index],
            observation_masks={m: vm[index] for m, vm in self.observation_masks.items()},
        )

    def batch(self, indices: Sequence[int]) -> DatasetOutput:
        """The samples at ``indices`` as one batch, indexed at once: the same tensors as collating
        ``self[i]`` for each index, without building a sample per subject (the trainer's in-memory path)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return DatasetOutput(
            data={m: x[index] for m, x in self.data.items()},
            masks={m: mask[index] for m, mask in self.masks.items()},
            labels=_index_labels(self.labels, index),
            ids=[self.ids[i] for i in index.tolist()],
            observation_masks={m: vm[index] for m, vm in self.observation_masks.items()},
        )

    def subset(self, indices: Sequence[int]) -> MultimodalBaseDataset:
        """A new dataset holding only ``indices`` (tensors are indexed, not shared views of the whole)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return self._from_parts(
            data={m: x[index] for m, x in self.data.items()},
            masks={m: mask[index] for m, mask in self.masks.items()},
            labels=_index_labels(self.labels, index),
            ids=[self.ids[i] for i in index.tolist()],
            observation_masks={m: vm[index] for m, vm in self.observation_masks.items()},
        )

    def _from_parts(self, data, masks, labels, ids, observation_masks) -> MultimodalBaseDataset:
        return MultimodalBaseDataset(data, labels=labels, ids=ids, observation_masks=observation_masks)

    def as_batch(self) -> DatasetOutput:
        """The whole dataset as one batch (for small data and for ``model.encode(dataset)``)."""
        return DatasetOutput(
            data=dict(self.data),
            masks=dict(self.masks),
            labels=self.labels,
            ids=list(self.ids),
            observation_masks=dict(self.observation_masks),
        )

    def __repr__(self) -> str:
        dims = ", ".join(f"{m}{tuple(s)}" for m, s in self.input_dims.items())
        return f"{type(self).__name__}(n={len(self)}, modalities=[{dims}])"


class IncompleteDataset(MultimodalBaseDataset):
    """A multimodal dataset where some modalities are missing for some subjects.

    Args:
        data: modality name -> tensor ``(n, *shape)``; missing entries may hold anything, they are
            replaced by zeros (out of place) so that no downstream computation can leak them.
        masks: modality name -> bool tensor ``(n,)``, ``False`` where the modality is missing.
        labels, ids, observation_masks: as for :class:`MultimodalBaseDataset`.
        allow_unobserved_modalities: a split of a small cohort may hold no observation of some modality;
            only then is that allowed.
    """

    def __init__(
        self,
        data: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor],
        labels: Labels = None,
        ids: Sequence[str] | None = None,
        observation_masks: Mapping[str, torch.Tensor] | None = None,
        *,
        allow_unobserved_modalities: bool = False,
    ) -> None:
        super().__init__(data, labels=labels, ids=ids, observation_masks=observation_masks)
        if set(masks) != set(self.data):
            raise DatasetError(
                f"masks must have one entry per modality: data has {sorted(self.data)}, masks has {sorted(masks)}."
            )
        checked: dict[str, torch.Tensor] = {}
        for m in self.data:
            mask = torch.as_tensor(masks[m])
            if mask.dtype != torch.bool:
                if not torch.all((mask == 0) | (mask == 1)):
                    raise DatasetError(f"Mask of '{m}' must be boolean (True = observed); got values other than 0/1.")
                mask = mask.bool()
            if tuple(mask.shape) != (len(self),):
                raise DatasetError(f"Mask of '{m}' has shape {tuple(mask.shape)}, expected ({len(self)},): one flag per subject.")
            checked[m] = mask
        never = [m for m, mask in checked.items() if not bool(mask.any())]
        if never and not allow_unobserved_modalities:
            raise DatasetError(
                f"Modality {never} is missing for every subject, so nothing can be learned about it. "
                "Remove it from the dataset or add subjects that have it."
            )
        self.masks = checked
        for m, x in self.data.items():
            keep = checked[m].view(-1, *([1] * (x.dim() - 1)))
            self.data[m] = torch.where(keep, x, torch.zeros((), dtype=x.dtype))
            bad = ~torch.isfinite(self.data[m]).flatten(1).all(dim=1) & checked[m]
            if bool(bad.any()):
                who = [self.ids[i] for i in torch.nonzero(bad).flatten().tolist()[:5]]
                raise DatasetError(
                    f"Modality '{m}' holds NaN or infinite values for subjects {who}. Fix or exclude those volumes, "
                    "or mark them as missing."
                )

    def _from_parts(self, data, masks, labels, ids, observation_masks) -> MultimodalBaseDataset:
        return IncompleteDataset(
            data, masks, labels=labels, ids=ids, observation_masks=observation_masks, allow_unobserved_modalities=True
        )


def _stack(values: list[Any]) -> Any:
    first = values[0]
    if first is None:
        return None
    if isinstance(first, Mapping):
        return {k: _stack([v[k] for v in values]) for k in first}
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, (int, float, bool, np.number)):
        return torch.as_tensor(values)
    return list(values)


def collate_multimodal(samples: list[DatasetOutput]) -> DatasetOutput:
    """Stack samples into a batch, keeping masks, labels, ids and observation masks together."""
    if not samples:
        raise DatasetError("Cannot collate an empty list of samples.")
    return DatasetOutput(
        data=_stack([s["data"] for s in samples]),
        masks=_stack([s["masks"] for s in samples]),
        labels=_stack([s.get("labels") for s in samples]),
        ids=[s["ids"] for s in samples],
        observation_masks=_stack([s.get("observation_masks") or {} for s in samples]) or {},
    )


def _pattern_of(dataset: MultimodalBaseDataset, i: int) -> tuple[str, ...]:
    return tuple(m for m in dataset.modalities if bool(dataset.masks[m][i]))


def split_by_subject(
    dataset: MultimodalBaseDataset,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratify_by_pattern: bool = True,
) -> tuple[MultimodalBaseDataset, ...]:
    """Split a dataset into disjoint parts by subject (train, validation, test by default).

    With ``stratify_by_pattern`` each missingness pattern is split in the same proportions, so that a
    rare pattern (say, subjects with ultrasound only) is not all in one part.
    """
    fractions = [float(f) for f in fractions]
    if any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise DatasetError(f"Split fractions must be non-negative and sum to 1; got {fractions}.")
    n = len(dataset)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in range(n):
        key = _pattern_of(dataset, i) if stratify_by_pattern else ()
        groups.setdefault(key, []).append(i)
    parts: list[list[int]] = [[] for _ in fractions]
    for key in sorted(groups):
        members = np.array(groups[key])
        rng.shuffle(members)
        bounds = np.round(np.cumsum([0.0, *fractions]) * len(members)).astype(int)
        for p in range(len(fractions)):
            parts[p].extend(members[bounds[p] : bounds[p + 1]].tolist())
    # Small cohorts: make sure every requested non-empty part gets at least one subject.
    for p, frac in enumerate(fractions):
        if frac > 0 and not parts[p]:
            donor = max(range(len(parts)), key=lambda q: len(parts[q]))
            if len(parts[donor]) > 1:
                parts[p].append(parts[donor].pop())
    return tuple(dataset.subset(sorted(part)) for part in parts)


@dataclass(frozen=True)
class MissingnessSummary:
    """How many subjects have each combination of modalities."""

    modalities: tuple[str, ...]
    n_subjects: int
    patterns: dict[tuple[str, ...], int]
    per_modality: dict[str, int]

    @property
    def n_complete(self) -> int:
        return self.patterns.get(self.modalities, 0)

    def __iter__(self) -> Iterator[tuple[tuple[str, ...], int]]:
        return iter(sorted(self.patterns.items(), key=lambda kv: (-kv[1], kv[0])))

    def __str__(self) -> str:
        width = max(len(m) for m in self.modalities)
        lines = [f"{self.n_subjects} subjects, {self.n_complete} complete"]
        for m in self.modalities:
            lines.append(f"  {m:<{width}}  observed {self.per_modality[m]:>5} / {self.n_subjects}")
        lines.append("  pattern" + " " * max(0, 3 * len(self.modalities) - 5) + "  subjects")
        for pattern, count in self:
            marks = " ".join("x" if m in pattern else "." for m in self.modalities)
            lines.append(f"  {marks:<{max(7, 2 * len(self.modalities))}}  {count:>5}   ({'+'.join(pattern)})")
        return "\n".join(lines)


def missingness_summary(dataset: MultimodalBaseDataset) -> MissingnessSummary:
    """Count subjects per missingness pattern and per modality."""
    patterns = Counter(_pattern_of(dataset, i) for i in range(len(dataset)))
    return MissingnessSummary(
        modalities=tuple(dataset.modalities),
        n_subjects=len(dataset),
        patterns=dict(patterns),
        per_modality={m: int(dataset.masks[m].sum()) for m in dataset.modalities},
    )


def batches_of(dataset: Dataset, indices: Sequence[int], batch_size: int) -> Iterator[tuple[list[int], DatasetOutput]]:
    """``(indices, batch)`` chunks of ``indices`` in order (no shuffling: metrics are order-free)."""
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        if isinstance(dataset, MultimodalBaseDataset):
            index = torch.as_tensor(chunk, dtype=torch.long)
            batch = DatasetOutput(
                data={m: x[index] for m, x in dataset.data.items()},
                masks={m: v[index] for m, v in dataset.masks.items()},
                labels=None,
                ids=[dataset.ids[i] for i in chunk],
                observation_masks={m: v[index] for m, v in dataset.observation_masks.items()},
            )
        else:
            batch = collate_multimodal([dataset[i] for i in chunk])
        yield chunk, batch


def spatial_dims(shape: Sequence[int]) -> int:
    """2 for an image ``(C, H, W)``, 3 for a volume ``(C, X, Y, Z)``, 0 for anything else."""
    return {3: 2, 4: 3}.get(len(shape), 0)
