"""Resampling, normalisation, crop/pad and their inverse; bad input leaves the rest of the cohort loading."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nibabel.processing import resample_from_to
from pydantic import ValidationError

from core.data.cohort import read_manifest
from core.data.dataset import collate_multimodal, missingness_summary
from core.data.geometry import Geometry
from core.data.loading import load_cohort_dataset
from core.data.preprocessing.config import PreprocessingConfig, PreprocessingError
from core.data.preprocessing.pipeline import plan_preprocessing
from core.data.preprocessing.records import CohortRecords
from core.data.preprocessing.resampling import resample
from core.data.preprocessing.source_space import denormalize, to_source_space
from core.data.writers import write_volume
from core.progress import Cancelled, ProgressReporter

FLIP = np.diag([-1.0, -1.0, 1.0])


def rot(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def affine(spacing, angles=(0, 0, 0), origin=(0, 0, 0), flip=(1, 1, 1)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rot(*angles) @ np.diag(np.asarray(spacing) * np.asarray(flip))
    a[:3, 3] = origin
    return a.astype(np.float32).astype(np.float64)


def smooth_field(shape, seed=0) -> np.ndarray:
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    rng = np.random.default_rng(seed)
    return (1000 + 300 * np.sin(3 * i + rng.random()) * np.cos(2 * j) + 200 * k + 50 * i * j).astype(np.float32)


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def to_sitk(array, geometry: Geometry) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(tuple(FLIP @ geometry.affine[:3, 3]))
    img.SetDirection(tuple((FLIP @ geometry.direction).ravel()))
    return img


# ---------------------------------------------------------------------------------------------------------
# Resampling against SimpleITK and nibabel
# ---------------------------------------------------------------------------------------------------------


def test_resampling_agrees_with_simpleitk_and_nibabel():
    src_g = Geometry.from_affine((24, 20, 14), affine((1.0, 1.2, 2.0), (0.1, 0.0, 0.2), (-10, -12, -14), flip=(-1, 1, 1)))
    data = smooth_field(src_g.shape)
    tgt_g = Geometry.from_affine((12, 14, 10), affine((1.7, 1.9, 2.3), (0.0, 0.17, -0.1), (-33.3, -13.1, -9.6)))
    ours, inside = resample(data, src_g, tgt_g, order=1)
    assert 0.3 < inside.mean() < 1.0  # the test grid sticks out of the source on purpose
    # SimpleITK: the same physical space, the same linear interpolation.
    ref = sitk.Resample(to_sitk(data, src_g), to_sitk(np.zeros(tgt_g.shape, np.float32), tgt_g), sitk.Transform(),
                        sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    theirs = sitk.GetArrayFromImage(ref).transpose(2, 1, 0)
    assert np.abs(ours - theirs)[inside].max() < 1e-2  # data up to 1500: float32 rounding at most
    assert np.array_equal(theirs != 0, inside)  # the same field of view (the data is > 0 everywhere)
    # nibabel (scipy, constant outside): identical away from the field-of-view edge.
    nib_out = resample_from_to(nib.Nifti1Image(data, src_g.affine), (tgt_g.shape, tgt_g.affine), order=1).get_fdata()
    interior = resample_from_to(nib.Nifti1Image(np.ones_like(data), src_g.affine), (tgt_g.shape, tgt_g.affine),
                                order=1).get_fdata() > 1 - 1e-6
    assert interior.sum() > 100
    assert np.allclose(ours[interior], nib_out[interior], atol=1e-2)


def test_exact_voxel_mapping_copies_values():
    g = Geometry.from_affine((7, 8, 9), affine((1.0, 2.0, 3.0), flip=(-1, -1, 1), origin=(5, 6, 7)))
    data = np.random.default_rng(0).random(g.shape).astype(np.float32)
    can = g.canonical().crop_or_pad((5, 10, 9))
    out, inside = resample(data, g, can)
    assert inside.sum() == 5 * 8 * 9
    back, back_inside = resample(out, can, g)
    assert np.array_equal(back[back_inside], data[back_inside]) and back_inside.sum() == 5 * 8 * 9


def test_antialiasing_when_downsampling():
    g = Geometry.from_affine((33, 33, 9), np.eye(4))
    checker = (np.indices(g.shape).sum(0) % 2).astype(np.float32)
    coarse = g.with_spacing((3.0, 3.0, 1.0))  # samples land on source voxels: without smoothing, pure aliasing
    plain, _ = resample(checker, g, coarse, antialias=False)
    smooth, _ = resample(checker, g, coarse, antialias=True)
    assert plain.std() > 0.3  # aliasing: the checkerboard survives as a pattern
    assert smooth[2:-2, 2:-2].std() < 0.05


# ---------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def cohort(tmp_path) -> Path:
    """s0: LPS oblique T1 NIfTI, T2 on another grid (NRRD), US with zeros outside its sector;
    s1: T1, US + explicit FOV mask file; s2: T2 only (the reference is missing)."""
    root = tmp_path / "c"
    root.mkdir()
    rows = []
    t1_aff = affine((1.1, 1.0, 1.5), (0.0, 0.0, 0.12), (30, 20, -10), flip=(-1, -1, 1))
    for k, s in enumerate(["s0", "s1", "s2"]):
        brain = np.zeros((20, 22, 16), np.float32)
        brain[3:17, 4:18, 3:13] = smooth_field((14, 14, 10), seed=k)
        if k < 2:
            nib.save(nib.Nifti1Image(brain, t1_aff), root / f"{s}_t1.nii.gz")
            rows.append([s, "T1", f"{s}_t1.nii.gz", ""])
        if k != 1:
            t2_aff = affine((1.6, 1.6, 2.0), (0.05, 0, 0), (8, -2, -12))
            t2 = np.zeros((14, 15, 10), np.float32)
            t2[2:12, 2:13, 2:8] = smooth_field((10, 11, 6), seed=10 + k) / 10
            write_volume(root / f"{s}_t2.nrrd", t2, Geometry.from_affine(t2.shape, t2_aff))
            rows.append([s, "T2", f"{s}_t2.nrrd", ""])
        if k < 2:
            us = np.zeros((20, 22, 16), np.float32)
            us[5:15, 6:16, 4:12] = np.random.default_rng(k).random((10, 10, 8)) * 200 + 5
            nib.save(nib.Nifti1Image(us, t1_aff), root / f"{s}_us.nii.gz")
            mask = ""
            if k == 1:
                fov = np.zeros((20, 22, 16), np.uint8)
                fov[5:15, 6:12, 4:12] = 1  # smaller than the non-zero region: the file wins
                nib.save(nib.Nifti1Image(fov, t1_aff), root / f"{s}_us_fov.nii.gz")
                mask = f"{s}_us_fov.nii.gz"
            rows.append([s, "US", f"{s}_us.nii.gz", mask])
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["subject", "modality", "path", "observation_mask"])
        w.writerows(rows)
    (root / "participants.tsv").write_text("participant_id\tage\ns0\t30\ns1\t40\ns2\t50\n")
    return root


SHAPE = (16, 24, 16)


@pytest.fixture
def loaded(cohort):
    return load_cohort_dataset(cohort / "manifest.csv", PreprocessingConfig(target_shape=SHAPE))


def test_pipeline_shapes_masks_and_labels(loaded):
    ds, records = loaded
    assert ds.ids == ["s0", "s1", "s2"] and ds.modalities == ["T1", "T2", "US"]
    assert ds.input_dims == {m: (1, *SHAPE) for m in ds.modalities}
    assert {m: ds.masks[m].tolist() for m in ds.modalities} == {
        "T1": [True, True, False], "T2": [True, False, True], "US": [True, True, False]}
    assert ds.labels["age"].tolist() == [30.0, 40.0, 50.0]
    assert set(ds.observation_masks) == {"T1", "T2", "US"}  # T1 padded in y, T2 partial FOV, US sector
    for m in ds.modalities:
        missing = ~ds.masks[m]
        assert not ds.observation_masks[m][missing].any()
        assert torch.all(ds.data[m][~ds.observation_masks[m]] == 0)
    rec = records["s0"]
    assert rec.reference_modality == "T1" and rec.grid.shape == SHAPE and rec.grid.orientation == "RAS"
    assert rec.modalities["T1"].resampling == "exact" and rec.modalities["T2"].resampling == "linear"
    assert records["s2"].reference_modality == "T2"
    assert any("reference modality T1 is missing" in i.message for i in records["s2"].issues)
    batch = collate_multimodal([ds[0], ds[2]])
    assert batch.data["T1"].shape == (2, 1, *SHAPE) and batch.observation_masks["US"].shape == (2, 1, *SHAPE)
    assert missingness_summary(ds).per_modality == {"T1": 2, "T2": 2, "US": 2}


def test_normalisation_statistics(loaded):
    ds, records = loaded
    t1 = ds.data["T1"][0]
    fg = t1 != 0
    assert abs(float(t1[fg].mean())) < 1e-3 and abs(float(t1[fg].std(unbiased=False)) - 1) < 1e-3
    p = records["s0"].modalities["T1"].normalization
    assert p.method == "zscore" and p.region == "foreground" and p.clip_low < p.clip_high
    us = ds.data["US"][0][ds.observation_masks["US"][0]]
    assert float(us.min()) == 0.0 and abs(float(us.max()) - 1.0) < 1e-6
    assert records["s0"].modalities["US"].normalization.method == "minmax"


def test_us_observation_mask_from_file_or_nonzero(loaded, cohort):
    ds, records = loaded
    obs0, obs1 = ds.observation_masks["US"][0, 0], ds.observation_masks["US"][1, 0]
    assert records["s0"].modalities["US"].observation == "nonzero"
    assert records["s1"].modalities["US"].observation == "file"
    assert int(obs0.sum()) == 10 * 10 * 8 and int(obs1.sum()) == 10 * 6 * 8
    grid = records["s1"].grid
    fov = nib.load(cohort / "s1_us_fov.nii.gz")
    expected, _ = resample(np.asarray(fov.dataobj, np.float32), Geometry.from_affine(fov.shape, fov.affine), grid, order=0)
    assert torch.equal(obs1, torch.from_numpy(expected > 0.5))


def test_inverse_gives_back_the_source_grid_and_values(loaded, cohort):
    ds, records = loaded
    rec = records["s0"]
    src = nib.load(cohort / "s0_t1.nii.gz")
    back, geom, inside = to_source_space(ds.data["T1"][0], rec, "T1")
    assert geom.shape == src.shape and np.allclose(geom.affine, src.affine)
    values = denormalize(back, rec.modalities["T1"].normalization)
    p = rec.modalities["T1"].normalization
    x = src.get_fdata()
    fg = inside & (x != 0)
    assert inside.sum() == 16 * 22 * 16  # x cropped 20 -> 16; y padded; z kept
    assert np.allclose(values[fg], np.clip(x, p.clip_low, p.clip_high)[fg], atol=1e-2)
    # Onto the T2 file's grid too (another format, another grid).
    back2, geom2, _ = to_source_space(ds.data["T2"][0], rec, "T2")
    assert geom2.allclose(rec.modalities["T2"].source_geometry, atol=0)
    with pytest.raises(PreprocessingError, match="no FLAIR source"):
        to_source_space(ds.data["T1"][0], rec, "FLAIR")


def test_target_spacing_and_default_shape(cohort):
    ds, records = load_cohort_dataset(cohort / "manifest.csv", PreprocessingConfig(target_spacing=(2.0, 2.0, 2.0)))
    grid = records["s0"].grid
    assert np.allclose(grid.spacing, 2.0) and grid.shape == (11, 11, 12)
    assert records["s0"].modalities["T1"].antialias_sigma is not None
    # s2's reference (T2 at 1.6/2.0 mm) gives another shape: centre crop/pad to the common one, with a warning.
    assert all(records[s].grid.shape == ds.input_dims["T1"][1:] for s in ds.ids)
    assert any("different shapes" in i.message for i in records.issues)


def test_records_round_trip_through_json(loaded):
    _, records = loaded
    again = CohortRecords.from_json(records.to_json())
    assert again.keys() == records.keys() and again.modalities == records.modalities
    assert again["s0"].grid.allclose(records["s0"].grid, atol=0)
    assert again["s1"].modalities["US"].normalization == records["s1"].modalities["US"].normalization
    assert again.config == records.config
    json.loads(records.to_json())


def test_config_is_strict():
    with pytest.raises(ValidationError):
        PreprocessingConfig(target_shap=(1, 2, 3))
    with pytest.raises(ValidationError):
        PreprocessingConfig(target_spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValidationError):
        PreprocessingConfig(normalization={"method": "zscore", "percentiles": (99, 1)})
    assert "title" in PreprocessingConfig.model_json_schema()["properties"]["target_shape"]


def test_bad_reference_and_unknown_modalities(cohort):
    c = read_manifest(cohort / "manifest.csv")
    with pytest.raises(PreprocessingError, match="reference_modality 'FLAIR'"):
        plan_preprocessing(c, PreprocessingConfig(reference_modality="FLAIR"))
    ds, records = load_cohort_dataset(cohort / "manifest.csv", PreprocessingConfig(modalities=["T1", "FLAIR"], target_shape=SHAPE))
    assert ds.modalities == ["T1", "FLAIR"] and not ds.masks["FLAIR"].any()
    assert any("FLAIR is present for no subject" in i.message for i in records.issues)
    assert ds.ids == ["s0", "s1"]  # s2 has neither


def test_progress_and_cancel(cohort):
    reporter = ProgressReporter(bar=False)
    load_cohort_dataset(cohort / "manifest.csv", PreprocessingConfig(target_shape=SHAPE), progress=reporter)
    assert [(e.done, e.total) for e in reporter.events] == [(1, 3), (2, 3), (3, 3)]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        load_cohort_dataset(cohort / "manifest.csv", PreprocessingConfig(target_shape=SHAPE), cancel=cancel)


# ---------------------------------------------------------------------------------------------------------
# Bad input: per-file errors, per-subject warnings, the rest loads, nothing modified
# ---------------------------------------------------------------------------------------------------------


def test_bad_input_cohort_still_loads(tmp_path):
    root = tmp_path / "bad"
    a = np.diag([1.0, 1.0, 1.0, 1.0])
    good = np.zeros((12, 12, 12), np.float32)
    good[2:10, 2:10, 2:10] = smooth_field((8, 8, 8))

    def save(name, data, aff=a):
        (root / name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, aff), root / name.split("_")[0] / f"{name}.nii.gz")

    for s in ["ok1", "ok2"]:
        save(f"{s}_t1", good)
        save(f"{s}_t2", good * 2)
    save("nan_t1", np.full((12, 12, 12), np.nan, np.float32))
    save("nan_t2", good)
    save("const_t1", good)
    save("const_t2", np.full((12, 12, 12), 7.0, np.float32))
    save("fourd_t1", good)
    save("fourd_t2", np.stack([good, good], -1))
    far = a.copy()
    far[:3, 3] = 400
    save("far_t1", good)
    save("far_t2", good, far)
    part = good.copy()
    part[:, :, :3] = np.nan
    save("partnan_t1", part)
    save("partnan_t2", good)
    save("wide_t1", good, np.diag([3.0, 3.0, 3.0, 1.0]))
    (root / "broken").mkdir()
    (root / "broken" / "broken_t1.nii.gz").write_bytes(b"\x1f\x8b\x08 not really")
    (root / "broken" / "broken_t2.nii.gz").write_text("plain text")
    before = digest(root)

    ds, records = load_cohort_dataset(root, PreprocessingConfig(target_shape=(12, 12, 12)))
    assert digest(root) == before
    assert "broken" not in ds.ids and "broken" in records and records["broken"].grid is None
    m = {s: (bool(ds.masks["T1"][i]), bool(ds.masks["T2"][i])) for i, s in enumerate(ds.ids)}
    assert m == {"const": (True, False), "far": (True, False), "fourd": (True, False), "nan": (False, True),
                 "ok1": (True, True), "ok2": (True, True), "partnan": (True, True), "wide": (True, False)}

    def issue(subject, word, level="error"):
        hits = [i for i in records.issues if i.subject == subject and word in i.message and i.level == level]
        assert hits, (subject, word, [str(i) for i in records.issues if i.subject == subject])
        assert hits[0].fix
        return hits[0]

    assert "nan_t1.nii.gz" in issue("nan", "NaN").path
    assert "const_t2.nii.gz" in issue("const", "constant").path
    assert "fourd_t2.nii.gz" in issue("fourd", "4D").path
    assert issue("far", "does not overlap")
    assert issue("broken", "not a readable NIfTI")
    assert issue("broken", "left out")
    assert issue("partnan", "NaN", level="warning")
    assert issue("wide", "spacing", level="warning")
    i = ds.ids.index("partnan")
    assert not ds.observation_masks["T1"][i, 0, :, :, :3].any() and ds.observation_masks["T1"][i, 0, :, :, 3:].all()
    assert torch.isfinite(ds.data["T1"]).all()
