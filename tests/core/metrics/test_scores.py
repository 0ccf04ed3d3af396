"""Class-balanced accuracy: sklearn's definition, without warnings on a single-class split."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from core.metrics._common import class_scores


def test_balanced_accuracy_equals_sklearn_and_plain_accuracy_is_beside_it():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y, p = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
        scores = class_scores(y, p)
        assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
        assert scores["accuracy"] == pytest.approx(np.mean(y == p))


def test_majority_guessing_scores_one_over_k_and_one_class_gives_its_recall():
    y = np.array([0] * 8 + [1, 2])
    assert class_scores(y, np.zeros(10, dtype=int)) == {"balanced_accuracy": pytest.approx(1 / 3), "accuracy": 0.8}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert class_scores(np.array([1, 1, 1, 1]), np.array([1, 0, 1, 1]))["balanced_accuracy"] == 0.75
