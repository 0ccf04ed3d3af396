"""How much class information the latent space holds: k-means clustering and a linear probe.

Both use the posterior means ``encode(x, cond_mod="all", return_mean=True)`` of every observed
modality (models that need complete subjects use the complete ones only).

* **Clustering**: k-means (``n_clusters`` = number of classes by default) is fitted on the training
  means; each cluster is mapped to the majority training label of its members; the test means are
  assigned to clusters and scored. The score is averaged over ``n_runs`` seeded k-means runs.
* **Linear probe**: logistic regression on the standardised training means, scored on the test means.

Scores are class-balanced accuracies, with plain accuracy beside them (see
:mod:`core.metrics.coherence`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from core.data.dataset import MultimodalBaseDataset, batches_of
from core.metrics._common import MetricError, class_scores, labels_of
from core.nn.base import evaluation_mode
from core.progress import CancelFn, ProgressFn, Steps

__all__ = ["latent_means", "latent_metrics"]


def latent_means(
    model: Any, dataset: MultimodalBaseDataset, batch_size: int = 64, steps: Steps | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(means (n, D), index)``: posterior means from all observed modalities and which subjects they are."""
    incomplete_ok = getattr(model, "supports_incomplete_data", True)
    observed = torch.stack([dataset.masks[m] for m in model.modalities])
    usable = observed.any(0) if incomplete_ok else observed.all(0)
    index = torch.nonzero(usable).flatten().tolist()
    chunks = []
    with evaluation_mode(model):
        with torch.no_grad():
            for _, batch in batches_of(dataset, index, batch_size):
                if steps is not None:
                    steps.check()
                z = model.encode(batch, cond_mod="all", N=1, return_mean=True, ignore_incomplete=incomplete_ok).z
                chunks.append(z.detach().cpu().double().reshape(z.shape[0], -1).numpy())
                if steps is not None:
                    steps.advance("encoding")
    means = np.concatenate(chunks) if chunks else np.zeros((0, model.latent_dim))
    return means, np.asarray(index, dtype=int)


def latent_metrics(
    model: Any,
    train: MultimodalBaseDataset,
    test: MultimodalBaseDataset,
    *,
    label: str | None = None,
    n_clusters: int | None = None,
    n_runs: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """``{"clustering": {...}, "linear_probe": {...}}`` on the test split (see the module docstring)."""
    y_train_all, y_test_all = labels_of(train, label), labels_of(test, label)
    n_batches = sum((len(d) + batch_size - 1) // batch_size for d in (train, test))
    steps = Steps(n_batches + n_runs + 1, progress, cancel, "latent metrics")
    z_train, i_train = latent_means(model, train, batch_size, steps)
    z_test, i_test = latent_means(model, test, batch_size, steps)
    if len(i_train) == 0 or len(i_test) == 0:
        raise MetricError("No subject could be encoded (the model needs complete subjects and none is complete).")
    y_train, y_test = y_train_all[i_train], y_test_all[i_test]
    classes = np.unique(y_train)
    if len(classes) < 2:
        raise MetricError("The training labels hold a single class; clustering and probes need at least two.")
    k = min(n_clusters or len(classes), len(z_train))
    runs = []
    for run in range(n_runs):
        steps.check()
        kmeans = KMeans(n_clusters=k, n_init=1, random_state=seed + run).fit(z_train)
        mapping = {}
        for cluster in range(k):
            members = y_train[kmeans.labels_ == cluster]
            mapping[cluster] = int(np.bincount(members - y_train.min()).argmax() + y_train.min()) if len(members) else int(classes[0])
        runs.append(class_scores(y_test, np.array([mapping[c] for c in kmeans.predict(z_test)])))
        steps.advance("k-means")
    clustering = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
    clustering.update(n_clusters=k, n_runs=n_runs)
    steps.check()
    scaler = StandardScaler().fit(z_train)
    probe = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(z_train), y_train)
    linear = class_scores(y_test, probe.predict(scaler.transform(z_test)))
    steps.advance("linear probe")
    return {"clustering": clustering, "linear_probe": linear, "n_train": int(len(i_train)), "n_test": int(len(i_test))}
