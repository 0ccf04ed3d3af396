"""Reading medical volumes: with :mod:`core.data.writers`, the only code in ``core`` that touches nibabel or
SimpleITK files.

One in-memory convention, converted once here at the boundary:

* an array is ``(X, Y, Z)`` float32, axis ``i`` of the array is voxel index ``i`` of the file;
* a :class:`Geometry` is ``(shape, spacing, affine)`` where ``affine`` maps voxel indices ``(i, j, k, 1)``
  to world millimetres in **RAS+** (nibabel's convention).

ITK formats (NRRD, MetaImage, DICOM through SimpleITK) store origin and direction in LPS and give arrays in
``(z, y, x)`` order; :func:`read_volume` converts both, so nothing past the readers ever sees LPS or a
transposed array. NIfTI is read with nibabel, which applies ``scl_slope``/``scl_inter`` (the header's own
fields read NaN after loading; the real values are kept in ``Volume.meta``).

The qform/sform trap: when a NIfTI file has both a qform and an sform and they disagree, nibabel uses the
sform and SimpleITK (so ITK-SNAP and 3D Slicer) uses the qform for sform codes 2-4. The files then overlay
differently in different tools. :func:`read_header` and :func:`read_volume` detect it, report how far apart
the two placements are, and use the sform (nibabel's choice) unless ``strict_xform=True``.

Nothing here modifies an input file.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.data.errors import GeometryError, ImageReadError, Issue, error_summary
from core.data.formats import image_format
from core.data.geometry import Geometry, ras_affine_from_itk

__all__ = ["Volume", "HeaderInfo", "MAX_VOXELS", "XFORM_TOLERANCE_MM", "read_header", "read_volume"]

# Displacement (mm) between qform and sform placements above which they are reported as disagreeing.
XFORM_TOLERANCE_MM = 1e-3

# The largest volume read into memory (2**30 voxels = 4 GiB as float32). A header declaring more is refused
# before anything is allocated.
MAX_VOXELS = 1 << 30
# Deflate compresses at most about 1032:1, so a .nii.gz whose header needs more bytes than this many times
# its size on disk is certainly truncated (or its header lies).
_MAX_GZIP_RATIO = 1100


@dataclass(eq=False)
class Volume:
    """A 3D volume: ``array`` (X, Y, Z) float32 in ``geometry``, read from ``path``.

    ``meta`` holds what the reader learned: ``format``, ``source_dtype``, NIfTI ``qform_code`` /
    ``sform_code`` / ``xform_used`` / ``scl_slope`` / ``scl_inter`` / ``xyzt_units``, ``n_nonfinite``, and
    ``issues`` (a list of :class:`Issue`).
    """

    array: np.ndarray
    geometry: Geometry
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.shape != self.geometry.shape:
            raise GeometryError(f"Array shape {self.array.shape} does not match geometry shape {self.geometry.shape}.")

    @property
    def issues(self) -> list[Issue]:
        return list(self.meta.get("issues", []))

    def __repr__(self) -> str:
        return f"Volume({self.path.name if self.path else '<memory>'}, {self.geometry!r})"


@dataclass
class HeaderInfo:
    """What a header says, read without loading the voxels (for the cohort report)."""

    path: Path
    format: str
    geometry: Geometry
    dtype: str
    n_volumes: int = 1
    n_components: int = 1
    ndim: int = 3
    qform_code: int | None = None
    sform_code: int | None = None
    xyzt_units: int | None = None
    issues: list[Issue] = field(default_factory=list)

    @property
    def orientation(self) -> str:
        return self.geometry.orientation


def _read_error(path: Path, what: str, fix: str) -> ImageReadError:
    return ImageReadError(f"Cannot read {path}: {what}. Fix: {fix}", path=path, problem=what, fix=fix)


_CORRUPT_FIX = "re-export or re-copy the file (it may be truncated or not an image), or remove it from the cohort"


# --------------------------------------------------------------------------------------------------------
# SimpleITK -> Volume (the only (z, y, x) reading code in core)
# --------------------------------------------------------------------------------------------------------


def _sitk_to_volume(image: Any, path: Path, fmt: str, volume_index: int | None) -> Volume:
    import SimpleITK as sitk

    ndim = image.GetDimension()
    n_comp = image.GetNumberOfComponentsPerPixel()
    if n_comp != 1:
        raise _read_error(path, f"it has {n_comp} components per voxel (RGB or vector image), not one intensity",
                          "convert it to a single-channel (grey-scale) volume")
    if ndim == 2:
        raise _read_error(path, f"it is a 2D image of size {image.GetSize()}, a 3D volume was expected",
                          "supply the 3D volume (for DICOM, the folder holding the whole series)")
    n_volumes = 1
    if ndim == 4:
        n_volumes = image.GetSize()[3]
        image = _select_volume_sitk(image, path, volume_index)
    elif ndim != 3:
        raise _read_error(path, f"it has {ndim} dimensions", "supply a 3D volume")
    source_dtype = image.GetPixelIDTypeAsString()
    affine = ras_affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection(), 3)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    geometry = Geometry.from_affine(array.shape, affine)
    meta: dict[str, Any] = {"format": fmt, "source_dtype": source_dtype, "n_volumes": n_volumes, "issues": []}
    return _finish_volume(array, geometry, path, meta)


def _select_volume_sitk(image: Any, path: Path, volume_index: int | None) -> Any:
    import SimpleITK as sitk

    size = list(image.GetSize())
    n = size[3]
    if n == 1:
        volume_index = 0
    if volume_index is None:
        raise _read_error(path, f"it is 4D with {n} volumes, a 3D volume was expected",
                          "extract the volume you want (e.g. `fslroi in out 0 1`) or pass volume_index")
    if not 0 <= volume_index < n:
        raise _read_error(path, f"volume_index {volume_index} is out of range for {n} volumes", f"use 0..{n - 1}")
    return sitk.Extract(image, size[:3] + [0], [0, 0, 0, volume_index])


def _finish_volume(array: np.ndarray, geometry: Geometry, path: Path, meta: dict[str, Any]) -> Volume:
    finite = np.isfinite(array)
    n_bad = int(array.size - np.count_nonzero(finite))
    meta["n_nonfinite"] = n_bad
    if n_bad:
        level = "error" if n_bad == array.size else "warning"
        meta["issues"].append(
            Issue(level, f"{n_bad} of {array.size} voxels are NaN or infinite", path=str(path),
                  fix="they are treated as unobserved; re-export the volume with a finite background to silence this"
                  if level == "warning" else "the volume holds no finite value; re-export it or remove it")
        )
    return Volume(array, geometry, path, meta)


# --------------------------------------------------------------------------------------------------------
# NIfTI (nibabel)
# --------------------------------------------------------------------------------------------------------


def _load_nifti(path: Path) -> Any:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(str(path), mmap=False)
    except FileNotFoundError:
        raise _read_error(path, "the file does not exist", "check the path (and the manifest, if it came from one)") from None
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error, struct.error) as exc:
        raise _read_error(path, f"not a readable NIfTI header ({exc})", _CORRUPT_FIX) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise _read_error(path, f"nibabel read it as {type(img).__name__}, not NIfTI", "convert it to NIfTI")
    return img


def _nifti_xform(img: Any, path: Path, strict: bool) -> tuple[np.ndarray, str, list[Issue]]:
    header = img.header
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    qcode, scode = int(qcode), int(scode)
    issues: list[Issue] = []
    shape3 = tuple(int(s) for s in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
    if qcode > 0 and scode > 0:
        probe = Geometry.from_affine(shape3, sform)
        shift = probe.max_displacement(qform)
        if shift > XFORM_TOLERANCE_MM:
            msg = (
                f"qform (code {qcode}) and sform (code {scode}) disagree by up to {shift:.2f} mm; nibabel and this "
                "workbench use the sform, SimpleITK/ITK-SNAP/3D Slicer may use the qform, so the image lands in "
                "different places in different tools"
            )
            fix = ("rewrite the header with both set to the intended matrix (e.g. `fslorient -copysform2qform`, "
                   "or nibabel set_qform(img.get_sform()))")
            if strict:
                raise _read_error(path, msg, fix)
            issues.append(Issue("warning", msg, path=str(path), fix=fix))
        return sform, "sform", issues
    if scode > 0:
        return sform, "sform", issues
    if qcode > 0:
        return qform, "qform", issues
    issues.append(
        Issue("warning", "the header has neither a qform nor an sform (codes 0/0); the position is a guess from "
              "the voxel sizes", path=str(path), fix="set a proper orientation in the scanner export or with fslorient")
    )
    return img.affine, "pixdim", issues


def _nifti_header_info(img: Any, path: Path, strict: bool) -> HeaderInfo:
    header = img.header
    shape = tuple(int(s) for s in img.shape)
    issues: list[Issue] = []
    affine, used, xissues = _nifti_xform(img, path, strict)
    issues += xissues
    ndim = len(shape)
    n_volumes = int(np.prod(shape[3:])) if ndim > 3 else 1
    shape3 = (shape + (1, 1, 1))[:3]
    if ndim < 3:
        issues.append(Issue("error", f"the image is {ndim}D with shape {shape}, a 3D volume was expected", path=str(path),
                            fix="supply the 3D volume"))
    elif ndim > 4 or (ndim == 4 and n_volumes > 1):
        issues.append(
            Issue("error", f"the image is {ndim}D with shape {shape} ({n_volumes} volumes), a 3D volume was expected",
                  path=str(path), fix="extract the volume you want (e.g. `fslroi in out 0 1`) or pass volume_index")
        )
    issues += _truncation_issues(img, path)
    geometry = Geometry.from_affine(shape3, affine)
    return HeaderInfo(
        path=path, format="nifti", geometry=geometry, dtype=str(header.get_data_dtype()), n_volumes=n_volumes,
        ndim=ndim, qform_code=int(header["qform_code"]), sform_code=int(header["sform_code"]),
        xyzt_units=int(header["xyzt_units"]), issues=issues,
    )


def _size_problem(shape: tuple[int, ...], itemsize: int, path: Path) -> str | None:
    """Why a header's declared size cannot be read into memory, checked before anything is allocated."""
    n_voxels = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if n_voxels > MAX_VOXELS:
        return (f"the header declares {n_voxels:.3g} voxels ({'x'.join(str(int(s)) for s in shape)}), more than "
                f"the {MAX_VOXELS:.3g} this workbench reads into memory")
    if str(path).lower().endswith(".gz"):
        try:
            on_disk = path.stat().st_size
        except OSError:
            return None
        needed = n_voxels * itemsize
        if needed > _MAX_GZIP_RATIO * on_disk:
            return (f"the file is truncated or its header is wrong: the header declares {needed / 2**20:.1f} MiB of "
                    f"voxels, more than the {on_disk} compressed bytes on disk can hold")
    return None


