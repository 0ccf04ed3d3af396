"""Reading and writing volumes: one RAS (X, Y, Z) convention across nibabel and SimpleITK formats."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from core.data.errors import GeometryError, ImageReadError
from core.data.geometry import Geometry
from core.data.readers import read_header, read_volume
from core.data.writers import write_nifti, write_volume

FLIP = np.diag([-1.0, -1.0, 1.0])


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(spacing=(0.9, 1.3, 2.2), angles=(0.15, -0.1, 0.3), origin=(-40.5, 12.25, 7.0), flip_x=False) -> np.ndarray:
    a = np.eye(4)
    r = rotation(*angles)
    if flip_x:
        r = r @ np.diag([-1.0, 1, 1])
    a[:3, :3] = r @ np.diag(spacing)
    a[:3, 3] = origin
    # Round-trip through float32 as a NIfTI sform would, so equality tests are exact.
    return a.astype(np.float32).astype(np.float64)


def ramp(shape=(11, 13, 7)) -> np.ndarray:
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (i + 100 * j + 10000 * k).astype(np.float32)  # every voxel distinct: axis order errors show


def sitk_ras_affine(img: sitk.Image) -> np.ndarray:
    """Independent reference: the formula from the research note, computed from SimpleITK's own fields."""
    d = np.array(img.GetDirection()).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = FLIP @ d @ np.diag(img.GetSpacing())
    a[:3, 3] = FLIP @ np.array(img.GetOrigin())
    return a


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------


def test_geometry_validates_and_serialises():
    a = oblique_affine()
    g = Geometry.from_affine((4, 5, 6), a)
    assert np.allclose(g.spacing, (0.9, 1.3, 2.2), atol=1e-6)
    assert g.is_oblique and not g.has_shear
    assert Geometry.from_dict(g.to_dict()).allclose(g, atol=0)
    with pytest.raises(GeometryError, match="spacing"):
        Geometry((4, 5, 6), (1.0, 1.0, 1.0), a)
    with pytest.raises(GeometryError, match="3D shape"):
        Geometry.from_affine((4, 5), a)
    with pytest.raises(GeometryError, match="singular"):
        Geometry.from_affine((4, 5, 6), np.diag([1.0, 0.0, 1.0, 1.0]))


def test_canonical_relabels_axes_without_moving_voxels():
    lps = np.diag([-2.0, -3.0, 4.0, 1.0])
    lps[:3, 3] = [50, 60, -10]
    g = Geometry.from_affine((5, 6, 7), lps)
    assert g.orientation == "LPS"
    c = g.canonical()
    assert c.orientation == "RAS" and c.shape == (5, 6, 7)
    # The voxel centres cover the same world points.
    assert np.allclose(np.sort(g.corners(), axis=0), np.sort(c.corners(), axis=0))
    # A permuted grid: axes (S, R, A) -> canonical shape is permuted.
    perm = np.zeros((4, 4))
    perm[2, 0], perm[0, 1], perm[1, 2], perm[3, 3] = 1.5, 1.0, 2.0, 1.0
    gp = Geometry.from_affine((3, 4, 5), perm)
    assert gp.canonical().shape == (4, 5, 3) and gp.canonical().orientation == "RAS"


def test_with_spacing_and_crop_keep_the_centre():
    g = Geometry.from_affine((20, 30, 10), oblique_affine(spacing=(1.0, 1.0, 2.0)))
    centre = g.affine @ np.r_[(np.array(g.shape) - 1) / 2, 1]
    h = g.with_spacing((2.0, 2.0, 2.0))
    assert h.shape == (10, 15, 10)
    assert np.allclose(h.affine @ np.r_[(np.array(h.shape) - 1) / 2, 1], centre)
    c = g.crop_or_pad((16, 34, 10))
    assert c.shape == (16, 34, 10) and np.allclose(c.direction, g.direction)
    # Integer voxel offset: voxel (0,0,0) of the crop is voxel (2,-2,0) of the source.
    assert np.allclose(c.affine[:3, 3], (g.affine @ [2, -2, 0, 1])[:3])


