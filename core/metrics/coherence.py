"""Coherence: do generated modalities carry the right class?

A classifier per modality (the user's, or one trained here on the real training data) labels
generated images:

* **cross coherence** of (S, m), m not in S: the accuracy of the classifier on ``predict(S -> m)``
  against the true labels of the test subjects that observe all of S;
* **joint coherence**: the fraction of samples from the prior (or a fitted latent sampler) whose
  decoded modalities all receive the same class;
* **ceiling**: the classifier's accuracy on the real test images of m. Generation cannot do better
  than the classifier itself, so read cross coherence against this number.

Accuracies are **class-balanced** (the mean over classes of the per-class recall,
``sklearn.metrics.balanced_accuracy_score``, see :func:`class_scores`), as in MultiVae's evaluator, so that a model that always
generates the majority class does not look good on an unbalanced cohort; the plain accuracy is
reported beside it.

A classifier is any callable mapping a batch ``(B, *shape)`` to class labels ``(B,)`` or to scores
``(B, n_classes)`` (argmax is taken).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from core.data.dataset import MultimodalBaseDataset, batches_of
from core.metrics._common import (
    MetricError,
    class_scores,
    downsample,
    labels_of,
    resolve_subsets,
)
from core.models import subset_name
from core.nn.base import evaluation_mode
from core.progress import CancelFn, ProgressFn, Steps
from core.seeding import seeded

__all__ = ["Classifier", "LogisticClassifier", "train_classifiers", "classify", "coherence_metrics"]

Classifier = Callable[[torch.Tensor], torch.Tensor]


class LogisticClassifier:
    """Multinomial logistic regression on average-pooled, standardised images (or raw vectors).

    Args:
        feature_size: each image axis is pooled to at most this many voxels.
        C: inverse regularisation strength of ``sklearn.linear_model.LogisticRegression``.
        seed: ``random_state`` of the solver.
    """

    def __init__(self, feature_size: int = 8, C: float = 1.0, seed: int = 0) -> None:
        self.feature_size = feature_size
        self.scaler = StandardScaler()
        self.model = LogisticRegression(C=C, max_iter=2000, random_state=seed)

    def fit(self, x: torch.Tensor, y: np.ndarray) -> LogisticClassifier:
        features = downsample(x, self.feature_size).double().numpy()
        self.model.fit(self.scaler.fit_transform(features), y)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        features = downsample(x.detach().cpu(), self.feature_size).double().numpy()
        return torch.as_tensor(self.model.predict(self.scaler.transform(features)))


def train_classifiers(
    train: MultimodalBaseDataset, label: str | None = None, feature_size: int = 8, seed: int = 0
) -> dict[str, LogisticClassifier]:
    """One :class:`LogisticClassifier` per modality, fitted on the observed training subjects."""
    y = labels_of(train, label)
    classifiers = {}
    for m in train.modalities:
        observed = train.masks[m].numpy()
        if len(np.unique(y[observed])) < 2:
            raise MetricError(f"Cannot train a classifier for '{m}': its observed training subjects hold fewer than two classes.")
        classifiers[m] = LogisticClassifier(feature_size, seed=seed).fit(train.data[m][train.masks[m]], y[observed])
    return classifiers


def classify(classifier: Classifier, x: torch.Tensor) -> np.ndarray:
    """Class labels ``(B,)`` from a classifier returning labels or per-class scores."""
    out = torch.as_tensor(classifier(x))
    if out.dim() == 2:
        out = out.argmax(1)
    if out.dim() != 1 or out.shape[0] != x.shape[0]:
        raise MetricError(f"A classifier must return (B,) labels or (B, n_classes) scores; "
                          f"got shape {tuple(out.shape)} for B = {x.shape[0]}.")
    return out.detach().cpu().long().numpy()


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {**class_scores(y_true, y_pred), "n_samples": int(len(y_true))}


def coherence_metrics(
    model: Any,
    test: MultimodalBaseDataset,
    classifiers: Mapping[str, Classifier],
    *,
    label: str | None = None,
    subsets: Sequence[Sequence[str]] | None = None,
    n_joint: int = 1000,
    sampler: Any = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Ceiling, cross coherence per (subset, target) and joint coherence (see the module docstring).

    Args:
        sampler: a fitted :mod:`core.samplers` sampler for joint generation (default: the prior).
        n_joint: samples drawn for the joint coherence (0 to skip).
    """
    modalities = list(model.modalities)
    missing = [m for m in modalities if m not in classifiers]
    if missing:
        raise MetricError(f"No classifier for {missing}; coherence needs one per modality.")
    y = labels_of(test, label)
    subsets = [s for s in resolve_subsets(subsets, modalities) if len(s) < len(modalities)]
    plan = []
    for s in subsets:
        index = torch.nonzero(torch.stack([test.masks[m] for m in s]).all(0)).flatten().tolist()
        if index:
            plan.append((s, index))
    n_joint_batches = (n_joint + batch_size - 1) // batch_size if len(modalities) > 1 else 0
    steps = Steps(len(modalities) + sum((len(i) + batch_size - 1) // batch_size for _, i in plan) + n_joint_batches,
                  progress, cancel, "coherence")

    ceiling = {}
    for m in modalities:
        steps.check()
        observed = test.masks[m]
        if bool(observed.any()):
            ceiling[m] = _scores(y[observed.numpy()], classify(classifiers[m], test.data[m][observed]))
        steps.advance(f"classifier accuracy on real {m}")

    cross = []
    with evaluation_mode(model):
        with seeded(seed, model.device), torch.no_grad():
            for s, index in plan:
                targets = [m for m in modalities if m not in s]
                predicted: dict[str, list[np.ndarray]] = {m: [] for m in targets}
                for _, batch in batches_of(test, index, batch_size):
                    steps.check()
                    out = model.predict(batch, cond_mod=list(s), gen_mod=targets, N=1)
                    for m in targets:
                        predicted[m].append(classify(classifiers[m], out[m]))
                    steps.advance(f"coherence from {subset_name(s)}")
                for m in targets:
                    cross.append({"subset": subset_name(s), "subset_size": len(s), "target": m,
                                  **_scores(y[index], np.concatenate(predicted[m]))})
            joint = None
            if n_joint_batches:
                agree = 0
                for start in range(0, n_joint, batch_size):
                    steps.check()
                    n = min(batch_size, n_joint - start)
                    z = sampler.sample(n) if sampler is not None else model.generate_from_prior(n)
                    out = model.decode(z)
                    labels = np.stack([classify(classifiers[m], out[m]) for m in modalities])
                    agree += int((labels == labels[0]).all(0).sum())
                    steps.advance("joint coherence")
                joint = {"coherence": agree / n_joint, "n_samples": n_joint,
                         "source": getattr(sampler, "name", "sampler") if sampler is not None else "prior"}

    by_size: dict[str, dict[str, float]] = {}
    for size, rows in itertools.groupby(sorted(cross, key=lambda r: r["subset_size"]), key=lambda r: r["subset_size"]):
        values = np.array([r["balanced_accuracy"] for r in rows])
        by_size[str(size)] = {"mean": float(values.mean()), "std": float(values.std())}
    return {"ceiling": ceiling, "cross": cross, "mean_by_subset_size": by_size, "joint": joint,
            "classes": sorted(int(c) for c in np.unique(y))}