def _truncation_issues(img: Any, path: Path) -> list[Issue]:
    """Cheap size checks: exact for .nii, the gzip size trailer for .nii.gz, the declared size for both."""
    header = img.header
    problem = _size_problem(img.shape, header.get_data_dtype().itemsize, path)
    if problem is not None:
        return [Issue("error", problem, path=str(path), fix=_CORRUPT_FIX)]
    try:
        expected = int(img.dataobj.offset) + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
        if str(path).lower().endswith(".nii"):
            actual = path.stat().st_size
            if actual < expected:
                return [Issue("error", f"the file is truncated: {actual} bytes on disk, the header needs {expected}",
                              path=str(path), fix=_CORRUPT_FIX)]
        else:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", f.read(4))[0]
            if isize != expected % (1 << 32):
                return [Issue("warning", "the gzip size trailer does not match the header; the file may be truncated",
                              path=str(path), fix="check it loads (cohort_report(check_voxels=True)) or " + _CORRUPT_FIX)]
    except (OSError, ValueError, struct.error):
        pass
    return []


def _read_nifti(path: Path, volume_index: int | None, strict: bool) -> Volume:
    img = _load_nifti(path)
    info = _nifti_header_info(img, path, strict)
    shape = tuple(int(s) for s in img.shape)
    problem = _size_problem(shape[:3], img.header.get_data_dtype().itemsize, path)
    if problem is not None:
        raise _read_error(path, problem, _CORRUPT_FIX)
    if info.ndim < 3:
        raise _read_error(path, f"it is a {info.ndim}D image of shape {shape}, a 3D volume was expected", "supply the 3D volume")
    if info.ndim > 4:
        raise _read_error(path, f"it is {info.ndim}D with shape {shape}, a 3D volume was expected",
                          "supply a 3D volume (vector/tensor images are not supported)")
    try:
        if info.ndim == 4:
            n = shape[3]
            index = 0 if n == 1 else volume_index
            if index is None:
                raise _read_error(path, f"it is 4D with {n} volumes, a 3D volume was expected",
                                  "extract the volume you want (e.g. `fslroi in out 0 1`) or pass volume_index")
            if not 0 <= index < n:
                raise _read_error(path, f"volume_index {index} is out of range for {n} volumes", f"use 0..{n - 1}")
            array = np.asarray(img.dataobj[..., index], dtype=np.float32)
        else:
            array = np.asarray(img.dataobj, dtype=np.float32)
    except ImageReadError:
        raise
    except (OSError, EOFError, ValueError, gzip.BadGzipFile, zlib.error, MemoryError, struct.error) as exc:
        raise _read_error(path, f"the voxel data cannot be read ({type(exc).__name__}: {exc})", _CORRUPT_FIX) from None
    array = np.ascontiguousarray(array)
    slope, inter = img.dataobj.slope, img.dataobj.inter
    meta: dict[str, Any] = {
        "format": "nifti",
        "source_dtype": str(img.header.get_data_dtype()),
        "qform_code": info.qform_code,
        "sform_code": info.sform_code,
        "xform_used": _nifti_xform(img, path, False)[1],
        "xyzt_units": info.xyzt_units,
        "scl_slope": float(slope) if slope is not None else 1.0,
        "scl_inter": float(inter) if inter is not None else 0.0,
        "n_volumes": info.n_volumes,
        "issues": [i for i in info.issues if i.level != "error"],
    }
    return _finish_volume(array, info.geometry, path, meta)