# ---------------------------------------------------------------------------------------------------------
# Round trips, checked against both libraries
# ---------------------------------------------------------------------------------------------------------


def test_nifti_oblique_anisotropic_reads_as_nibabel_and_simpleitk_see_it(tmp_path):
    a = oblique_affine()
    data = ramp()
    p = tmp_path / "obl.nii.gz"
    img = nib.Nifti1Image(data, a)
    img.set_qform(a, code=1)
    img.set_sform(a, code=1)
    nib.save(img, p)
    vol = read_volume(p)
    assert vol.array.dtype == np.float32 and vol.array.shape == data.shape
    assert np.array_equal(vol.array, data)
    assert np.allclose(vol.geometry.affine, a, atol=1e-6)
    # SimpleITK's view of the same file, converted independently, agrees (voxel order and LPS).
    s = sitk.ReadImage(str(p))
    assert np.allclose(sitk_ras_affine(s), vol.geometry.affine, atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(s).transpose(2, 1, 0), vol.array)
    # A voxel maps to the same world point in both (LPS vs RAS).
    idx = (3, 5, 2)
    lps = np.array(s.TransformIndexToPhysicalPoint(idx))
    ras = (vol.geometry.affine @ [*idx, 1])[:3]
    assert np.allclose(FLIP @ lps, ras, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_nifti_to_itk_format_and_back_keeps_geometry(tmp_path, suffix):
    a = oblique_affine(flip_x=True)
    data = ramp()
    src = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(data, a), src)
    vol = read_volume(src)
    out = write_volume(tmp_path / f"conv{suffix}", vol.array, vol.geometry)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    back = read_volume(out)
    assert back.meta["format"] == "itk"
    assert np.array_equal(back.array, data)
    assert np.allclose(back.geometry.affine, a, atol=1e-5)
    # SimpleITK itself stores LPS: its direction/origin are the RAS ones flipped.
    s = sitk.ReadImage(str(out))
    assert np.allclose(sitk_ras_affine(s), a, atol=1e-5)
    assert s.GetSize() == data.shape
    # And back to NIfTI: nibabel sees the original affine.
    nii = write_volume(tmp_path / "again.nii.gz", back.array, back.geometry)
    assert np.allclose(nib.load(nii).affine, a, atol=1e-5)
    assert np.array_equal(np.asarray(nib.load(nii).dataobj), data)


def test_lps_file_written_by_simpleitk_is_converted_to_ras(tmp_path):
    data = ramp((6, 7, 8))
    img = sitk.GetImageFromArray(data.transpose(2, 1, 0))  # sitk wants (z, y, x)
    img.SetSpacing((0.8, 1.1, 3.0))
    img.SetOrigin((12.0, -7.5, 30.0))
    d = rotation(0.0, 0.2, -0.35)
    img.SetDirection(tuple(d.ravel()))
    p = tmp_path / "lps.mha"
    sitk.WriteImage(img, str(p))
    vol = read_volume(p)
    assert np.array_equal(vol.array, data)
    for idx in [(0, 0, 0), (5, 6, 7), (2, 3, 4)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(idx))
        assert np.allclose((vol.geometry.affine @ [*idx, 1])[:3], FLIP @ lps, atol=1e-6)
    assert np.allclose(vol.geometry.spacing, (0.8, 1.1, 3.0))


def test_write_nifti_sets_both_forms_and_simpleitk_agrees(tmp_path):
    a = oblique_affine()
    g = Geometry.from_affine((9, 8, 7), a)
    p = write_nifti(tmp_path / "w.nii.gz", np.ones(g.shape), g, qform_code=2, sform_code=2, description="hello")
    img = nib.load(p)
    assert img.header.get_qform(coded=True)[1] == 2 and img.header.get_sform(coded=True)[1] == 2
    assert np.allclose(img.header.get_qform(), a, atol=1e-5) and np.allclose(img.header.get_sform(), a, atol=1e-6)
    assert img.get_data_dtype() == np.float32
    assert img.header["descrip"].tobytes().startswith(b"hello")
    assert np.allclose(sitk_ras_affine(sitk.ReadImage(str(p))), a, atol=1e-4)


