"""Latent projections: colouring by missingness follows the masks, per-modality views, subsampling that says
"n of N", the per-run cache (npz + json, no pickle), t-SNE, cancellation and the optional UMAP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.demo import DemoSpec, make_demo_dataset
from core.models import MVAE, MVAEConfig, save_bundle
from core.progress import Cancelled
from core.workflows.projection import (
    JOINT,
    ProjectionError,
    available_methods,
    colour_columns,
    load_cached,
    missingness_patterns,
    project_cohort,
    project_run,
    stratified_subsample,
)


@pytest.fixture(scope="module")
def cohort() -> tuple:
    dataset, _ = make_demo_dataset(DemoSpec(n_subjects=12, shape=(16, 16, 16), template="procedural", seed=3))
    torch.manual_seed(0)
    model = MVAE(MVAEConfig(n_modalities=len(dataset.modalities), latent_dim=4, input_dims=dataset.input_dims))
    return dataset, model


@pytest.fixture
def run_dir(tmp_path: Path, cohort: tuple) -> Path:
    dataset, model = cohort
    run = tmp_path / "run"
    save_bundle(model, run / "final_model")
    ids = list(dataset.ids)
    (run / "split.json").write_text(json.dumps({"train": ids[:8], "validation": ids[8:10], "test": ids[10:], "source": "demo"}))
    return run


def _dataset_patterns(dataset, modalities, subjects) -> list[str]:
    index = {s: i for i, s in enumerate(dataset.ids)}
    masks = np.stack([dataset.masks[m].numpy() for m in modalities], axis=1)
    return missingness_patterns(masks[[index[s] for s in subjects]], modalities)


def test_colouring_by_missingness_matches_the_cohort_masks(cohort: tuple) -> None:
    dataset, model = cohort
    projection = project_cohort(model, dataset, method="pca")
    assert projection.n_shown == projection.n_total == len(dataset)
    column = projection.colours["missingness"]
    assert column.kind == "categorical"
    expected = _dataset_patterns(dataset, model.modalities, projection.subjects)
    assert column.labels() == expected == projection.patterns()
    assert len(set(expected)) > 1  # the demo's MCAR missingness gives several patterns
    # Each single-modality view has a point exactly where the subject has that modality.
    index = {s: i for i, s in enumerate(dataset.ids)}
    for j, m in enumerate(projection.modalities):
        has = dataset.masks[m].numpy()[[index[s] for s in projection.subjects]]
        assert np.array_equal(projection.masks[:, j], has)
        assert np.array_equal(np.isfinite(projection.views[m]).all(1), has)
    assert np.isfinite(projection.views[JOINT]).all()
    assert set(projection.agreement) == set(model.modalities)
    assert projection.caption() == f"showing {len(dataset)} of {len(dataset)} subjects"


def test_covariates_become_colour_columns(cohort: tuple) -> None:
    dataset, model = cohort
    columns = colour_columns(dataset, model.modalities, split={"train": list(dataset.ids[:6]), "test": list(dataset.ids[6:])})
    assert columns["lesion_present"].kind == "categorical"
    assert set(columns["lesion_present"].labels()) <= {"0", "1"}
    assert columns["lesion_volume_ml"].kind == "continuous"
    assert columns["split"].labels() == ["train"] * 6 + ["test"] * (len(dataset) - 6)


def test_pca_is_deterministic_and_shares_axes_between_views(cohort: tuple) -> None:
    dataset, model = cohort
    a = project_cohort(model, dataset, method="pca")
    b = project_cohort(model, dataset, method="pca")
    for key in a.views:
        assert np.allclose(a.views[key], b.views[key], equal_nan=True)
    # A subject encoded from all its modalities and from its only modality is the same code: same 2D point.
    one = [i for i, row in enumerate(a.masks) if row.sum() == 1]
    for i in one:
        m = a.modalities[int(np.flatnonzero(a.masks[i])[0])]
        assert np.allclose(a.views[m][i], a.views[JOINT][i], atol=1e-5)


def test_subsampling_is_stratified_and_says_n_of_n(cohort: tuple) -> None:
    dataset, model = cohort
    projection = project_cohort(model, dataset, method="pca", max_points=5, seed=1)
    assert projection.n_shown == 5 and projection.n_total == len(dataset)
    assert projection.caption().startswith("showing 5 of 12 subjects")
    patterns = ["a"] * 90 + ["b"] * 9 + ["rare"]
    chosen = stratified_subsample(patterns, 20, seed=0)
    kept = [patterns[i] for i in chosen]
    assert len(chosen) == 20 and "rare" in kept and kept.count("a") >= 17


def test_projection_is_cached_per_run_without_pickle(run_dir: Path, cohort: tuple) -> None:
    dataset, _ = cohort
    first = project_run(run_dir, dataset, method="pca")
    assert not first.from_cache
    files = sorted(p.name for p in (run_dir / "projections").iterdir())
    assert files == [f"{first.key}.json", f"{first.key}.npz"]
    with np.load(run_dir / "projections" / f"{first.key}.npz", allow_pickle=False) as arrays:
        assert arrays["view__joint"].shape == (len(dataset), 2)
    second = project_run(run_dir, dataset, method="pca")
    assert second.from_cache and second.key == first.key
    assert second.subjects == first.subjects
    assert np.allclose(second.views[JOINT], first.views[JOINT])
    assert second.colours["missingness"].labels() == first.colours["missingness"].labels()
    assert second.colours["split"].labels()[:8] == ["train"] * 8
    assert load_cached(run_dir / "projections", "pca-unknown") is None
    other = project_run(run_dir, dataset, method="pca", max_points=6)
    assert other.key != first.key and not other.from_cache


def test_tsne_embeds_every_view_together(cohort: tuple) -> None:
    dataset, model = cohort
    projection = project_cohort(model, dataset, method="tsne")
    assert np.isfinite(projection.views[JOINT]).all()
    for j, m in enumerate(projection.modalities):
        assert np.array_equal(np.isfinite(projection.views[m]).all(1), projection.masks[:, j])


def test_umap_only_when_installed(cohort: tuple) -> None:
    dataset, model = cohort
    if "umap" in available_methods():
        pytest.skip("umap-learn is installed here")
    with pytest.raises(ProjectionError, match="not installed"):
        project_cohort(model, dataset, method="umap")
    with pytest.raises(ProjectionError, match="Unknown projection method"):
        project_cohort(model, dataset, method="mds")


def test_cancel_stops_the_encoding(cohort: tuple) -> None:
    dataset, model = cohort
    events = []
    with pytest.raises(Cancelled):
        project_cohort(model, dataset, progress=lambda d, t, m: events.append(d), cancel=lambda: len(events) >= 1)
    assert events == [1]


def test_two_dimensional_images(tmp_path: Path) -> None:
    dataset, _ = make_demo_dataset(DemoSpec(n_subjects=10, shape=(16, 16), dims=2, seed=1, template="procedural"))
    model = MVAE(MVAEConfig(n_modalities=len(dataset.modalities), latent_dim=3, input_dims=dataset.input_dims))
    projection = project_cohort(model, dataset, method="pca")
    assert projection.views[JOINT].shape == (10, 2)
    assert projection.colours["missingness"].labels() == _dataset_patterns(dataset, model.modalities, projection.subjects)
