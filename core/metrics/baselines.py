"""Baselines every model must beat, fitted on the training split only.

* :class:`MeanImputer` predicts the per-voxel mean of the training samples that observe the
  modality (and that voxel); it ignores the conditioning modalities.
* :class:`KNNImputer` finds the ``k`` training subjects closest to the test subject on the observed
  conditioning modalities (average-pooled to a few voxels per axis, standardised, concatenated) and
  averages their target volumes voxel by voxel, over the neighbours that observed each voxel. It is
  scikit-learn's ``KNeighborsRegressor(weights="uniform")`` with observation masks respected; the
  neighbour search is ``sklearn.neighbors.NearestNeighbors``.

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
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from core.data.dataset import DatasetOutput, MultimodalBaseDataset
from core.metrics._common import MetricError, downsample

__all__ = ["MeanImputer", "KNNImputer"]


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
