"""The synthesis benchmark's quick path end to end on tiny data, and its bookkeeping by hand."""

import json
import math

import pytest
import torch

from benchmarks import synthesis_quality as bench


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread) -> None:
    """Tiny models: see ``one_torch_thread``."""


def test_win_fractions_quartiles_and_json_safety_by_hand():
    assert bench._fraction_beating([1.0, 2.0, math.nan], [0.0, 3.0, 1.0], higher=True) == 0.5
    assert bench._fraction_beating([1.0, 2.0], [0.0, 3.0], higher=False) == 0.5
    assert bench._fraction_beating([math.nan], [1.0], higher=True) is None
    assert bench._quartiles([1.0, 2.0, 3.0, 4.0, 5.0, math.nan]) == {"median": 3.0, "q25": 2.0, "q75": 4.0, "iqr": 2.0, "n": 5}
    assert bench._finite({"a": [math.nan, 1.0], "b": math.inf}) == {"a": [None, 1.0], "b": None}


def test_quick_run_scores_a_model_and_the_baselines_on_the_same_subjects(tmp_path):
    out = tmp_path / "synthesis.json"
    payload = bench.main(["--quick", "--models", "MVAE", "--tasks", "T2<-T1", "US<-T1+T2+FLAIR", "--out", str(out)])
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["data"]["grid"] == [16, 16, 16] and written["data"]["n_subjects"] == 24
    assert written["methods"].keys() == {"mean_image", "voxel_ridge", "unet", "MVAE"}
    n_test = written["data"]["n_test"]
    model = written["methods"]["MVAE"]
    assert model["preset"] in ("Synthesis", "Standard") and model["epochs"] == 1 and model["peak_rss_mb"] > 0
    # The last epoch's KL per dimension of each latent level, what the collapse check reads.
    assert model["last_epoch_kl_per_dimension"] and all(v >= 0 for v in model["last_epoch_kl_per_dimension"].values())
    for name, method in written["methods"].items():
        for task in ("T2<-T1", "US<-T1+T2+FLAIR"):
            entry = method["tasks"][task]
            assert entry["metrics"]["ssim"]["n"] == n_test and entry["metrics"]["mse"]["median"] > 0
            assert name not in entry["beats"] and set(entry["beats"]) == set(bench.BASELINES) - {name}
            assert all(0 <= v <= 1 for wins in entry["beats"].values() for v in wins.values())
    # The mean image predicts the same volume for everyone, so it cannot follow any subject's lesion.
    assert written["methods"]["mean_image"]["tasks"]["T2<-T1"]["metrics"]["lesion_contrast_error"]["median"] > 0.3
    outside = model["outside_fov_nonbackground"]["US<-T1+T2+FLAIR"]
    assert 0 <= outside["own_fov_max"] <= 1 and "T2<-T1" not in model["outside_fov_nonbackground"]
    assert set(written["goals"]) == {"MVAE"} and "beats_mean_image_on_95pct_ssim_and_mse" in written["goals"]["MVAE"]["T2<-T1"]
    assert payload["panel"]["columns"] == ["truth", "MVAE", "mean_image", "voxel_ridge", "unet"]
    assert (tmp_path / "synthesis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_hidden_target_cannot_leak_into_the_batch():
    settings = bench.settings_from_args(bench.parse_args(["--quick", "--models", "MVAE"]))
    data = bench.prepare(settings)
    batch = bench.hidden_target_batch(data.truth, "T2", [0])
    assert not bool(batch.masks["T2"].any()) and bool(torch.all(batch.data["T2"] == 0))
    assert bool(batch.masks["T1"].all()) and torch.equal(batch.data["T1"], data.truth.data["T1"][:1])
    lesion_voxels = data.lesion.flatten(1).sum(1)
    assert data.lesion.shape == data.brain.shape and lesion_voxels[data.panel_subject] == lesion_voxels.max() > 0


def test_the_cached_cohort_keeps_the_complete_ground_truth(tmp_path, monkeypatch):
    """The methods' processes read the cohort back from a cache; the test subjects' hidden targets are
    scored against its ground truth, so a volume the training split lacks must still be there in full."""
    monkeypatch.setattr(bench.tempfile, "gettempdir", lambda: str(tmp_path))
    spec = bench.DemoSpec(n_subjects=12, shape=(8, 8, 8), seed=3, missing=bench.MISSING["mcar"])
    generated = bench._load_or_make_cohort(spec)
    read_back = bench._load_or_make_cohort(spec)
    assert bench._cohort_cache(spec).is_file()
    missing = ~read_back.dataset.masks["T2"]
    assert bool(missing.any()), "the spec must leave some subject without T2 for this test to mean anything"
    for m in generated.ground_truth.modalities:
        assert torch.equal(read_back.ground_truth.data[m], generated.ground_truth.data[m])
        assert torch.equal(read_back.dataset.data[m], generated.dataset.data[m])
        assert torch.equal(read_back.dataset.masks[m], generated.dataset.masks[m])
    assert bool(read_back.ground_truth.data["T2"][missing].abs().sum() > 0)
    assert bool(torch.all(read_back.dataset.data["T2"][missing] == 0))


def test_a_model_that_cannot_serve_a_task_is_reported_as_not_served(tmp_path):
    """A CVAE generates only its main modality (the last one, US) from the others: the MR task is marked
    not served with the reason, and the US task is scored as for any model."""
    out = tmp_path / "cvae.json"
    bench.main(["--quick", "--models", "CVAE", "--baselines", "mean_image", "--tasks", "T2<-T1", "US<-T1+T2+FLAIR",
                "--out", str(out)])
    cvae = json.loads(out.read_text(encoding="utf-8"))["methods"]["CVAE"]
    assert "error" not in cvae
    assert cvae["tasks"]["T2<-T1"] == {"not_served": "A CVAE generates only 'US'; it has no decoder for ['T2']."}
    assert cvae["tasks"]["US<-T1+T2+FLAIR"]["metrics"]["ssim"]["n"] > 0
