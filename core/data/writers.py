"""Writing medical volumes, atomically: each writer writes a temporary file beside the target, checks what
it wrote, and renames it into place. NIfTI goes through nibabel, NRRD/MetaImage through SimpleITK."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_path
from core.data.errors import ImageWriteError, error_summary
from core.data.formats import NIFTI_SUFFIXES, image_format
from core.data.geometry import Geometry, itk_from_geometry, ras_affine_from_itk

__all__ = ["write_nifti", "write_volume"]


def _checked_array(array: Any, geometry: Geometry, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != geometry.shape:
        raise ImageWriteError(f"Cannot write {path}: array shape {array.shape} != geometry shape {geometry.shape}.")
    return array


def write_nifti(
    path: str | os.PathLike,
    array: Any,
    geometry: Geometry,
    *,
    qform_code: int = 1,
    sform_code: int = 1,
    description: str = "",
    intent_name: str = "",
    xyzt_units: int | None = None,
    dtype: Any = np.float32,
    overwrite: bool = True,
    verify: bool = True,
) -> Path:
    """Write ``array`` (X, Y, Z) on ``geometry`` as NIfTI-1, atomically.

    Both the qform and the sform are set to ``geometry.affine`` with the given codes (a code of 0 is replaced
    by the other one, so that every tool reads the same placement). If the affine has shear, which a qform
    cannot hold, the qform code is set to 0 so that no tool falls back on a wrong qform. Scaling is reset to
    1/0. With ``verify`` the file is read back (nibabel and SimpleITK header) and its shape and affine are
    checked before it is renamed into place.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ImageWriteError(f"Cannot write {path} as NIfTI: the name must end in .nii or .nii.gz.")
    data = _checked_array(array, geometry, path).astype(dtype, copy=False)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ImageWriteError(f"Refusing to write {path}: the array holds NaN or infinite values; replace them first.")
    qform_code = int(qform_code) or int(sform_code) or 1
    sform_code = int(sform_code) or qform_code
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, geometry.affine, header)
    img.set_sform(geometry.affine, code=sform_code)
    img.set_qform(geometry.affine, code=qform_code)
    sheared = not np.allclose(img.header.get_qform(), geometry.affine, rtol=0, atol=1e-4)
    if sheared:
        img.set_qform(geometry.affine, code=0)
    img.header.set_slope_inter(1.0, 0.0)
    if xyzt_units is not None:
        img.header["xyzt_units"] = int(xyzt_units)
    else:
        img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    img.header["intent_name"] = intent_name.encode("ascii", "replace")[:15]
    img.header["cal_min"] = 0.0
    img.header["cal_max"] = 0.0
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
        if verify:
            _verify_nifti(tmp, geometry, data.dtype, check_qform=not sheared)
    return path


def _verify_nifti(path: Path, geometry: Geometry, dtype: np.dtype, check_qform: bool) -> None:
    import nibabel as nib

    back = nib.load(str(path), mmap=False)
    problems = []
    if tuple(back.shape) != geometry.shape:
        problems.append(f"shape {back.shape} != {geometry.shape}")
    if not np.allclose(back.header.get_sform(), geometry.affine, rtol=0, atol=1e-4):
        problems.append("sform differs from the intended affine")
    if check_qform and not np.allclose(back.header.get_qform(), geometry.affine, rtol=0, atol=1e-4):
        problems.append("qform differs from the intended affine")
    if back.header.get_data_dtype() != dtype:
        problems.append(f"dtype {back.header.get_data_dtype()} != {dtype}")
    if check_qform:  # a sheared affine has no qform, and ITK refuses to read it at all
        try:
            itk = _itk_header_info_any(path)
            if not np.allclose(itk, geometry.affine, rtol=0, atol=1e-3):
                problems.append("SimpleITK places the image elsewhere than nibabel")
        except RuntimeError as exc:
            problems.append(f"SimpleITK cannot read it back ({error_summary(exc)})")
    if problems:
        raise ImageWriteError(f"Writing {path.name} failed the read-back check: {'; '.join(problems)}.")


def _itk_header_info_any(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return ras_affine_from_itk(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), reader.GetDimension())


def write_volume(path: str | os.PathLike, array: Any, geometry: Geometry, *, overwrite: bool = True, compress: bool = True) -> Path:
    """Write a volume in the format its name says: NIfTI through nibabel, NRRD/MetaImage through SimpleITK.

    The (X, Y, Z) -> (z, y, x) and RAS -> LPS conversions for ITK formats happen here. Detached-header
    formats (.nhdr, .mhd) write two files; both are written under temporary names first.
    """
    import SimpleITK as sitk

    path = Path(path)
    fmt = image_format(path) if not path.is_dir() else None
    if fmt == "nifti":
        return write_nifti(path, array, geometry, overwrite=overwrite, dtype=np.asarray(array).dtype)
    if fmt != "itk":
        raise ImageWriteError(f"Cannot write {path}: use .nii/.nii.gz, .nrrd/.nhdr or .mha/.mhd.")
    data = _checked_array(array, geometry, path)
    origin, spacing, direction = itk_from_geometry(geometry)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    if name.endswith((".nrrd", ".mha")):
        with atomic_path(path, overwrite=overwrite) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        return path
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        sitk.WriteImage(image, str(staging / path.name), useCompression=compress)
        written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)  # header last
        for f in written:
            os.replace(f, path.parent / f.name)
    finally:
        for f in staging.iterdir():
            f.unlink()
        staging.rmdir()
    return path
