import numpy as np
import pytest
import torch

from core.data import IncompleteDataset
from core.impute import impute_subjects
from core.models import MVAE, MVAEConfig
from core.progress import Cancelled, CancelToken

DIMS = {"T1": (1, 6, 6, 6), "T2": (1, 6, 6, 6), "US": (1, 6, 6, 6)}


@pytest.fixture
def setup():
    n = 6
    data = {m: torch.randn(n, *s) for m, s in DIMS.items()}
    masks = {"T1": torch.ones(n, dtype=torch.bool), "T2": torch.tensor([1, 0, 1, 0, 1, 1]).bool(), "US": torch.tensor([0, 1, 1, 0, 1, 0]).bool()}
    dataset = IncompleteDataset(data, masks, ids=[f"s{i}" for i in range(n)])
    model = MVAE(MVAEConfig(n_modalities=3, latent_dim=3, input_dims=DIMS))
    return model, dataset


def test_every_missing_modality_is_imputed_from_what_the_subject_has(setup):
    model, dataset = setup
    result = impute_subjects(model, dataset, n_samples=1)
    for i, subject in enumerate(dataset.ids):
        missing = {m for m in DIMS if not dataset.masks[m][i]}
        assert set(result.mean.get(subject, {})) == missing
        if missing:
            assert result.conditioning[subject] == [m for m in DIMS if dataset.masks[m][i]]
    assert result.mean["s1"]["T2"].shape == DIMS["T2"]


def test_uncertainty_is_zero_for_one_sample_and_positive_for_several(setup):
    model, dataset = setup
    one = impute_subjects(model, dataset, n_samples=1)
    many = impute_subjects(model, dataset, n_samples=8)
    assert all(np.all(v == 0) for maps in one.std.values() for v in maps.values())
    assert all(v.max() > 0 for maps in many.std.values() for v in maps.values())
    # N = 1 decodes the posterior mean: deterministic
    again = impute_subjects(model, dataset, n_samples=1)
    assert np.array_equal(one.mean["s0"]["US"], again.mean["s0"]["US"])


def test_leave_one_out_hides_an_observed_modality(setup):
    model, dataset = setup
    result = impute_subjects(model, dataset, subjects=["s2"], targets=["T2"])
    assert set(result.mean["s2"]) == {"T2"} and result.conditioning["s2"] == ["T1", "US"]
    with pytest.raises(ValueError, match="no observed modality"):
        impute_subjects(model, dataset, subjects=["s3"], targets=["T1"])  # s3 has T1 only


def test_cancel_stops_imputation(setup):
    model, dataset = setup
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        impute_subjects(model, dataset, cancel=token)
