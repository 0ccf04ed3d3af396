"""Exported synthesized volumes overlay their source exactly and say that they are synthetic."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import core
from core.data.geometry import Geometry
from core.data.loading import load_cohort_dataset
from core.data.preprocessing.config import PreprocessingConfig
from core.data.preprocessing.source_space import to_source_space
from core.data.writers import write_volume
from core.progress import Cancelled, CancelToken, ProgressReporter
from core.workflows.export import ExportError, Provenance, export_cohort, sidecar_path, write_synthesized
from core.workflows.impute import FieldOfView

FLIP = np.diag([-1.0, -1.0, 1.0])


def oblique(spacing, angle=0.25, origin=(-12.0, 7.5, 3.0)) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    a = np.eye(4)
    a[:3, :3] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.diag(spacing)
    a[:3, 3] = origin
    return a.astype(np.float32).astype(np.float64)


def blob(shape, rng, scale=100.0) -> np.ndarray:
    x = np.zeros(shape, np.float32)
    sl = tuple(slice(n // 5, n - n // 5) for n in shape)
    x[sl] = rng.random(tuple(s.stop - s.start for s in sl)) * scale + scale / 2
    return x


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cohort(tmp_path):
    """Three subjects: an oblique anisotropic T1 NIfTI (q/s codes 0/2 for s1), an LPS T2 NRRD written by
    SimpleITK, a US volume; s1 lacks T2, s2 lacks US."""
    rng = np.random.default_rng(1)
    root = tmp_path / "cohort"
    root.mkdir()
    rows = []
    for k in range(3):
        s = f"s{k}"
        a = oblique((1.2, 0.9, 2.0), angle=0.1 * k)
        t1 = nib.Nifti1Image(blob((18, 20, 12), rng).astype(np.int16), None)
        t1.set_sform(a, code=2)
        t1.set_qform(a, code=0 if k == 1 else 1)
        nib.save(t1, root / f"{s}_T1.nii.gz")
        rows.append((s, "T1", f"{s}_T1.nii.gz"))
        if k != 1:
            b = np.diag([-1.5, -1.5, 2.5, 1.0])
            b[:3, 3] = [15.0, 20.0, -8.0]
            write_volume(root / f"{s}_T2.nrrd", blob((14, 16, 10), rng, 10.0), Geometry.from_affine((14, 16, 10), b))
            rows.append((s, "T2", f"{s}_T2.nrrd"))
        if k != 2:
            nib.save(nib.Nifti1Image(blob((18, 20, 12), rng, 200.0), a), root / f"{s}_US.nii.gz")
            rows.append((s, "US", f"{s}_US.nii.gz"))
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["subject", "modality", "path"])
        w.writerows(rows)
    return root


@pytest.fixture
def loaded(cohort):
    return load_cohort_dataset(cohort / "manifest.csv", PreprocessingConfig(target_shape=(16, 20, 14)))


PROV = {"model": "mvae", "run": "run-7", "n_samples": 8}


def test_export_overlays_the_oblique_nifti_source_exactly(loaded, tmp_path):
    ds, records = loaded
    rec = records["s0"]
    i = ds.ids.index("s0")
    out = write_synthesized(ds[i].data["T2"], rec, "T2", tmp_path / "out" / "s0_T2.nii.gz", provenance=PROV, records=records)
    src = nib.load(rec.modalities["T1"].path)
    img = nib.load(out.image)
    assert img.shape == src.shape
    assert np.array_equal(img.affine, src.affine)
    assert np.allclose(img.header.get_qform(), src.header.get_qform(), atol=1e-5)
    assert np.array_equal(img.header.get_sform(), src.header.get_sform())
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2  # the source's codes
    assert img.get_data_dtype() == np.float32
    assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0
    assert img.header["descrip"].tobytes().startswith(b"SYNTHETIC T2")
    # ITK-based viewers place it exactly where they place the source.
    s_src, s_out = sitk.ReadImage(rec.modalities["T1"].path), sitk.ReadImage(str(out.image))
    assert np.allclose(s_src.GetOrigin(), s_out.GetOrigin(), atol=1e-4)
    assert np.allclose(s_src.GetDirection(), s_out.GetDirection(), atol=1e-5)
    assert s_src.GetSize() == s_out.GetSize()
    assert not [p for p in (tmp_path / "out").iterdir() if "partial" in p.name]


def test_export_source_with_only_an_sform_gets_both_forms(loaded, tmp_path):
    ds, records = loaded
    out = write_synthesized(np.zeros(records["s1"].grid.shape), records["s1"], "T2", tmp_path / "s1.nii.gz", provenance=PROV)
    img = nib.load(out.image)
    src = nib.load(records["s1"].modalities["T1"].path)
    assert int(src.header["qform_code"]) == 0
    assert int(img.header["qform_code"]) == 2 and int(img.header["sform_code"]) == 2
    assert np.allclose(img.header.get_qform(), src.affine, atol=1e-5)


def test_export_onto_an_lps_nrrd_source_grid(loaded, tmp_path):
    ds, records = loaded
    rec = records["s0"]
    out = write_synthesized(ds[ds.ids.index("s0")].data["T1"], rec, "T1", tmp_path / "on_t2.nii.gz",
                            provenance=PROV, reference="T2")
    src = sitk.ReadImage(rec.modalities["T2"].path)
    img = nib.load(out.image)
    assert img.shape == src.GetSize()
    expected = np.eye(4)
    expected[:3, :3] = FLIP @ np.array(src.GetDirection()).reshape(3, 3) @ np.diag(src.GetSpacing())
    expected[:3, 3] = FLIP @ np.array(src.GetOrigin())
    assert np.allclose(img.affine, expected, atol=1e-5)
    assert json.loads(sidecar_path(out.image).read_text(encoding="utf-8"))["reference"]["modality"] == "T2"


def test_reference_modality_round_trips_to_source_intensities(loaded, tmp_path):
    ds, records = loaded
    rec = records["s2"]
    out = write_synthesized(ds[ds.ids.index("s2")].data["T1"], rec, "T1", tmp_path / "t1.nii.gz", provenance=PROV,
                            records=records)
    src = nib.load(rec.modalities["T1"].path).get_fdata()
    got = nib.load(out.image).get_fdata()
    p = rec.modalities["T1"].normalization
    expected = np.clip(src, p.clip_low, p.clip_high) * (src != 0)
    # The model grid (16, 20, 14) crops x from 18 and pads y, z; inside the crop the values come back.
    inside = np.zeros(src.shape, bool)
    inside[1:17] = True
    assert np.allclose(got[inside], expected[inside], atol=1e-3)
    assert np.all(got[~inside] == 0)
    side = json.loads(sidecar_path(out.image).read_text(encoding="utf-8"))
    assert side["intensity"]["units"] == "source" and side["intensity"]["parameters_from"] == "subject"
    assert side["outside_model_grid_voxels"] == int((~inside).sum())


def test_sidecar_records_provenance(loaded, tmp_path):
    ds, records = loaded
    prov = Provenance(model="mmvae+", run="run-3", conditioning_modalities=["T1", "US"], n_samples=16, checkpoint="abc123")
    std = np.full(records["s1"].grid.shape, 0.5, np.float32)
    out = write_synthesized(np.zeros(records["s1"].grid.shape), records["s1"], "T2", tmp_path / "x.nii.gz",
                            provenance=prov, uncertainty=std, records=records)
    side = json.loads(out.sidecar.read_text(encoding="utf-8"))
    assert side["synthetic"] is True
    assert side["model"] == "mmvae+" and side["run"] == "run-3" and side["checkpoint"] == "abc123"
    assert side["conditioning_modalities"] == ["T1", "US"] and side["n_samples"] == 16
    assert side["software"]["version"] == core.__version__
    assert side["date"].endswith("+00:00")
    # s1 lacks T2: its intensities come from the cohort's median parameters.
    assert side["intensity"]["parameters_from"] == "cohort median"
    assert side["uncertainty"] == "x_std.nii.gz" and out.uncertainty == tmp_path / "x_std.nii.gz"
    u = nib.load(out.uncertainty)
    assert np.array_equal(u.affine, nib.load(out.image).affine)
    scale = records.intensity_reference("T2").scale
    assert np.isclose(np.asarray(u.dataobj).max(), 0.5 * scale, rtol=1e-4)


def test_normalized_units_and_missing_parameters(loaded, tmp_path):
    ds, records = loaded
    z = np.ones(records["s1"].grid.shape, np.float32)
    out = write_synthesized(z, records["s1"], "T2", tmp_path / "n.nii.gz", provenance=PROV, intensity="normalized")
    assert out.intensity_units == "normalized"
    assert nib.load(out.image).header["intent_name"].tobytes().startswith(b"synth_norm")
    with pytest.raises(ExportError, match="No normalisation parameters"):
        write_synthesized(z, records["s1"], "T2", tmp_path / "m.nii.gz", provenance=PROV, intensity="source")
    assert write_synthesized(z, records["s1"], "T2", tmp_path / "a.nii.gz", provenance=PROV).intensity_units == "normalized"


def test_export_refuses_bad_requests_and_writes_nothing(loaded, tmp_path):
    ds, records = loaded
    rec = records["s0"]
    before = digest(tmp_path)
    with pytest.raises(ExportError, match="model grid"):
        write_synthesized(np.zeros((4, 4, 4)), rec, "T2", tmp_path / "bad.nii.gz", provenance=PROV)
    with pytest.raises(ExportError, match="source files"):
        write_synthesized(np.zeros(rec.grid.shape), rec, "T1", rec.modalities["T1"].path, provenance=PROV)
    with pytest.raises(ExportError, match="no FLAIR source"):
        write_synthesized(np.zeros(rec.grid.shape), rec, "T2", tmp_path / "b.nii.gz", provenance=PROV, reference="FLAIR")
    with pytest.raises(ExportError, match="model"):
        write_synthesized(np.zeros(rec.grid.shape), rec, "T2", tmp_path / "c.nii.gz", provenance={"run": "x"})
    assert digest(tmp_path) == before
    write_synthesized(np.zeros(rec.grid.shape), rec, "T2", tmp_path / "d.nii.gz", provenance=PROV)
    with pytest.raises(ExportError, match="exists"):
        write_synthesized(np.zeros(rec.grid.shape), rec, "T2", tmp_path / "d.nii.gz", provenance=PROV)


def test_nan_in_model_output_is_written_as_zero_and_recorded(loaded, tmp_path):
    ds, records = loaded
    x = np.zeros(records["s0"].grid.shape, np.float32)
    x[0, 0, 0] = np.nan
    out = write_synthesized(x, records["s0"], "T2", tmp_path / "nan.nii.gz", provenance=PROV, intensity="normalized")
    assert np.all(np.isfinite(nib.load(out.image).get_fdata()))
    assert json.loads(out.sidecar.read_text(encoding="utf-8"))["nonfinite_replaced"] == 1


def test_batch_export_with_progress(loaded, tmp_path):
    ds, records = loaded
    volumes = {s: {"T2": ds[i].data["T2"]} for i, s in enumerate(ds.ids)}
    std = {s: {"T2": np.ones(records[s].grid.shape)} for s in ds.ids}
    reporter = ProgressReporter(bar=False)
    results = export_cohort(volumes, records, tmp_path / "batch", provenance=PROV, uncertainty=std, progress=reporter)
    assert len(results) == 3 and [e.done for e in reporter.events] == [1, 2, 3]
    names = sorted(p.name for p in (tmp_path / "batch").iterdir())
    assert names == sorted(f"{s}_T2_synth{x}" for s in ds.ids for x in (".nii.gz", "_std.nii.gz", ".json"))
    for r in results:
        assert np.array_equal(nib.load(r.image).affine, nib.load(records[r.subject].modalities["T1"].path).affine)


def test_cancelled_batch_export_leaves_no_file(loaded, tmp_path):
    ds, records = loaded
    volumes = {s: {"T2": ds[i].data["T2"], "US": ds[i].data["US"]} for i, s in enumerate(ds.ids)}
    token = CancelToken()

    def progress(done, total, message):
        if done == 3:
            token.cancel()

    out = tmp_path / "batch"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(Cancelled):
        export_cohort(volumes, records, out, provenance=PROV, progress=progress, cancel=token)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ExportError, match="No preprocessing record"):
        export_cohort({"nobody": {"T2": np.zeros(3)}}, records, out, provenance=PROV)


def _nibabel_test_file(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("nibabel")
    path = Path(spec.origin).parent / "tests" / "data" / name
    if not path.exists():
        pytest.skip(f"nibabel's bundled {name} is not installed")
    return path


def test_export_on_real_oblique_and_las_files_from_nibabel(tmp_path):
    """Real headers: anatomical.nii (LAS, big-endian int16, codes 2/2) and the first volume of the oblique
    example4d.nii.gz (about 9 degrees, codes 1/1)."""
    anat = _nibabel_test_file("anatomical.nii")
    epi4d = nib.load(_nibabel_test_file("example4d.nii.gz"))
    epi = epi4d.slicer[..., 0]
    nib.save(epi, tmp_path / "epi_t1.nii.gz")
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerows([["subject", "modality", "path"], ["anat", "T1", str(anat)], ["epi", "T1", "epi_t1.nii.gz"]])
    ds, records = load_cohort_dataset(tmp_path / "manifest.csv", PreprocessingConfig(target_shape=(48, 48, 32)))
    for s in ("anat", "epi"):
        rec = records[s]
        out = write_synthesized(ds[ds.ids.index(s)].data["T1"], rec, "T2", tmp_path / f"{s}_T2.nii.gz",
                                provenance=PROV, records=records)
        src, img = nib.load(rec.modalities["T1"].path), nib.load(out.image)
        assert img.shape == src.shape[:3]
        assert np.allclose(img.affine, src.affine, atol=1e-5)
        assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(src.affine)
        for form in ("qform_code", "sform_code"):
            assert int(img.header[form]) == int(src.header[form])
    assert nib.aff2axcodes(nib.load(anat).affine) == ("L", "A", "S")
    assert records["epi"].modalities["T1"].source_geometry.is_oblique


def test_a_field_of_view_and_a_verdict_go_into_the_file_and_its_sidecar(loaded, tmp_path):
    ds, records = loaded
    rec = records["s2"]  # s2 lacks US: its synthesized US is written inside the given field of view only
    mask = np.zeros(rec.grid.shape, bool)
    mask[4:12, 5:15, 3:11] = True
    volume = np.full(rec.grid.shape, 2.0, np.float32)
    verdict = {"passed": False, "short": "NOT better than mean image 3/7", "text": "not better than the average brain"}
    out = write_synthesized(volume, rec, "US", tmp_path / "s2_US.nii.gz", provenance=PROV, records=records,
                            uncertainty=np.ones_like(volume), field_of_view=FieldOfView(mask[None], "cohort majority of 2 subjects"),
                            verdict=verdict)
    written, std = nib.load(out.image).get_fdata(), nib.load(out.uncertainty).get_fdata()
    inside = to_source_space(mask.astype(np.float32), rec, order=0)[0] > 0.5
    assert inside.any() and (~inside).any()
    for image in (written, std):
        assert np.all(image[~inside] == 0)
        assert np.all(image[inside] != 0)
    sidecar = json.loads(out.sidecar.read_text(encoding="utf-8"))
    assert sidecar["field_of_view"] == "cohort majority of 2 subjects"
    assert sidecar["verdict"] == verdict
    descrip = nib.load(out.image).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert descrip.startswith("SYNTHETIC US mmvae; NOT better than mean image 3/7") and len(descrip) <= 80
    # Without them: the whole grid, no verdict.
    plain = write_synthesized(volume, rec, "US", tmp_path / "plain.nii.gz", provenance=PROV, records=records)
    sidecar = json.loads(plain.sidecar.read_text(encoding="utf-8"))
    assert sidecar["field_of_view"] == "whole grid (no observation mask)" and sidecar["verdict"] is None
    with pytest.raises(ExportError, match="field of view"):
        write_synthesized(volume, rec, "US", tmp_path / "bad.nii.gz", provenance=PROV,
                          field_of_view=FieldOfView(np.ones((2, 2, 2), bool), "subject"))
