import pytest
import torch

from core.data import DatasetError, MultimodalBaseDataset
from core.data.missingness import (
    apply_masks,
    ensure_one_observed,
    simulate_mcar,
    simulate_mnar_by_content,
    simulate_mnar_by_label,
)


def observed_any(masks):
    return torch.stack(list(masks.values())).any(0)


def test_mcar_rates_are_respected_and_everyone_keeps_a_modality():
    rates = {"T1": 0.1, "T2": 0.5, "US": 0.8}
    masks = simulate_mcar(4000, rates, seed=1)
    # subjects who lost everything (0.1 * 0.5 * 0.8 = 4 %) get one modality back, chosen uniformly
    restored = 0.1 * 0.5 * 0.8 / 3
    for m, p in rates.items():
        assert masks[m].float().mean().item() == pytest.approx(1 - p + restored, abs=0.025), m
    assert observed_any(masks).all()
    assert torch.equal(simulate_mcar(4000, {"T1": 0.1, "T2": 0.5, "US": 0.8}, seed=1)["T2"], masks["T2"])


def test_mcar_on_existing_masks_only_hides_more():
    base = {"a": torch.arange(500) % 2 == 0, "b": torch.arange(500) % 3 != 0}
    more = simulate_mcar(base, {"a": 0.5, "b": 0.5}, seed=3)
    for m in base:
        assert not (more[m] & ~base[m]).any(), f"'{m}' came back for a subject that never had it"
        assert more[m].sum() < base[m].sum()
    had_any = observed_any(base)
    assert torch.equal(observed_any(more), had_any)


def test_ensure_one_observed_only_returns_what_was_acquired():
    masks = {"a": torch.zeros(3, dtype=torch.bool), "b": torch.zeros(3, dtype=torch.bool)}
    available = {"a": torch.tensor([True, False, False]), "b": torch.tensor([False, True, False])}
    fixed = ensure_one_observed(masks, prefer="b", available=available)
    assert fixed["a"].tolist() == [True, False, False] and fixed["b"].tolist() == [False, True, False]


def test_mnar_by_label_depends_on_the_class():
    labels = torch.arange(3000) % 2
    masks = simulate_mnar_by_label(labels, {"US": [0.9, 0.1]}, ["T1", "US"], seed=2)
    kept = [masks["US"][labels == c].float().mean().item() for c in (0, 1)]
    assert kept[0] == pytest.approx(0.1, abs=0.04) and kept[1] == pytest.approx(0.9, abs=0.04)
    assert observed_any(masks).all()


def test_mnar_by_content_hides_high_scores_more():
    x = torch.randn(2000, 5) + torch.linspace(-2, 2, 2000)[:, None]
    masks = simulate_mnar_by_content({"T1": torch.randn(2000, 5), "US": x}, "US", score="mean", slope=3.0, seed=0)
    high, low = masks["US"][1000:].float().mean(), masks["US"][:1000].float().mean()
    assert high < low - 0.4
    assert masks["T1"].all()


def test_ensure_one_observed_prefers_the_named_modality():
    masks = {"a": torch.tensor([False, True]), "b": torch.tensor([False, False])}
    fixed = ensure_one_observed(masks, prefer="b")
    assert fixed["b"][0] and not fixed["a"][0]


def test_unknown_modality_and_bad_rates_are_named():
    with pytest.raises(DatasetError, match="'FLAIR'"):
        simulate_mcar(10, {"FLAIR": 0.2}, modalities=["T1", "T2"])
    with pytest.raises(DatasetError, match="between 0 and 1"):
        simulate_mcar(10, {"T1": 1.5})
    with pytest.raises(DatasetError, match="unknown modalities"):
        simulate_mnar_by_content({"a": torch.zeros(3, 2)}, "b")
    with pytest.raises(DatasetError, match="class values"):
        simulate_mnar_by_label(torch.tensor([0, -1]), {"US": [0.5, 0.5]}, ["T1", "US"])
    with pytest.raises(DatasetError, match="2 classes"):
        simulate_mnar_by_label(torch.tensor([0, 2]), {"US": [0.5, 0.5]}, ["T1", "US"])


def test_mnar_by_content_on_a_single_sample_is_defined():
    masks = simulate_mnar_by_content({"T1": torch.ones(1, 4), "US": torch.ones(1, 4)}, "US", seed=0)
    assert observed_any(masks).all() and masks["T1"].all()


def test_apply_masks_zeroes_hidden_entries_and_keeps_ground_truth():
    complete = MultimodalBaseDataset({"a": torch.ones(6, 2), "b": torch.full((6, 3), 2.0)}, ids=list("abcdef"))
    masks = {"a": torch.tensor([1, 1, 0, 1, 0, 1]).bool()}
    incomplete = apply_masks(complete, masks)
    assert torch.all(incomplete.data["a"][~masks["a"]] == 0)
    assert torch.all(complete.data["a"] == 1)
    assert incomplete.ids == complete.ids and incomplete.masks["b"].all()
