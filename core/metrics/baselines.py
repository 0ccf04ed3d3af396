"""Baselines every model must beat, fitted on the training split only.

* :class:`MeanImputer` predicts the per-voxel mean of the training samples that observe the
  modality (and that voxel); it ignores the conditioning modalities.
* :class:`KNNImputer` finds the ``k`` training subjects closest to the test subject on the observed
  conditioning modalities (average-pooled to a few voxels per axis, standardised, concatenated) and
  averages their target volumes voxel by voxel, over the neighbours that observed each voxel. It is
  scikit-learn's ``KNeighborsRegressor(weights="uniform")`` with observation masks respected; the
  neighbour search is ``sklearn.neighbors.NearestNeighbors``.
* :class:`VoxelRegressionImputer` predicts each voxel of the target from the same voxel of the
  conditioning modalities: a ridge regression (``sklearn.linear_model.Ridge``) on each conditioning
  modality's value and its mean over the 3x3(x3) neighbourhood, plus the voxel's normalised
  coordinates, fitted on the foreground voxels of the training subjects that observe them all. The
  non-generative reference for cross-modal synthesis: a model that cannot beat it has learned no more
  than a per-voxel intensity mapping.

Example:
    >>> import torch
    >>> from core.data import MultimodalBaseDataset
    >>> train = MultimodalBaseDataset({"a": torch.tensor([[0.0], [2.0]]), "b": torch.tensor([[1.0], [3.0]])})
    >>> MeanImputer().fit(train).predict("b", 1).tolist()
    [[2.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from core.data.dataset import DatasetOutput, MultimodalBaseDataset
from core.metrics._common import MetricError, downsample

__all__ = ["MeanImputer", "KNNImputer", "VoxelRegressionImputer"]


def _observed_voxels(dataset: MultimodalBaseDataset, modality: str, index: torch.Tensor) -> torch.Tensor | None:
    mask = dataset.observation_masks.get(modality)
    return None if mask is None else mask[index]


class MeanImputer:
    """Per-voxel mean of the observed training samples, per modality."""

    def __init__(self) -> None:
        self.means: dict[str, torch.Tensor] = {}

    def fit(self, dataset: MultimodalBaseDataset) -> MeanImputer:
        for m in dataset.modalities:
            index = torch.nonzero(dataset.masks[m]).flatten()
            if len(index) == 0:
                continue
            x = dataset.data[m][index].double()
            observed = _observed_voxels(dataset, m, index)
            if observed is None:
                self.means[m] = x.mean(0).float()
                continue
            weight = observed.double()
            count = weight.sum(0)
            total = (x * weight).sum(0)
            overall = total.sum() / count.sum().clamp_min(1)
            self.means[m] = torch.where(count > 0, total / count.clamp_min(1), overall).float()
        return self

    def predict(self, modality: str, n: int) -> torch.Tensor:
        """``(n, *shape)``: the training mean of ``modality`` repeated ``n`` times."""
        if modality not in self.means:
            raise MetricError(f"No training sample observes '{modality}'; the mean baseline is undefined.")
        mean = self.means[modality]
        return mean.unsqueeze(0).expand(n, *mean.shape)


class KNNImputer:
    """k-nearest-neighbour imputation from the observed conditioning modalities.

    Args:
        n_neighbors: neighbours averaged (clipped to the number of usable training subjects).
        feature_size: each image axis is average-pooled to at most this many voxels for the search.
    """

    def __init__(self, n_neighbors: int = 5, feature_size: int = 8) -> None:
        if n_neighbors < 1:
            raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors}.")
        self.n_neighbors = n_neighbors
        self.feature_size = feature_size
        self.dataset: MultimodalBaseDataset | None = None
        self._features: dict[str, torch.Tensor] = {}
        self._searches: dict[tuple[tuple[str, ...], str], tuple[NearestNeighbors, StandardScaler, np.ndarray] | None] = {}

    def fit(self, dataset: MultimodalBaseDataset) -> KNNImputer:
        self.dataset = dataset
        all_index = torch.arange(len(dataset))
        self._features = {
            m: downsample(dataset.data[m], self.feature_size, _observed_voxels(dataset, m, all_index)).double()
            for m in dataset.modalities
        }
        self._searches.clear()
        return self

    def features(self, batch: DatasetOutput, cond: Sequence[str]) -> torch.Tensor:
        parts = [
            downsample(batch.data[m].cpu(), self.feature_size, (batch.get("observation_masks") or {}).get(m)).double()
            for m in cond
        ]
        return torch.cat([p.cpu() for p in parts], dim=1)

    def _search(self, cond: tuple[str, ...], target: str) -> tuple[NearestNeighbors, StandardScaler, np.ndarray] | None:
        key = (cond, target)
        if key not in self._searches:
            if self.dataset is None:
                raise RuntimeError("Call fit(train_dataset) before predict.")
            usable = self.dataset.masks[target].clone()
            for m in cond:
                usable &= self.dataset.masks[m]
            pool = torch.nonzero(usable).flatten().numpy()
            if len(pool) == 0:
                self._searches[key] = None
            else:
                features = torch.cat([self._features[m][pool] for m in cond], dim=1).numpy()
                scaler = StandardScaler().fit(features)
                search = NearestNeighbors(n_neighbors=min(self.n_neighbors, len(pool))).fit(scaler.transform(features))
                self._searches[key] = (search, scaler, pool)
        return self._searches[key]

    def predict(self, batch: DatasetOutput, cond: Sequence[str], target: str) -> torch.Tensor | None:
        """``(B, *shape)`` predictions of ``target`` from ``cond``, or None when no training subject
        observes all of ``cond`` and ``target``. Every sample of ``batch`` must observe ``cond``."""
        found = self._search(tuple(cond), target)
        if found is None:
            return None
        search, scaler, pool = found
        _, neighbours = search.kneighbors(scaler.transform(self.features(batch, cond).numpy()))
        chosen = torch.as_tensor(pool[neighbours])  # (B, k) indices into the training set
        values = self.dataset.data[target][chosen].double()  # (B, k, *shape)
        observed = self.dataset.observation_masks.get(target)
        if observed is None:
            return values.mean(1).float()
        weight = observed[chosen].double()
        count = weight.sum(1)
        mean = (values * weight).sum(1) / count.clamp_min(1)
        fallback = values.mean(1)
        return torch.where(count > 0, mean, fallback).float()


class VoxelRegressionImputer:
    """Voxel-wise ridge regression from the conditioning modalities (images or volumes only).

    Foreground voxels are those where some conditioning modality is non-zero (skull-stripped MR and
    ultrasound outside its sector are zero); the regression is fitted and applied there, and the other
    voxels get the training mean of the target over such voxels. One regression per (conditioning,
    target) pair, fitted on first use.

    Args:
        alpha: ridge penalty (features are intensities and coordinates in [-1, 1]).
        neighbourhood: side of the box whose mean is a feature (odd; 1 leaves the feature out).
        coordinates: add the voxel's coordinates, normalised to [-1, 1] per axis.
        max_voxels: training voxels kept at most, drawn uniformly over the usable subjects.
        seed: seed of that draw.
    """

    def __init__(
        self, alpha: float = 1.0, neighbourhood: int = 3, coordinates: bool = True, max_voxels: int = 500_000, seed: int = 0
    ) -> None:
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be a positive odd number of voxels, got {neighbourhood}.")
        if max_voxels < 1:
            raise ValueError(f"max_voxels must be at least 1, got {max_voxels}.")
        self.alpha = alpha
        self.neighbourhood = neighbourhood
        self.coordinates = coordinates
        self.max_voxels = max_voxels
        self.seed = seed
        self.dataset: MultimodalBaseDataset | None = None
        self._fits: dict[tuple[tuple[str, ...], str], tuple[Ridge, float] | None] = {}

    def fit(self, dataset: MultimodalBaseDataset) -> VoxelRegressionImputer:
        for m in dataset.modalities:
            if len(dataset.input_dims[m]) not in (3, 4):
                raise MetricError(f"Voxel-wise regression needs images or volumes; '{m}' has shape {dataset.input_dims[m]}.")
        self.dataset = dataset
        self._fits.clear()
        return self

    def features(self, data: dict[str, torch.Tensor], cond: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (B, V, F), foreground (B, V))`` of a batch's ``(B, 1, *spatial)`` conditioning volumes."""
        columns = []
        volumes = [data[m].float().cpu() for m in cond]
        spatial = volumes[0].shape[2:]
        pool = torch.nn.functional.avg_pool2d if len(spatial) == 2 else torch.nn.functional.avg_pool3d
        for x in volumes:
            columns.append(x[:, 0])
            if self.neighbourhood > 1:
                columns.append(pool(x, self.neighbourhood, stride=1, padding=self.neighbourhood // 2, count_include_pad=False)[:, 0])
        if self.coordinates:
            axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in spatial], indexing="ij")
            columns.extend(a.expand(volumes[0].shape[0], *spatial) for a in axes)
        features = torch.stack(columns, dim=-1).flatten(1, -2)
        foreground = torch.stack([x[:, 0] != 0 for x in volumes]).any(0).flatten(1)
        return features, foreground

    def _fit(self, cond: tuple[str, ...], target: str) -> tuple[Ridge, float] | None:
        key = (cond, target)
        if key in self._fits:
            return self._fits[key]
        if self.dataset is None:
            raise RuntimeError("Call fit(train_dataset) before predict.")
        shapes = {self.dataset.input_dims[m] for m in (*cond, target)}
        if len(shapes) > 1 or next(iter(shapes))[0] != 1:
            raise MetricError(f"Voxel-wise regression needs one-channel volumes on one grid; "
                              f"{[*cond, target]} have shapes {sorted(shapes)}.")
        usable = self.dataset.masks[target].clone()
        for m in cond:
            usable &= self.dataset.masks[m]
        pool = torch.nonzero(usable).flatten().tolist()
        if not pool:
            self._fits[key] = None
            return None
        rng = np.random.default_rng(self.seed)
        per_subject = max(1, self.max_voxels // len(pool))
        rows, values, background = [], [], []
        for i in pool:
            features, foreground = self.features({m: self.dataset.data[m][i : i + 1] for m in cond}, cond)
            y = self.dataset.data[target][i].flatten()
            observed = _observed_voxels(self.dataset, target, torch.tensor([i]))
            seen = torch.ones_like(y, dtype=torch.bool) if observed is None else observed[0].flatten()
            background.append(y[seen & ~foreground[0]])
            chosen = torch.nonzero(seen & foreground[0]).flatten().numpy()
            if len(chosen) > per_subject:
                chosen = rng.choice(chosen, per_subject, replace=False)
            rows.append(features[0, chosen].numpy())
            values.append(y[chosen].numpy())
        x, y = np.concatenate(rows), np.concatenate(values)
        if len(y) == 0:
            self._fits[key] = None
            return None
        rest = torch.cat(background)
        fill = float(rest.double().mean()) if rest.numel() else float(y.mean())
        self._fits[key] = (Ridge(alpha=self.alpha).fit(x, y), fill)
        return self._fits[key]

    def predict(self, batch: DatasetOutput, cond: Sequence[str], target: str) -> torch.Tensor | None:
        """``(B, *shape)`` predictions of ``target`` from ``cond``, or None when no training subject
        observes all of them (on any foreground voxel). Every sample of ``batch`` must observe ``cond``."""
        cond = tuple(cond)
        found = self._fit(cond, target)
        if found is None:
            return None
        regression, fill = found
        features, foreground = self.features(batch.data, cond)
        out = torch.full(foreground.shape, fill, dtype=torch.float32)
        if bool(foreground.any()):
            out[foreground] = torch.from_numpy(regression.predict(features[foreground].numpy())).float()
        return out.reshape(len(out), *batch.data[cond[0]].shape[1:])