# --------------------------------------------------------------------------------------------------------
# ITK formats and DICOM (SimpleITK)
# --------------------------------------------------------------------------------------------------------


def _read_itk(path: Path, volume_index: int | None) -> Volume:
    import SimpleITK as sitk

    header = _itk_header_info(path)
    problem = _size_problem(header.geometry.shape, 4, path)
    if problem is not None:
        raise _read_error(path, problem, _CORRUPT_FIX)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _read_error(path, f"SimpleITK could not read it ({error_summary(exc)})", _CORRUPT_FIX) from None
    return _sitk_to_volume(image, path, "itk", volume_index)


def _dicom_series_files(path: Path, series_id: str | None) -> tuple[list[str], str]:
    import SimpleITK as sitk

    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise _read_error(path, "the DICOM folder does not exist", "check the path")
    try:
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise _read_error(folder, f"cannot scan for DICOM series ({error_summary(exc)})", _CORRUPT_FIX) from None
    if not ids:
        raise _read_error(folder, "no DICOM series found in the folder", "point to the folder that holds the .dcm slices")
    if series_id is None:
        if path.is_file():
            for sid in ids:
                files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
                if str(path) in files or any(Path(f).samefile(path) for f in files):
                    return files, sid
        if len(ids) > 1:
            raise _read_error(folder, f"it holds {len(ids)} DICOM series {ids}",
                              "put each series in its own folder, or pass series_id")
        series_id = ids[0]
    elif series_id not in ids:
        raise _read_error(folder, f"series {series_id!r} is not there (found {ids})", "pass one of the listed ids")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)), series_id


