"""Per-subject synthesis: uncertainty is zero for one sample and positive for several, leave-one-out scores are
core's metrics, exports keep the source geometry with a provenance sidecar, a cancelled batch leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from core.data.sources import DataConfig, load_data
from core.metrics import imputation_metrics, mse, psnr, ssim
from core.models import MVAE, MVAEConfig, save_bundle
from core.progress import Cancelled
from core.synthesis import (
    METRIC_COLUMNS,
    SynthesisContext,
    SynthesisError,
    export_missing,
    export_volume,
    leave_one_out,
    leave_one_out_table,
    synthesize_subject,
    write_metrics_csv,
)

DEMO = {"n_subjects": 12, "shape": [16, 16, 16], "seed": 2, "template": "procedural"}


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> SynthesisContext:
    import os

    os.environ.setdefault("MMVAE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mmvae-cache"))
    loaded = load_data(DataConfig(source="demo", demo=DEMO))
    torch.manual_seed(0)
    dataset = loaded.dataset
    model = MVAE(MVAEConfig(n_modalities=len(dataset.modalities), latent_dim=4, input_dims=dataset.input_dims))
    run = tmp_path_factory.mktemp("run")
    save_bundle(model, run / "final_model")
    ids = list(dataset.ids)
    (run / "split.json").write_text(json.dumps({"train": ids[:8], "validation": ids[8:10], "test": ids[10:]}))
    return SynthesisContext.from_run(run, loaded)


def _incomplete_subject(ctx: SynthesisContext) -> str:
    return next(s for s in ctx.dataset.ids if 2 <= len(ctx.observed(s)) < len(ctx.modalities))


def test_uncertainty_is_zero_for_one_sample_and_positive_for_several(context: SynthesisContext) -> None:
    subject = _incomplete_subject(context)
    one = synthesize_subject(context, subject, n_samples=1)
    many = synthesize_subject(context, subject, n_samples=6)
    assert set(one.results) == set(context.missing(subject))
    for m in one.results:
        assert np.all(one.results[m].std == 0)
        assert float(many.results[m].std.mean()) > 0
        assert many.results[m].mean.shape == context.dataset.input_dims[m]
        assert one.results[m].real is None and not one.results[m].metrics  # nothing real to compare with
    again = synthesize_subject(context, subject, n_samples=6)
    assert all(np.array_equal(again.results[m].mean, many.results[m].mean) for m in many.results)  # seeded


def test_leave_one_out_scores_are_cores_metrics(context: SynthesisContext) -> None:
    subject = _incomplete_subject(context)
    hidden = context.observed(subject)[0]
    result = leave_one_out(context, subject, hidden, n_samples=1)
    item = result.results[hidden]
    assert result.hidden == hidden and hidden not in result.conditioning
    assert item.real is not None
    x, x_hat = torch.from_numpy(item.real)[None], torch.from_numpy(item.mean)[None]
    obs = torch.from_numpy(item.observed)[None] if item.observed is not None else None
    rng = context.ranges[hidden]
    assert item.metrics["mse"] == pytest.approx(float(mse(x, x_hat, obs)[0]), rel=1e-6)
    assert item.metrics["psnr"] == pytest.approx(float(psnr(x, x_hat, rng, obs)[0]), rel=1e-6)
    assert item.metrics["ssim"] == pytest.approx(float(ssim(x, x_hat, rng, obs)[0]), rel=1e-5)
    # ... and what core's imputation metrics report for this subject, model and mean-image baseline alike.
    index = context.index
    train = context.dataset.subset([index[s] for s in context.dataset.ids[:8]])
    rows = imputation_metrics(context.model, train, context.dataset.subset([index[subject]]),
                              subsets=[result.conditioning], include_reconstruction=False)
    by_metric = {r["metric"]: r for r in rows if r["target"] == hidden}
    for metric in ("mse", "psnr", "ssim"):
        assert item.metrics[metric] == pytest.approx(by_metric[metric]["model"], rel=1e-4, abs=1e-6)
        assert item.baseline[metric] == pytest.approx(by_metric[metric]["train_mean"], rel=1e-4, abs=1e-6)
    table = leave_one_out_table(context, [subject])
    row = next(r for r in table if r["modality"] == hidden)
    assert row["mse"] == pytest.approx(item.metrics["mse"], rel=1e-5)
    assert row["mean_image_mse"] == pytest.approx(item.baseline["mse"], rel=1e-5)


def test_bad_requests_are_explained(context: SynthesisContext) -> None:
    subject = _incomplete_subject(context)
    lacking = context.missing(subject)[0]
    with pytest.raises(SynthesisError, match=f"has no {lacking}"):
        synthesize_subject(context, subject, [lacking])
    with pytest.raises(SynthesisError, match="leave-one-out"):
        leave_one_out(context, subject, lacking)
    with pytest.raises(SynthesisError, match="not in the data"):
        synthesize_subject(context, "sub-999")


def test_metrics_csv(context: SynthesisContext, tmp_path: Path) -> None:
    rows = leave_one_out_table(context, context.dataset.ids[:4])
    path = write_metrics_csv(rows, tmp_path / "metrics.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split(",") == METRIC_COLUMNS
    expected = sum(len(context.observed(s)) for s in context.dataset.ids[:4] if len(context.observed(s)) >= 2)
    assert len(lines) == 1 + expected


def test_export_keeps_the_source_geometry_and_writes_the_sidecar(context: SynthesisContext, tmp_path: Path) -> None:
    subject = _incomplete_subject(context)
    target = context.missing(subject)[0]
    synthesis = synthesize_subject(context, subject, n_samples=3)
    result = export_volume(context, synthesis, target, tmp_path / f"{subject}_{target}.nii.gz", uncertainty=True)
    record = context.records[subject]
    source = nib.load(record.modalities[record.reference_modality].path)
    written = nib.load(result.image)
    assert written.shape == source.shape
    assert np.allclose(written.affine, source.affine, atol=1e-5)
    std = nib.load(result.uncertainty)
    assert std.shape == source.shape and np.allclose(std.affine, source.affine, atol=1e-5)
    assert float(np.asarray(std.dataobj).max()) > 0
    sidecar = json.loads(result.sidecar.read_text(encoding="utf-8"))
    assert sidecar["synthetic"] is True and sidecar["modality"] == target and sidecar["subject"] == subject
    assert sidecar["model"] == "MVAE" and sidecar["n_samples"] == 3
    assert sidecar["conditioning_modalities"] == synthesis.conditioning
    assert sidecar["uncertainty"] == result.uncertainty.name


def test_cohort_export_is_cancellable_and_leaves_no_partial_files(context: SynthesisContext, tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("the user's file")
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # cancel in the middle of the batch

    with pytest.raises(Cancelled):
        export_missing(context, out, n_samples=2, uncertainty=True, cancel=cancel)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    events = []
    written = export_missing(context, out, n_samples=2, uncertainty=True, progress=lambda d, t, m: events.append((d, t)))
    expected = sum(len(context.missing(s)) for s in context.dataset.ids if context.observed(s))
    assert len(written) == expected
    assert len(list(out.glob("*_synth.nii.gz"))) == expected and len(list(out.glob("*_synth_std.nii.gz"))) == expected
    assert events[-1][0] == events[-1][1]
