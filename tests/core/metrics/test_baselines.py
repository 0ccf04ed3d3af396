"""Mean and k-NN baselines on toy problems whose answer is known."""

from __future__ import annotations

import pytest
import torch

from core.data import DatasetOutput, IncompleteDataset, MultimodalBaseDataset
from core.metrics import KNNImputer, MeanImputer, MetricError, VoxelRegressionImputer


def test_mean_imputer_averages_observed_subjects_and_voxels_only():
    data = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]), "b": torch.zeros(3, 1)}
    masks = {"a": torch.tensor([True, True, False]), "b": torch.tensor([True, True, True])}
    observed = {"a": torch.tensor([[True, True], [True, False], [True, True]])}
    dataset = IncompleteDataset(data, masks, observation_masks=observed)
    mean = MeanImputer().fit(dataset)
    # subject 3 is missing 'a'; voxel 2 of subject 2 was never observed.
    assert mean.predict("a", 2).tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_mean_imputer_fills_never_observed_voxels_with_the_modality_mean():
    data = {"a": torch.tensor([[2.0, 9.0], [4.0, 9.0]])}
    observed = {"a": torch.tensor([[True, False], [True, False]])}
    mean = MeanImputer().fit(MultimodalBaseDataset(data, observation_masks=observed))
    assert mean.predict("a", 1).tolist() == [[3.0, 3.0]]


def _clusters() -> MultimodalBaseDataset:
    # Three well separated groups in 'a'; 'b' is a constant image per group: k-NN must recover it exactly.
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    group = torch.arange(12) % 3
    a = centres[group] + 0.1 * torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    b = (group.float() + 1)[:, None, None, None].expand(12, 1, 4, 4).clone()
    return MultimodalBaseDataset({"a": a, "b": b})


def test_knn_recovers_the_group_image_from_the_nearest_subjects():
    train = _clusters()
    knn = KNNImputer(n_neighbors=3).fit(train)
    query = DatasetOutput(data={"a": torch.tensor([[9.8, 0.2], [0.1, 9.9]])}, observation_masks={})
    predicted = knn.predict(query, ("a",), "b")
    assert predicted.shape == (2, 1, 4, 4)
    assert torch.allclose(predicted[0], torch.full((1, 4, 4), 2.0))
    assert torch.allclose(predicted[1], torch.full((1, 4, 4), 3.0))


def test_knn_uses_only_subjects_with_the_target_and_neighbours_observed_voxels():
    a = torch.tensor([[0.0], [0.1], [0.2], [5.0]])
    b = torch.tensor([[1.0, 1.0], [3.0, 7.0], [50.0, 50.0], [9.0, 9.0]])
    masks = {"a": torch.ones(4, dtype=torch.bool), "b": torch.tensor([True, True, False, True])}
    observed = {"b": torch.tensor([[True, True], [True, False], [True, True], [True, True]])}
    knn = KNNImputer(n_neighbors=2).fit(IncompleteDataset({"a": a, "b": b}, masks, observation_masks=observed))
    predicted = knn.predict(DatasetOutput(data={"a": torch.tensor([[0.05]])}, observation_masks={}), ("a",), "b")
    # Neighbours: subjects 1 and 2 (subject 3 lacks b). Voxel 2 of subject 2 is unobserved -> only subject 1's 1.0.
    assert predicted.tolist() == [[2.0, 1.0]]


def test_knn_returns_none_when_no_training_subject_has_both_and_mean_raises_for_unobserved():
    masks = {"a": torch.tensor([True, False]), "b": torch.tensor([False, True])}
    dataset = IncompleteDataset({"a": torch.ones(2, 1), "b": torch.ones(2, 1)}, masks)
    knn = KNNImputer().fit(dataset)
    assert knn.predict(DatasetOutput(data={"a": torch.ones(1, 1)}, observation_masks={}), ("a",), "b") is None
    with pytest.raises(MetricError, match="'c'"):
        MeanImputer().fit(dataset).predict("c", 1)


def _voxel_pairs(n: int = 6) -> IncompleteDataset:
    """'b' = 2 * 'a' + 1 inside a foreground box, 0 outside it; 'c' = the 3x3x3 mean of 'a' there."""
    generator = torch.Generator().manual_seed(0)
    a = torch.zeros(n, 1, 8, 8, 8)
    a[:, :, 2:6, 2:6, 2:6] = torch.rand(n, 1, 4, 4, 4, generator=generator) + 0.5
    foreground = a != 0
    b = torch.where(foreground, 2 * a + 1, torch.zeros(()))
    local = torch.nn.functional.avg_pool3d(a, 3, stride=1, padding=1, count_include_pad=False)
    c = torch.where(foreground, local, torch.zeros(()))
    masks = {"a": torch.ones(n, dtype=torch.bool), "b": torch.ones(n, dtype=torch.bool), "c": torch.ones(n, dtype=torch.bool)}
    masks["b"][0] = False  # a subject without the target is left out of the fit
    b[0] = 1000.0
    return IncompleteDataset({"a": a, "b": b, "c": c}, masks)


def test_voxel_regression_recovers_a_linear_map_and_a_neighbourhood_mean():
    train = _voxel_pairs()
    test = _voxel_pairs(3)
    batch = DatasetOutput(data={"a": test.data["a"]}, observation_masks={})
    imputer = VoxelRegressionImputer(alpha=1e-6).fit(train)
    predicted = imputer.predict(batch, ("a",), "b")
    assert predicted.shape == (3, 1, 8, 8, 8)
    foreground = test.data["a"] != 0
    assert torch.allclose(predicted[foreground], 2 * test.data["a"][foreground] + 1, atol=1e-3)
    assert torch.allclose(predicted[~foreground], torch.zeros(()))  # background: the training background mean
    local = imputer.predict(batch, ("a",), "c")
    assert torch.allclose(local[foreground], test.data["c"][foreground], atol=1e-3)
    plain = VoxelRegressionImputer(alpha=1e-6, neighbourhood=1, coordinates=False).fit(train).predict(batch, ("a",), "c")
    assert (plain - test.data["c"])[foreground].abs().mean() > 10 * (local - test.data["c"])[foreground].abs().mean()


def test_voxel_regression_needs_training_pairs_and_volumes():
    train = _voxel_pairs()
    train.masks["b"][:] = False
    assert VoxelRegressionImputer().fit(train).predict(DatasetOutput(data={"a": train.data["a"]}), ("a",), "b") is None
    with pytest.raises(MetricError, match="images or volumes"):
        VoxelRegressionImputer().fit(MultimodalBaseDataset({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}))
    with pytest.raises(ValueError, match="odd"):
        VoxelRegressionImputer(neighbourhood=2)
