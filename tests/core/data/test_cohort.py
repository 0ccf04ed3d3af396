"""Discovering cohorts in the three layouts, with missing entries, and the pre-training report."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from core.config import config_from_dict, config_to_dict
from core.data.cohort import CohortError, discover_cohort, read_manifest
from core.data.geometry import Geometry
from core.data.quality import cohort_report
from core.data.sources import DataConfig, load_data
from core.data.writers import write_volume


def vol(path: Path, shape=(8, 9, 10), spacing=(1.0, 1.0, 1.0), value=None, affine=None, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = affine if affine is not None else np.diag([*spacing, 1.0])
    data = np.random.default_rng(seed).random(shape).astype(np.float32) + 1 if value is None else np.full(shape, value, np.float32)
    nib.save(nib.Nifti1Image(data, a), path)
    return path


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")


# ---------------------------------------------------------------------------------------------------------
# BIDS
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def bids(tmp_path) -> Path:
    """The demo layout: anat T1w/T2w/FLAIR, us/US + US_fov, participants.tsv; entries missing here and there."""
    root = tmp_path / "bids"
    have = {"sub-001": ["T1w", "T2w", "FLAIR", "US"], "sub-002": ["T1w", "FLAIR"], "sub-003": ["T2w", "US"]}
    for s, mods in have.items():
        for m in mods:
            if m == "US":
                vol(root / s / "us" / f"{s}_US.nii.gz")
                vol(root / s / "us" / f"{s}_US_fov.nii.gz")
            else:
                vol(root / s / "anat" / f"{s}_{m}.nii.gz")
                (root / s / "anat" / f"{s}_{m}.json").write_text("{}")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.11.2"}))
    write_tsv(root / "participants.tsv", [["participant_id", "age", "group"], ["sub-001", "34", "patient"],
                                           ["sub-002", "n/a", "control"], ["sub-003", "51.5", "patient"]])
    vol(root / "derivatives" / "x" / "sub-001" / "anat" / "sub-001_desc-brain_mask.nii.gz")
    return root


def test_bids_layout_with_missing_entries(bids):
    c = discover_cohort(bids)
    assert c.layout == "bids"
    assert c.subjects == ["sub-001", "sub-002", "sub-003"]
    assert c.modalities == ["T1", "T2", "FLAIR", "US"]
    assert c.presence().tolist() == [[True, True, True, True], [True, False, True, False], [False, True, False, True]]
    us = c.entry("sub-001", "US")
    assert us.path.name == "sub-001_US.nii.gz" and us.observation_mask.name == "sub-001_US_fov.nii.gz"
    assert c.entry("sub-001", "T1").observation_mask is None
    labels, cats = c.labels()
    assert torch.isnan(labels["age"][1]) and labels["age"][2] == 51.5
    assert cats["group"] == ["control", "patient"] and labels["group"].tolist() == [1, 0, 1]


def test_bids_sessions_and_contrast_enhanced(tmp_path):
    root = tmp_path / "b"
    vol(root / "sub-01" / "ses-pre" / "anat" / "sub-01_ses-pre_T1w.nii.gz")
    vol(root / "sub-01" / "ses-pre" / "anat" / "sub-01_ses-pre_ce-gadolinium_T1w.nii.gz")
    vol(root / "sub-01" / "ses-post" / "anat" / "sub-01_ses-post_T1w.nii.gz")
    vol(root / "sub-02" / "ses-pre" / "anat" / "sub-02_ses-pre_T2w.nii.gz")
    c = discover_cohort(root)
    assert c.subjects == ["sub-01_ses-post", "sub-01_ses-pre", "sub-02_ses-pre"]
    assert c.modalities == ["T1", "T1ce", "T2"]
    one = discover_cohort(root, session="pre")
    assert one.subjects == ["sub-01", "sub-02"] and one.entry("sub-01", "T1ce") is not None


# ---------------------------------------------------------------------------------------------------------
# Folder per subject
# ---------------------------------------------------------------------------------------------------------


def test_folder_layout_brats_suffixes(tmp_path):
    root = tmp_path / "brats"
    for s, mods in {"BraTS_001": ["t1", "t1ce", "t2", "flair", "seg"], "BraTS_002": ["t1", "flair", "us", "us_fov"]}.items():
        for m in mods:
            vol(root / s / f"{s}_{m}.nii.gz")
    vol(root / "BraTS-GLI-00003-000" / "BraTS-GLI-00003-000-t2w.nii.gz")
    vol(root / "BraTS-GLI-00003-000" / "BraTS-GLI-00003-000-t2f.nii.gz")
    vol(root / "BraTS_002" / "BraTS_002_dwi.nii.gz")  # unknown: reported, not guessed
    (root / "BraTS_001" / "notes.txt").write_text("x")
    (root / "empty_folder").mkdir()
    c = discover_cohort(root)
    assert c.layout == "folders"
    assert c.subjects == ["BraTS-GLI-00003-000", "BraTS_001", "BraTS_002"]
    assert c.modalities == ["T1", "T1ce", "T2", "FLAIR", "US"]
    assert c.counts() == {"T1": 2, "T1ce": 1, "T2": 2, "FLAIR": 3, "US": 1}
    assert c.entry("BraTS_002", "US").observation_mask.name == "BraTS_002_us_fov.nii.gz"
    assert [p.name for p in c.unmatched] == ["BraTS_002_dwi.nii.gz"]
    assert any("match no modality" in i.message and i.fix for i in c.issues)


def test_user_patterns_map_files_to_modalities(tmp_path):
    root = tmp_path / "resect"
    for case in ("Case1", "Case2"):
        vol(root / case / "MRI" / f"{case}-T1.nii.gz")
        vol(root / case / "US" / f"{case}-US-before.nii.gz")
        vol(root / case / "US" / f"{case}-US-after.nii.gz")
    vol(root / "Case2" / "US" / "Case2-US-before-sector.nii.gz")
    patterns = {"*-US-before.nii.gz": "US", "*-US-before-sector*": "US:mask", "*-US-after*": ""}
    c = discover_cohort(root, modality_patterns=patterns)
    assert c.modalities == ["T1", "US"] and c.presence().all()
    assert c.entry("Case2", "US").observation_mask is not None and c.entry("Case1", "US").observation_mask is None
    assert not c.unmatched
    only = discover_cohort(root, modality_patterns={"*/MRI/*": "anatomy"}, default_patterns=False)
    assert only.modalities == ["anatomy"] and len(only.unmatched) == 5



def test_a_run_config_carries_the_file_patterns(tmp_path):
    """The patterns the Data page's dialog writes go into the run's data section and reach discovery."""
    root = tmp_path / "site"
    for case in ("c1", "c2", "c3"):
        vol(root / case / f"{case}_MPRAGE.nii.gz", seed=1)
        vol(root / case / f"{case}_SPACE.nii.gz", seed=2)
    with pytest.raises(CohortError, match="No image file of a known modality"):
        load_data(DataConfig(source=str(root)))
    config = config_from_dict(DataConfig, {"source": str(root), "modality_patterns": {"*_mprage*": "T1", "*_SPACE*": "T2"}})
    assert config_to_dict(config)["modality_patterns"] == {"*_mprage*": "T1", "*_SPACE*": "T2"}
    loaded = load_data(config)
    assert list(loaded.dataset.modalities) == ["T1", "T2"] and len(loaded.dataset) == 3

def test_duplicates_are_reported(tmp_path):
    root = tmp_path / "dup"
    vol(root / "s1" / "s1_t1.nii.gz")
    vol(root / "s1" / "s1_T1w.nii.gz")
    c = discover_cohort(root)
    assert any("two files match T1" in i.message for i in c.issues)


# ---------------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------------


def write_manifest(path: Path, rows, header=("subject", "modality", "path", "observation_mask")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_manifest_with_missing_entries_masks_and_covariates(tmp_path):
    vol(tmp_path / "img" / "a_t1.nii.gz")
    vol(tmp_path / "img" / "a_us.nii.gz")
    vol(tmp_path / "img" / "a_fov.nii.gz")
    vol(tmp_path / "img" / "b_t1.nii.gz")
    m = write_manifest(tmp_path / "cohort.csv", [
        ["a", "T1", "img/a_t1.nii.gz", ""],
        ["a", "US", "img/a_us.nii.gz", "img/a_fov.nii.gz"],
        ["b", "T1", str(tmp_path / "img" / "b_t1.nii.gz"), ""],  # absolute paths work too
        ["b", "US", "", ""],  # declared missing
        ["c", "T1", "img/does_not_exist.nii.gz", ""],
        ["c", "FLAIR", "", ""],  # a modality present for no subject
    ])
    write_tsv(tmp_path / "participants.tsv", [["participant_id", "score"], ["a", "1.5"], ["b", "2"]])
    c = read_manifest(m)
    assert c.layout == "manifest" and c.subjects == ["a", "b", "c"]
    assert c.modalities == ["T1", "FLAIR", "US"]
    assert c.presence().tolist() == [[True, False, True], [True, False, False], [False, False, False]]
    assert c.entry("a", "US").observation_mask == tmp_path / "img" / "a_fov.nii.gz"
    errors = [i for i in c.issues if i.level == "error"]
    assert len(errors) == 1 and "does_not_exist.nii.gz" in errors[0].message and errors[0].subject == "c"
    assert any("FLAIR is present for no subject" in i.message for i in c.issues)
    assert any(i.subject == "c" and "no usable image" in i.message for i in c.issues)
    labels, _ = c.labels()
    assert labels["score"][:2].tolist() == [1.5, 2.0] and torch.isnan(labels["score"][2])


def test_manifest_errors(tmp_path):
    bad = write_manifest(tmp_path / "bad.csv", [["a", "T1"]], header=("subject", "modality"))
    with pytest.raises(CohortError, match=r"lacks column\(s\) \['path'\]"):
        read_manifest(bad)
    empty = write_manifest(tmp_path / "empty.csv", [])
    with pytest.raises(CohortError, match="no data rows"):
        read_manifest(empty)
    nothing = write_manifest(tmp_path / "nothing.csv", [["a", "T1", "missing.nii.gz", ""]])
    with pytest.raises(CohortError, match="No image file"):
        read_manifest(nothing)


def test_auto_layout_prefers_a_manifest_in_the_folder(bids):
    write_manifest(bids / "manifest.csv", [["sub-001", "T1", "sub-001/anat/sub-001_T1w.nii.gz", ""]])
    assert discover_cohort(bids).layout == "manifest"
    assert discover_cohort(bids, layout="bids").layout == "bids"


def test_empty_and_missing_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CohortError, match="is empty"):
        discover_cohort(tmp_path / "empty")
    with pytest.raises(CohortError, match="does not exist"):
        discover_cohort(tmp_path / "nope")
    (tmp_path / "noimg" / "s1").mkdir(parents=True)
    (tmp_path / "noimg" / "s1" / "readme.txt").write_text("hi")
    with pytest.raises(CohortError, match="No image file"):
        discover_cohort(tmp_path / "noimg")


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def test_report_presence_counts_and_per_file_geometry(bids):
    c = discover_cohort(bids)
    r = cohort_report(c)
    assert r.presence.tolist() == c.presence().tolist()
    assert r.counts == {"T1": 2, "T2": 2, "FLAIR": 2, "US": 2}
    f = r.file("sub-001", "T1")
    assert f.shape == (8, 9, 10) and f.spacing == (1.0, 1.0, 1.0) and f.orientation == "RAS" and f.format == "nifti"
    assert r.file("sub-001", "US", "observation_mask") is not None
    assert not r.errors
    text = str(r)
    assert "sub-002" in text and "count" in text
    json.dumps(r.to_dict())


def test_report_flags_inconsistencies_naming_file_and_fix(tmp_path):
    root = tmp_path / "c"
    for k in range(4):
        vol(root / f"s{k}" / f"s{k}_t1.nii.gz")
        vol(root / f"s{k}" / f"s{k}_t2.nii.gz")
    # spacing mismatch
    vol(root / "s0" / "s0_t1.nii.gz", spacing=(2.0, 1.0, 1.0))
    # qform/sform disagreement
    img = nib.Nifti1Image(np.ones((8, 9, 10), np.float32), None)
    q = np.eye(4)
    q[0, 3] = 12.0
    img.set_sform(np.eye(4), code=2)
    img.set_qform(q, code=1)
    nib.save(img, root / "s1" / "s1_t2.nii.gz")
    # far away from the subject's T1
    far = np.eye(4)
    far[:3, 3] = 500.0
    vol(root / "s2" / "s2_t2.nii.gz", affine=far)
    # corrupt, 4D
    (root / "s3" / "s3_t2.nii.gz").write_bytes(b"\x1f\x8b broken")
    nib.save(nib.Nifti1Image(np.ones((8, 9, 10, 2), np.float32), np.eye(4)), root / "s3" / "s3_t1.nii.gz")
    before = digest(root)
    r = cohort_report(discover_cohort(root))
    assert digest(root) == before

    def find(word, subject):
        hits = [i for i in r.issues if word in i.message and i.subject == subject]
        assert hits, (word, subject, [str(i) for i in r.issues])
        assert hits[0].path and hits[0].fix
        return hits[0]

    assert find("spacing", "s0").level == "warning"
    assert find("qform", "s1").level == "warning"
    assert find("does not overlap", "s2").level == "warning"
    assert find("not a readable NIfTI", "s3").level == "error"
    assert find("4D", "s3").level == "error"
    assert r.usable[3].tolist() == [False, False] and r.usable[0].tolist() == [True, True]
    assert "!" in str(r)


def test_report_voxel_checks_find_nan_constant_and_truncated(tmp_path):
    root = tmp_path / "c"
    vol(root / "s1" / "s1_t1.nii.gz")
    vol(root / "s1" / "s1_t2.nii.gz", value=np.nan)
    vol(root / "s2" / "s2_t1.nii.gz", value=3.0)
    good = vol(root / "s2" / "s2_t2.nii.gz")
    raw = good.read_bytes()
    good.write_bytes(raw[: len(raw) - 40])
    cheap = cohort_report(discover_cohort(root))
    assert any("may be truncated" in i.message for i in cheap.issues)
    full = cohort_report(discover_cohort(root), check_voxels=True)
    msgs = {(i.subject, i.level): i.message for i in full.issues}
    assert "NaN" in msgs[("s1", "error")]
    assert any("constant" in i.message and i.subject == "s2" for i in full.errors)
    assert any("cannot be read" in i.message and i.subject == "s2" for i in full.errors)


def test_report_on_itk_files_and_mask_grids(tmp_path):
    root = tmp_path / "c"
    lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    write_volume(root / "s1" / "s1_us.nrrd", np.ones((6, 6, 6), np.float32), Geometry.from_affine((6, 6, 6), lps))
    vol(root / "s1" / "s1_us_fov.nii.gz", shape=(3, 3, 3), affine=lps)
    r = cohort_report(discover_cohort(root))
    f = r.file("s1", "US")
    assert f.format == "itk" and f.orientation == "LPS" and f.spacing == (1.0, 1.0, 2.0)
    assert any("mask grid" in i.message and i.level == "info" for i in r.issues)


# ---------------------------------------------------------------------------------------------------------
# DICOM series inside a cohort
# ---------------------------------------------------------------------------------------------------------


def write_series(folder: Path, shape=(8, 8, 5), extension=".dcm") -> None:
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    img = sitk.GetImageFromArray((np.arange(np.prod(shape)).reshape(shape[::-1]) % 500 + 1).astype(np.int16))
    img.SetSpacing((0.8, 0.8, 2.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(shape[2]):
        s = img[:, :, k]
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.7")
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        s.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(s)
        if extension != ".dcm":
            (folder / f"IM{k:04d}.dcm").rename(folder / f"IM{k:04d}{extension}")


def test_dicom_series_folders_are_one_file_each(tmp_path):
    from core.data.loading import load_cohort_dataset
    from core.data.preprocessing.config import PreprocessingConfig

    root = tmp_path / "dicom"
    write_series(root / "p1" / "T1")
    write_series(root / "p1" / "flair", extension="")  # extensionless files, found by their DICM preamble
    write_series(root / "p2" / "T1")
    c = discover_cohort(root)
    assert c.modalities == ["T1", "FLAIR"] and c.presence().tolist() == [[True, True], [True, False]]
    assert c.entry("p1", "FLAIR").path == root / "p1" / "flair"
    r = cohort_report(c)
    assert r.file("p1", "T1").format == "dicom" and r.file("p1", "T1").shape == (8, 8, 5)
    ds, records = load_cohort_dataset(root, PreprocessingConfig())
    assert ds.input_dims["T1"] == (1, 8, 8, 5) and records["p1"].modalities["FLAIR"].format == "dicom"
    write_manifest(tmp_path / "m.csv", [["p1", "T1", str(root / "p1" / "T1"), ""]])
    assert read_manifest(tmp_path / "m.csv").entry("p1", "T1").path.is_dir()
