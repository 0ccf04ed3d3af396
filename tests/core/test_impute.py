import numpy as np
import pytest
import torch

from core.data import IncompleteDataset
from core.data.dataset import batches_of
from core.models import MVAE, MVAEConfig
from core.progress import Cancelled, CancelToken
from core.workflows.impute import FieldsOfView, impute_subjects, predict_with_uncertainty

DIMS = {"T1": (1, 6, 6, 6), "T2": (1, 6, 6, 6), "US": (1, 6, 6, 6)}


@pytest.fixture
def setup():
    n = 6
    data = {m: torch.randn(n, *s) for m, s in DIMS.items()}
    masks = {"T1": torch.ones(n, dtype=torch.bool), "T2": torch.tensor([1, 0, 1, 0, 1, 1]).bool(),
             "US": torch.tensor([0, 1, 1, 0, 1, 0]).bool()}
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


def _fov_setup() -> tuple[MVAE, IncompleteDataset, np.ndarray, np.ndarray]:
    """US observed by s0..s3 with known fields of view: A in all four, B in two (half), C in one; s4 and s5 lack US."""
    n, shape = 6, (1, 6, 6, 6)
    fovs = torch.zeros(n, *shape, dtype=torch.bool)
    fovs[:4, :, :2] = True  # A: every US subject
    fovs[:2, :, 2:4, :3] = True  # B: two of the four
    fovs[0, :, 4:, :, :2] = True  # C: one of the four
    data = {"T1": torch.randn(n, *shape), "US": torch.randn(n, *shape) * fovs}
    masks = {"T1": torch.ones(n, dtype=torch.bool), "US": torch.tensor([1, 1, 1, 1, 0, 0]).bool()}
    dataset = IncompleteDataset(data, masks, ids=[f"s{i}" for i in range(n)], observation_masks={"US": fovs})
    model = MVAE(MVAEConfig(n_modalities=2, latent_dim=3, input_dims={"T1": shape, "US": shape}))
    majority = np.zeros(shape, bool)
    majority[:, :2] = True
    majority[:, 2:4, :3] = True
    return model, dataset, majority, fovs.numpy()


def test_synthesized_modalities_with_observation_masks_stay_inside_a_field_of_view() -> None:
    model, dataset, majority, fovs = _fov_setup()
    fields = FieldsOfView.fit(dataset, ["s0", "s1", "s2", "s3", "s4"])
    assert fields.cohort["US"].source == "cohort majority of 4 subjects"
    assert np.array_equal(fields.cohort["US"].mask, majority)  # A and B (half of the subjects), not C
    assert "T1" not in fields.cohort  # no observation masks: observed everywhere
    hidden = impute_subjects(model, dataset, n_samples=4, subjects=["s0"], targets=["US"], fields_of_view=fields)
    assert hidden.field_of_view["s0"]["US"].source == "subject"
    for volume in (hidden.mean["s0"]["US"], hidden.std["s0"]["US"]):  # the subject's own sector, uncertainty too
        assert np.all(volume[~fovs[0]] == 0) and np.all(volume[fovs[0]] != 0)
    missing = impute_subjects(model, dataset, n_samples=4, fields_of_view=fields)
    for s in ("s4", "s5"):  # no US of their own: the cohort's most common field of view
        assert missing.field_of_view[s]["US"].source == "cohort majority of 4 subjects"
        for volume in (missing.mean[s]["US"], missing.std[s]["US"]):
            assert np.all(volume[~majority] == 0) and np.all(volume[majority] != 0)
    # Default: fitted on the dataset itself.
    assert impute_subjects(model, dataset).field_of_view["s4"]["US"].source == "cohort majority of 4 subjects"


def test_the_cohort_field_of_view_falls_back_to_the_union_when_no_voxel_has_a_majority() -> None:
    shape = (1, 3, 3, 3)
    fovs = torch.zeros(3, *shape, dtype=torch.bool)
    for i in range(3):
        fovs[i, 0, i, 0, 0] = True  # three disjoint voxels: none observed by half the subjects
    dataset = IncompleteDataset({"US": torch.rand(3, *shape) * fovs}, {"US": torch.ones(3, dtype=torch.bool)},
                                ids=["a", "b", "c"], observation_masks={"US": fovs})
    cohort = FieldsOfView.fit(dataset).cohort["US"]
    assert cohort.source == "cohort union of 3 subjects"
    assert np.array_equal(cohort.mask, fovs.any(0).numpy())


def test_the_uncertainty_map_is_the_population_standard_deviation_of_the_decoded_samples(setup, monkeypatch):
    model, dataset = setup
    torch.manual_seed(3)
    draws = {m: torch.randn(5, 1, *DIMS[m]) * torch.linspace(0.1, 2, 6 ** 3).reshape(1, 1, 1, 6, 6, 6) for m in ("T2", "US")}
    monkeypatch.setattr(model, "predict", lambda batch, cond_mod, gen_mod, N, return_mean: {m: draws[m] for m in gen_mod})
    _, batch = next(batches_of(dataset, [0], 1))
    predicted = predict_with_uncertainty(model, batch, ["T1"], ["T2", "US"], n_samples=5)
    for m, (mean, std) in predicted.items():
        expected_std, expected_mean = torch.std_mean(draws[m].double(), dim=0, correction=0)
        np.testing.assert_allclose(mean, expected_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std, expected_std.numpy(), rtol=1e-5, atol=1e-6)
