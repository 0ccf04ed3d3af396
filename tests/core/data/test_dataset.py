import pytest
import torch

from core.data import (
    DatasetError,
    IncompleteDataset,
    MultimodalBaseDataset,
    collate_multimodal,
    missingness_summary,
    split_by_subject,
)


def make_incomplete(n: int = 20) -> IncompleteDataset:
    g = torch.Generator().manual_seed(1)
    masks = {"T1": torch.ones(n, dtype=torch.bool), "T2": torch.rand(n, generator=g) > 0.4, "US": torch.rand(n, generator=g) > 0.5}
    data = {"T1": torch.randn(n, 1, 4, 4, 4), "T2": torch.randn(n, 1, 4, 4, 4) + 5, "US": torch.randn(n, 3)}
    return IncompleteDataset(data, masks, labels={"y": torch.arange(n)}, ids=[f"sub-{i:02d}" for i in range(n)])


def test_missing_entries_are_zeroed_and_masks_kept():
    d = make_incomplete()
    missing = ~d.masks["T2"]
    assert missing.any()
    assert torch.all(d.data["T2"][missing] == 0)
    assert torch.all(d.data["T2"][~missing] != 0)
    assert not d.is_complete


def test_collate_keeps_masks_ids_and_labels_aligned():
    d = make_incomplete()
    batch = collate_multimodal([d[i] for i in (3, 7, 11)])
    assert batch.ids == ["sub-03", "sub-07", "sub-11"]
    assert batch.data["T1"].shape == (3, 1, 4, 4, 4)
    assert torch.equal(batch.masks["T2"], d.masks["T2"][[3, 7, 11]])
    assert torch.equal(batch.labels["y"], torch.tensor([3, 7, 11]))


def test_split_is_by_subject_disjoint_and_stratified():
    d = make_incomplete(60)
    parts = split_by_subject(d, (0.6, 0.2, 0.2), seed=3)
    ids = [set(p.ids) for p in parts]
    assert ids[0].isdisjoint(ids[1]) and ids[0].isdisjoint(ids[2]) and ids[1].isdisjoint(ids[2])
    assert set().union(*ids) == set(d.ids)
    # each part keeps its subjects' masks and data
    for part in parts:
        for i, subject in enumerate(part.ids):
            j = d.ids.index(subject)
            assert torch.equal(part.data["T2"][i], d.data["T2"][j])
            assert bool(part.masks["US"][i]) == bool(d.masks["US"][j])
    # same seed, same split; other seed, other split
    assert split_by_subject(d, (0.6, 0.2, 0.2), seed=3)[0].ids == parts[0].ids
    assert split_by_subject(d, (0.6, 0.2, 0.2), seed=4)[0].ids != parts[0].ids


def test_missingness_summary_counts_patterns():
    d = make_incomplete(40)
    summary = missingness_summary(d)
    assert sum(summary.patterns.values()) == 40
    assert summary.per_modality["T2"] == int(d.masks["T2"].sum())
    complete = int((d.masks["T1"] & d.masks["T2"] & d.masks["US"]).sum())
    assert summary.n_complete == complete
    assert "T1" in str(summary)


def test_bad_inputs_get_clear_errors():
    with pytest.raises(DatasetError, match="different numbers of samples"):
        MultimodalBaseDataset({"a": torch.zeros(3, 2), "b": torch.zeros(4, 2)})
    with pytest.raises(DatasetError, match="missing for every subject"):
        IncompleteDataset({"a": torch.zeros(3, 2), "b": torch.ones(3, 2)},
                          {"a": torch.ones(3, dtype=torch.bool), "b": torch.zeros(3, dtype=torch.bool)})
    with pytest.raises(DatasetError, match="NaN"):
        IncompleteDataset({"a": torch.tensor([[float("nan")], [1.0]])}, {"a": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(DatasetError, match="unique"):
        MultimodalBaseDataset({"a": torch.zeros(2, 1)}, ids=["x", "x"])


def test_nan_in_a_missing_entry_is_harmless():
    data = {"a": torch.tensor([[float("nan")], [1.0]]), "b": torch.ones(2, 1)}
    d = IncompleteDataset(data, {"a": torch.tensor([False, True]), "b": torch.ones(2, dtype=torch.bool)})
    assert torch.isfinite(d.data["a"]).all()