def test_write_nifti_with_shear_drops_the_qform(tmp_path):
    a = np.array([[2.0, 0.5, 0, 1], [0, 3, 0, 2], [0, 0, 4, 3], [0, 0, 0, 1]])
    g = Geometry.from_affine((4, 4, 4), a)
    assert g.has_shear
    p = write_nifti(tmp_path / "shear.nii", np.zeros(g.shape), g)
    img = nib.load(p)
    assert img.header.get_qform(coded=True)[1] == 0 and np.allclose(img.affine, a)
    with pytest.raises(GeometryError, match="shear"):
        write_volume(tmp_path / "shear.nrrd", np.zeros(g.shape), g)


def test_scaling_is_applied_and_recorded(tmp_path):
    raw = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    img.set_data_dtype(np.int16)
    p = tmp_path / "scaled.nii"
    nib.save(img, p)
    vol = read_volume(p)
    assert np.allclose(vol.array, raw * 0.5 + 10.0)
    assert vol.meta["scl_slope"] == 0.5 and vol.meta["scl_inter"] == 10.0
    assert vol.meta["source_dtype"] == "int16"


# ---------------------------------------------------------------------------------------------------------
# qform / sform
# ---------------------------------------------------------------------------------------------------------


def _qs_file(path: Path, shift_mm: float, qcode: int = 1, scode: int = 2) -> tuple[np.ndarray, np.ndarray]:
    s = oblique_affine(angles=(0, 0, 0))
    q = s.copy()
    q[0, 3] += shift_mm
    img = nib.Nifti1Image(ramp((5, 6, 7)), None)
    img.set_sform(s, code=scode)
    img.set_qform(q, code=qcode)
    nib.save(img, path)
    return q, s


def test_qform_sform_disagreement_is_detected_and_sform_used(tmp_path):
    p = tmp_path / "qs.nii.gz"
    q, s = _qs_file(p, 10.0)
    info = read_header(p)
    msgs = [i for i in info.issues if "qform" in i.message]
    assert msgs and msgs[0].level == "warning" and "10.00 mm" in msgs[0].message and msgs[0].fix
    vol = read_volume(p)
    assert np.allclose(vol.geometry.affine, s) and vol.meta["xform_used"] == "sform"
    assert any("qform" in i.message for i in vol.issues)
    # The trap the warning is about: SimpleITK places this file by its qform.
    assert np.allclose(sitk_ras_affine(sitk.ReadImage(str(p)))[:3, 3], q[:3, 3], atol=1e-3)
    with pytest.raises(ImageReadError, match="qform"):
        read_volume(p, strict_xform=True)


def test_agreeing_forms_and_single_forms_raise_nothing(tmp_path):
    p = tmp_path / "same.nii.gz"
    _qs_file(p, 0.0)
    assert not read_header(p).issues
    p2 = tmp_path / "qonly.nii.gz"
    q, _ = _qs_file(p2, 5.0, qcode=1, scode=0)
    vol = read_volume(p2)
    assert vol.meta["xform_used"] == "qform" and np.allclose(vol.geometry.affine, q, atol=1e-4)
    assert not vol.issues


# ---------------------------------------------------------------------------------------------------------
# DICOM series
# ---------------------------------------------------------------------------------------------------------