def _read_dicom(path: Path, series_id: str | None) -> Volume:
    import SimpleITK as sitk

    files, sid = _dicom_series_files(path, series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _read_error(path, f"the DICOM series cannot be read ({error_summary(exc)})", _CORRUPT_FIX) from None
    if image.GetDimension() == 3 and image.GetSize()[2] == 1 and len(files) == 1:
        raise _read_error(path, "the DICOM series has a single slice, a 3D volume was expected",
                          "point to the folder holding the whole series")
    volume = _sitk_to_volume(image, path, "dicom", None)
    volume.meta.update(series_id=sid, n_files=len(files))
    return volume


def _itk_header_info(path: Path) -> HeaderInfo:
    import SimpleITK as sitk

    if not path.exists():
        raise _read_error(path, "the file does not exist", "check the path (and the manifest, if it came from one)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _read_error(path, f"SimpleITK could not read the header ({error_summary(exc)})", _CORRUPT_FIX) from None
    ndim = reader.GetDimension()
    size = tuple(int(s) for s in reader.GetSize())
    issues: list[Issue] = []
    n_comp = reader.GetNumberOfComponents()
    if n_comp != 1:
        issues.append(Issue("error", f"it has {n_comp} components per voxel (RGB/vector)", path=str(path),
                            fix="convert it to a single-channel volume"))
    n_volumes = size[3] if ndim == 4 else 1
    problem = _size_problem(size, 1, path)
    if problem is not None:
        issues.append(Issue("error", problem, path=str(path), fix=_CORRUPT_FIX))
    if ndim < 3 or ndim > 4 or n_volumes > 1:
        issues.append(Issue("error", f"it is {ndim}D with size {size}, a 3D volume was expected", path=str(path),
                            fix="supply a 3D volume, or extract one volume"))
    if ndim < 3:
        size = size + (1,) * (3 - ndim)
        affine = np.diag([*reader.GetSpacing(), 1.0][:2] + [1.0, 1.0])
    else:
        affine = ras_affine_from_itk(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), ndim)
    geometry = Geometry.from_affine(size[:3], affine)
    dtype = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return HeaderInfo(path=path, format="itk", geometry=geometry, dtype=dtype, n_volumes=n_volumes,
                      n_components=n_comp, ndim=ndim, issues=issues)


# --------------------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------------------


def read_header(path: str | os.PathLike, *, strict_xform: bool = False, series_id: str | None = None) -> HeaderInfo:
    """Read shape, spacing, orientation and dtype without loading voxels.

    Problems that do not stop the header from being read (qform/sform disagreement, a 4D file, a truncated
    uncompressed file) are returned in ``HeaderInfo.issues``; an unreadable file raises
    :class:`ImageReadError`. DICOM series are read whole (their geometry needs every slice position).
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt == "nifti":
        return _nifti_header_info(_load_nifti(path), path, strict_xform)
    if fmt == "itk":
        return _itk_header_info(path)
    if fmt == "dicom":
        vol = _read_dicom(path, series_id)
        return HeaderInfo(path=path, format="dicom", geometry=vol.geometry, dtype=vol.meta["source_dtype"],
                          issues=vol.issues)
    raise _unsupported(path)


def _unsupported(path: Path) -> ImageReadError:
    if not path.exists():
        return _read_error(path, "the file does not exist", "check the path (and the manifest, if it came from one)")
    return _read_error(
        path, "unsupported file type",
        "use NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd) or a DICOM series folder",
    )


def read_volume(
    path: str | os.PathLike,
    *,
    volume_index: int | None = None,
    strict_xform: bool = False,
    series_id: str | None = None,
) -> Volume:
    """Read a 3D volume as float32 ``(X, Y, Z)`` with its RAS geometry.

    Args:
        path: a NIfTI, NRRD or MetaImage file, a DICOM series folder, or one .dcm file of a series.
        volume_index: for a 4D file, which volume to take (a 4D file with more than one volume is an error
            otherwise; one with a single volume is read as 3D).
        strict_xform: raise instead of warning when the NIfTI qform and sform disagree.
        series_id: for a DICOM folder holding several series, which one.

    Raises:
        ImageReadError: the file is missing, truncated, corrupt, not an image, 2D, 4D or multi-channel.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt == "nifti":
        return _read_nifti(path, volume_index, strict_xform)
    if fmt == "itk":
        return _read_itk(path, volume_index)
    if fmt == "dicom":
        return _read_dicom(path, series_id)
    raise _unsupported(path)

