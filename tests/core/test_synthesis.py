"""Per-subject synthesis: uncertainty is zero for one sample and positive for several, leave-one-out scores are
core's metrics, exports keep the source geometry with a provenance sidecar, a cancelled batch leaves nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import core.workflows.synthesis as synthesis_module
from core.data.sources import DataConfig, load_data
from core.metrics import imputation_metrics, mse, psnr, ssim
from core.models import CVAE, MVAE, CVAEConfig, MVAEConfig, save_bundle
from core.progress import Cancelled
from core.workflows.synthesis import (
    METRIC_COLUMNS,
    SynthesisContext,
    SynthesisError,
    Verdict,
    beats_mean_image,
    export_missing,
    export_volume,
    leave_one_out,
    leave_one_out_table,
    modality_verdicts,
    stored_verdicts,
    synthesize_subject,
    verdicts_from_rows,
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


def _row(subject: str, split: str, better: bool, modality: str = "T2") -> dict:
    ssim_model, ssim_mean = (0.8, 0.5) if better else (0.4, 0.5)
    return {"subject": subject, "split": split, "modality": modality, "mse": 0.1 if better else 0.3,
            "ssim": ssim_model, "mean_image_mse": 0.2, "mean_image_ssim": ssim_mean,
            "beats_mean_image": beats_mean_image({"mse": 0.1 if better else 0.3, "ssim": ssim_model},
                                                 {"mse": 0.2, "ssim": ssim_mean})}


def test_a_subject_beats_the_mean_image_only_on_both_mse_and_ssim() -> None:
    assert beats_mean_image({"mse": 0.1, "ssim": 0.8}, {"mse": 0.2, "ssim": 0.5}) is True
    assert beats_mean_image({"mse": 0.1, "ssim": 0.4}, {"mse": 0.2, "ssim": 0.5}) is False  # lower MSE, worse SSIM
    assert beats_mean_image({"mse": 0.3, "ssim": 0.8}, {"mse": 0.2, "ssim": 0.5}) is False
    assert beats_mean_image({"mse": 0.1}, {"mse": 0.2}) is True  # vectors: MSE alone
    assert beats_mean_image({"mse": 0.1}, {}) is None


def test_the_verdict_passes_at_95_percent_of_the_held_out_test_subjects() -> None:
    rows = [_row(f"t{i}", "test", i < 19) for i in range(20)] + [_row(f"v{i}", "validation", False) for i in range(5)]
    verdict = verdicts_from_rows(rows, ["T2"])["T2"]
    assert verdict.passed is True and (verdict.n_better, verdict.n_subjects, verdict.split) == (19, 20, "test")
    assert verdict.text == "better than the average brain for 19 of 20 held-out test subjects (median SSIM 0.80 vs 0.50)"
    assert verdict.short == "beats mean image 19/20"
    rows = [_row(f"t{i}", "test", i < 18) for i in range(20)]
    verdict = verdicts_from_rows(rows, ["T2"])["T2"]
    assert verdict.passed is False and verdict.n_better == 18  # 90 % < 95 %
    assert verdict.text.startswith("not better than the average brain: not for reading (better for only 18 of 20")
    # No test subject has the modality: the validation subjects decide; none at all: not checked.
    rows = [_row("v0", "validation", True), _row("v1", "validation", True), _row("t0", "test", False, "T1")]
    verdicts = verdicts_from_rows(rows, ["T1", "T2", "US"])
    assert verdicts["T2"].passed is True and verdicts["T2"].split == "validation" and verdicts["T2"].n_subjects == 2
    assert verdicts["T1"].passed is False and verdicts["T1"].split == "test"
    assert verdicts["US"].passed is None and "no held-out" in verdicts["US"].text
    assert Verdict.from_dict(verdicts["T2"].to_dict()) == verdicts["T2"]


def test_verdicts_come_from_every_held_out_subject_and_are_cached_in_the_run(
        context: SynthesisContext, monkeypatch: pytest.MonkeyPatch) -> None:
    context.verdicts = None
    cache = Path(context.run_dir) / "synthesis_verdicts.json"
    cache.unlink(missing_ok=True)
    verdicts = modality_verdicts(context)
    held_out = [s for s in context.dataset.ids if context.split[s] in ("test", "validation")]
    rows = leave_one_out_table(context, held_out)
    assert verdicts == verdicts_from_rows(rows, context.modalities)
    for m, verdict in verdicts.items():
        tested = [r for r in rows if r["modality"] == m and r["split"] == "test"]
        assert verdict.n_subjects == (len(tested) or len([r for r in rows if r["modality"] == m]))
    assert cache.is_file()
    # A fresh context of the same run reads the cache instead of a new leave-one-out pass ...
    fresh = SynthesisContext(context.model, context.dataset, context.train_ids, context.records, context.run_dir,
                             context.split)

    def no_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached verdict should have been used")

    monkeypatch.setattr(synthesis_module, "leave_one_out_table", no_pass)
    assert modality_verdicts(fresh) == verdicts
    assert stored_verdicts(context.run_dir) == verdicts
    # ... until the final model changes.
    weights = next(p for p in (Path(context.run_dir) / "final_model").iterdir() if p.suffix == ".safetensors")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert stored_verdicts(context.run_dir) is None
    fresh.verdicts = None
    with pytest.raises(AssertionError, match="cached verdict"):
        modality_verdicts(fresh)


def test_synthesized_ultrasound_is_background_outside_its_field_of_view(context: SynthesisContext, tmp_path: Path) -> None:
    cohort = context.fields_of_view.cohort["US"]
    assert cohort.source == (
        f"cohort majority of {sum(context.dataset.masks['US'][context.index[s]].item() for s in context.train_ids)} subjects")
    assert 0 < cohort.mask.mean() < 0.5
    lacking = next(s for s in context.dataset.ids if "US" in context.missing(s) and context.observed(s))
    item = synthesize_subject(context, lacking, n_samples=3).results["US"]
    assert item.field_of_view.source == cohort.source
    for volume in (item.mean, item.std):
        assert np.all(volume[~cohort.mask] == 0) and np.count_nonzero(volume[cohort.mask]) > 0.9 * cohort.mask.sum()
    having = next(s for s in context.dataset.ids if "US" in context.observed(s) and len(context.observed(s)) >= 2)
    hidden = leave_one_out(context, having, "US", n_samples=3).results["US"]
    own = hidden.observed.astype(bool)
    assert hidden.field_of_view.source == "subject" and np.array_equal(hidden.field_of_view.mask, own)
    assert np.all(hidden.mean[~own] == 0) and np.all(hidden.std[~own] == 0)
    assert context.fields_of_view.choose("T2", None) is None  # MR without observation masks: the whole grid
    # Exports say which field of view they used, and carry the verdict.
    synthesis = synthesize_subject(context, lacking, n_samples=2)
    result = export_volume(context, synthesis, "US", tmp_path / "us.nii.gz")
    sidecar = json.loads(result.sidecar.read_text(encoding="utf-8"))
    assert sidecar["field_of_view"] == cohort.source
    verdict = modality_verdicts(context)["US"]
    assert sidecar["verdict"]["text"] == verdict.text and sidecar["verdict"]["passed"] == verdict.passed
    descrip = nib.load(result.image).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert verdict.short in descrip
    written = export_missing(context, tmp_path / "all")
    fovs = {json.loads(r.sidecar.read_text(encoding="utf-8"))["field_of_view"] for r in written if r.modality == "US"}
    assert fovs == {cohort.source}
    assert all(json.loads(r.sidecar.read_text(encoding="utf-8"))["field_of_view"].startswith("whole grid")
               for r in written if r.modality != "US")


def test_a_model_tied_to_fixed_modalities_makes_what_it_can_and_says_why_not_the_rest(context: SynthesisContext) -> None:
    dataset = context.dataset
    torch.manual_seed(0)
    cvae = CVAE(CVAEConfig(n_modalities=len(dataset.modalities), latent_dim=4, input_dims=dataset.input_dims,
                           main_modality="T2", conditioning_modalities=["T1"]))
    ctx = SynthesisContext(cvae, dataset, context.train_ids, context.records, context.run_dir, context.split)
    subject = next(s for s in dataset.ids if "T1" in ctx.observed(s) and len(ctx.observed(s)) >= 2)
    result = synthesize_subject(ctx, subject, ["T1"])
    assert set(result.results) == {"T2"}
    assert set(result.not_generated) == set(ctx.modalities) - {"T1", "T2"}
    assert all("only 'T2'" in why for why in result.not_generated.values())
    with pytest.raises(SynthesisError, match="lacks \\['T1'\\]"):
        synthesize_subject(ctx, subject, [m for m in ctx.observed(subject) if m != "T1"])