def write_dicom_series(folder: Path, data: np.ndarray, spacing, origin_lps, direction_lps) -> sitk.Image:
    folder.mkdir(parents=True)
    img = sitk.GetImageFromArray(data.transpose(2, 1, 0).astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(origin_lps)
    img.SetDirection(tuple(np.asarray(direction_lps).ravel()))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        s.SetMetaData("0020|000e", uid)
        s.SetMetaData("0020|000d", uid + ".1")
        s.SetMetaData("0008|0060", "MR")
        s.SetMetaData("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))))
        s.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0018|0050", str(spacing[2]))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)
    return img


def test_dicom_series_folder_reads_as_ras_volume(tmp_path):
    data = ramp((8, 9, 5)) % 3000
    d = rotation(0.0, 0.0, 0.2)
    ref = write_dicom_series(tmp_path / "series", data, (0.7, 0.7, 2.5), (10.0, -20.0, 5.0), d)
    vol = read_volume(tmp_path / "series")
    assert vol.meta["format"] == "dicom" and vol.meta["n_files"] == 5
    assert np.array_equal(vol.array, data)
    assert np.allclose(vol.geometry.affine, sitk_ras_affine(ref), atol=1e-3)
    # One file of the series stands for the series.
    assert np.array_equal(read_volume(tmp_path / "series" / "slice002.dcm").array, data)
    assert read_header(tmp_path / "series").geometry.shape == (8, 9, 5)


# ---------------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the file and the fix; files never modified
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    good = nib.Nifti1Image(ramp((10, 10, 10)), np.eye(4))
    nib.save(good, tmp_path / "good.nii.gz")
    nib.save(good, tmp_path / "good.nii")
    raw = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    raw = (tmp_path / "good.nii").read_bytes()
    (tmp_path / "truncated.nii").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"this is not a nifti file at all" * 20))
    (tmp_path / "notes.nii").write_text("subject,age\n1,2\n")
    (tmp_path / "garbage.nrrd").write_bytes(b"\x00\x01garbage" * 50)
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), tmp_path / "four_d.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 1), np.float32), np.eye(4)), tmp_path / "four_d_single.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 6), np.float32), np.eye(4)), tmp_path / "two_d.nii.gz")
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), tmp_path / "all_nan.nii.gz")
    part = np.ones((4, 4, 4), np.float32)
    part[0] = np.nan
    nib.save(nib.Nifti1Image(part, np.eye(4)), tmp_path / "some_nan.nii.gz")
    rgb = sitk.Image([5, 5, 5], sitk.sitkVectorUInt8, 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    return {p.stem.split(".")[0] if p.suffix != ".nii" else p.stem + "_nii": p for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("truncated", "voxel data cannot be read"),
        ("truncated_nii", "truncated"),
        ("text", "not a readable NIfTI"),
        ("notes_nii", "not a readable NIfTI"),
        ("garbage", "SimpleITK could not read"),
        ("image", "unsupported file type"),
        ("four_d", "4D with 3 volumes"),
        ("two_d", "2D"),
        ("rgb", "components per voxel"),
    ],
)
def test_bad_files_raise_clear_errors(bad_files, name, pattern):
    path = bad_files[name]
    with pytest.raises(ImageReadError) as err:
        read_volume(path)
    msg = str(err.value)
    assert path.name in msg and pattern in msg and "Fix:" in msg


def test_bad_files_leave_disk_untouched(bad_files, tmp_path):
    before = digest(tmp_path)
    for p in bad_files.values():
        for fn in (read_header, read_volume):
            try:
                fn(p)
            except ImageReadError:
                pass
    assert digest(tmp_path) == before


def test_header_reading_flags_problems_without_loading_voxels(bad_files):
    trunc = read_header(bad_files["truncated"])  # the header itself is intact
    assert trunc.geometry.shape == (10, 10, 10)
    assert any("truncated" in i.message for i in trunc.issues)
    assert any(i.level == "error" and "truncated" in i.message for i in read_header(bad_files["truncated_nii"]).issues)
    four = read_header(bad_files["four_d"])
    assert four.n_volumes == 3 and any(i.level == "error" for i in four.issues)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_header(bad_files["good"].with_name("missing.nii.gz"))


def test_four_d_volume_index_and_single_volume(bad_files):
    assert read_volume(bad_files["four_d"], volume_index=2).array.shape == (4, 4, 4)
    with pytest.raises(ImageReadError, match="out of range"):
        read_volume(bad_files["four_d"], volume_index=3)
    assert read_volume(bad_files["four_d_single"]).array.shape == (4, 4, 4)


def test_nan_volumes_are_reported(bad_files):
    all_nan = read_volume(bad_files["all_nan"])
    assert all_nan.meta["n_nonfinite"] == 64 and all_nan.issues[0].level == "error"
    some = read_volume(bad_files["some_nan"])
    assert some.meta["n_nonfinite"] == 16 and some.issues[0].level == "warning"
    assert "unobserved" in some.issues[0].fix
