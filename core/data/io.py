"""Reading and writing medical volumes: the only module in ``core`` that touches nibabel or SimpleITK files.

One in-memory convention, converted once here at the boundary:

* an array is ``(X, Y, Z)`` float32, axis ``i`` of the array is voxel index ``i`` of the file;
* a :class:`Geometry` is ``(shape, spacing, affine)`` where ``affine`` maps voxel indices ``(i, j, k, 1)``
  to world millimetres in **RAS+** (nibabel's convention).

ITK formats (NRRD, MetaImage, DICOM through SimpleITK) store origin and direction in LPS and give arrays in
``(z, y, x)`` order; :func:`read_volume` converts both, so nothing outside this module ever sees LPS or a
transposed array. NIfTI is read with nibabel, which applies ``scl_slope``/``scl_inter`` (the header's own
fields read NaN after loading; the real values are kept in ``Volume.meta``).

The qform/sform trap: when a NIfTI file has both a qform and an sform and they disagree, nibabel uses the
sform and SimpleITK (so ITK-SNAP and 3D Slicer) uses the qform for sform codes 2-4. The files then overlay
differently in different tools. :func:`read_header` and :func:`read_volume` detect it, report how far apart
the two placements are, and use the sform (nibabel's choice) unless ``strict_xform=True``.

Nothing here modifies an input file; writers write a temporary file beside the target and rename it.
"""

from __future__ import annotations

import gzip
import os
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.atomic import atomic_path, atomic_write_json

__all__ = [
    "ImagingError",
    "ImageReadError",
    "ImageWriteError",
    "GeometryError",
    "Issue",
    "Geometry",
    "Volume",
    "HeaderInfo",
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "image_format",
    "is_image_path",
    "strip_image_suffix",
    "has_dicom_preamble",
    "read_header",
    "read_volume",
    "write_nifti",
    "write_volume",
    "atomic_path",
    "write_json_atomic",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm",)
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + DICOM_SUFFIXES

# LPS <-> RAS: flip the first two world axes.
_FLIP_XY = np.diag([-1.0, -1.0, 1.0])

# Displacement (mm) between qform and sform placements above which they are reported as disagreeing.
XFORM_TOLERANCE_MM = 1e-3

# The largest volume read into memory (2**30 voxels = 4 GiB as float32). A header declaring more is refused
# before anything is allocated.
MAX_VOXELS = 1 << 30
# Deflate compresses at most about 1032:1, so a .nii.gz whose header needs more bytes than this many times
# its size on disk is certainly truncated (or its header lies).
_MAX_GZIP_RATIO = 1100


class ImagingError(ValueError):
    """Base class for imaging input/output errors; messages name the file and the fix.

    ``path``, ``problem`` and ``fix`` hold the parts separately when the raiser knew them.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, problem: str | None = None,
                 fix: str | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.problem = problem or message
        self.fix = fix

    def to_issue(self, subject: str | None = None, modality: str | None = None, *, suffix: str = "") -> Issue:
        """This error as an error-level :class:`Issue` (for reports that go on after a bad file)."""
        name = Path(self.path).name if self.path else None
        message = (f"cannot read {name}: {self.problem}" if name and self.problem != str(self) else self.problem) + suffix
        return Issue("error", message, subject, modality, self.path, self.fix)


class ImageReadError(ImagingError):
    """A file could not be read as a 3D volume."""


class ImageWriteError(ImagingError):
    """A volume could not be written, or did not read back as written."""


class GeometryError(ImagingError):
    """An affine, spacing or shape is invalid or cannot be represented."""


@dataclass(frozen=True)
class Issue:
    """A problem found in the input: ``level`` is 'error' (the file or subject cannot be used), 'warning'
    (it is used, but check it) or 'info'."""

    level: Literal["error", "warning", "info"]
    message: str
    subject: str | None = None
    modality: str | None = None
    path: str | None = None
    fix: str | None = None

    def __str__(self) -> str:
        where = " ".join(
            x for x in (f"[{self.subject}]" if self.subject else "", f"{self.modality}:" if self.modality else "") if x
        )
        text = f"{self.level.upper()}: {where + ' ' if where else ''}{self.message}"
        if self.path and self.path not in self.message:
            text += f" ({self.path})"
        if self.fix:
            text += f" Fix: {self.fix}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Issue:
        return cls(**d)


# --------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Geometry:
    """A voxel grid: ``shape`` (X, Y, Z), ``spacing`` in mm and a 4x4 voxel-to-RAS+ ``affine``.

    ``spacing`` must equal the column norms of ``affine[:3, :3]``; build one from an affine alone with
    :meth:`from_affine`. Geometries compare with :meth:`allclose` (``==`` is identity).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or any(s < 1 for s in shape):
            raise GeometryError(f"A geometry needs a 3D shape of positive sizes; got {self.shape}.")
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise GeometryError(f"The affine must be a finite 4x4 matrix; got shape {affine.shape}.")
        if not np.allclose(affine[3], [0, 0, 0, 1]):
            raise GeometryError(f"The affine's last row must be (0, 0, 0, 1); got {affine[3].tolist()}.")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise GeometryError("The affine is singular (a zero voxel size or collapsed axes).")
        spacing = tuple(float(s) for s in self.spacing)
        norms = np.linalg.norm(affine[:3, :3], axis=0)
        if len(spacing) != 3 or not np.allclose(spacing, norms, rtol=1e-4, atol=1e-6):
            raise GeometryError(
                f"spacing {spacing} does not match the affine's voxel sizes {tuple(np.round(norms, 6))}; "
                "use Geometry.from_affine(shape, affine)."
            )
        affine.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "affine", affine)

    @classmethod
    def from_affine(cls, shape: tuple[int, ...], affine: np.ndarray) -> Geometry:
        affine = np.asarray(affine, dtype=np.float64)
        return cls(tuple(int(s) for s in shape), tuple(np.linalg.norm(affine[:3, :3], axis=0).tolist()), affine)

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the voxel axes."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def orientation(self) -> str:
        """Closest axis codes, e.g. 'RAS', 'LPS', 'LAS'."""
        from nibabel.orientations import aff2axcodes

        return "".join(c or "?" for c in aff2axcodes(self.affine))

    @property
    def has_shear(self) -> bool:
        d = self.direction
        return not np.allclose(d.T @ d, np.eye(3), atol=1e-5)

    @property
    def is_oblique(self) -> bool:
        d = np.abs(self.direction)
        return not np.allclose(np.sort(d, axis=0)[-1], 1.0, atol=1e-6)

    def corners(self) -> np.ndarray:
        """RAS coordinates (8, 3) of the centres of the eight corner voxels."""
        idx = np.array(np.meshgrid(*[[0, s - 1] for s in self.shape], indexing="ij")).reshape(3, -1).T
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned RAS bounding box (min, max) of the field of view (voxel edges included)."""
        half = 0.5 * np.abs(self.affine[:3, :3]).sum(axis=1)
        c = self.corners()
        return c.min(0) - half, c.max(0) + half

    def allclose(self, other: Geometry, atol: float = 1e-4) -> bool:
        """Same shape and affines equal within ``atol`` (mm)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, rtol=0, atol=atol))

    def max_displacement(self, other_affine: np.ndarray) -> float:
        """Largest distance (mm) between where this grid and ``other_affine`` put any corner voxel."""
        idx = np.array(np.meshgrid(*[[0, s - 1] for s in self.shape], indexing="ij")).reshape(3, -1)
        idx = np.vstack([idx, np.ones(idx.shape[1])])
        return float(np.abs((self.affine - np.asarray(other_affine)) @ idx)[:3].max())

    # -- grid operations (pure geometry; no voxels move here) ---------------------------------------------
    def canonical(self) -> Geometry:
        """The same voxels relabelled so that the axes point as close as possible to R, A, S.

        Only permutes and flips axes (no interpolation), like ``nibabel.as_closest_canonical``.
        """
        from nibabel.orientations import inv_ornt_aff, io_orientation

        ornt = io_orientation(self.affine)
        affine = self.affine @ inv_ornt_aff(ornt, self.shape)
        shape = [0, 0, 0]
        for axis, (target, _flip) in enumerate(ornt):
            shape[int(target)] = self.shape[axis]
        return Geometry.from_affine(tuple(shape), affine)

    def with_spacing(self, spacing: tuple[float, float, float]) -> Geometry:
        """A grid with the same axes directions and centre, covering the same extent at ``spacing``."""
        spacing_new = np.asarray(spacing, dtype=np.float64)
        if spacing_new.shape != (3,) or np.any(spacing_new <= 0):
            raise GeometryError(f"Target spacing must be three positive numbers; got {spacing}.")
        old = np.asarray(self.spacing)
        shape = np.maximum(1, np.round(np.asarray(self.shape) * old / spacing_new)).astype(int)
        center = self.affine[:3, :3] @ ((np.asarray(self.shape) - 1) / 2) + self.affine[:3, 3]
        cols = self.direction * spacing_new
        affine = np.eye(4)
        affine[:3, :3] = cols
        affine[:3, 3] = center - cols @ ((shape - 1) / 2)
        return Geometry.from_affine(tuple(shape.tolist()), affine)

    def crop_or_pad(self, shape: tuple[int, int, int]) -> Geometry:
        """A grid of ``shape`` centred on this one (integer voxel offset, so no interpolation is needed)."""
        target = np.asarray(shape, dtype=int)
        if target.shape != (3,) or np.any(target < 1):
            raise GeometryError(f"Target shape must be three positive integers; got {shape}.")
        offset = (np.asarray(self.shape) - target) // 2
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ offset + self.affine[:3, 3]
        return Geometry(tuple(target.tolist()), self.spacing, affine)

    # -- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "spacing": [float(s) for s in self.spacing],
            "affine": [[float(v) for v in row] for row in self.affine],
            "orientation": self.orientation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(tuple(d["shape"]), tuple(d["spacing"]), np.asarray(d["affine"], dtype=np.float64))

    def __repr__(self) -> str:
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        return f"Geometry(shape={self.shape}, spacing={sp} mm, orientation={self.orientation}{', oblique' if self.is_oblique else ''})"


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


# --------------------------------------------------------------------------------------------------------
# Paths and formats
# --------------------------------------------------------------------------------------------------------


def _lower_name(path: Path) -> str:
    return path.name.lower()


def image_format(path: str | os.PathLike) -> Literal["nifti", "itk", "dicom"] | None:
    """'nifti', 'itk' (NRRD/MetaImage), 'dicom' (a .dcm file or a folder of DICOM files), or None."""
    path = Path(path)
    name = _lower_name(path)
    if path.is_dir():
        return "dicom" if _looks_like_dicom_dir(path) else None
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    return None


def is_image_path(path: str | os.PathLike) -> bool:
    return image_format(path) is not None


def strip_image_suffix(name: str) -> str:
    """``'sub-01_T1w.nii.gz'`` -> ``'sub-01_T1w'`` (any known image suffix, case-insensitive)."""
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _looks_like_dicom_dir(path: Path) -> bool:
    try:
        for child in path.iterdir():
            if child.is_file() and (child.suffix.lower() == ".dcm" or has_dicom_preamble(child)):
                return True
    except OSError:
        return False
    return False


def has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_error(path: Path, what: str, fix: str) -> ImageReadError:
    return ImageReadError(f"Cannot read {path}: {what}. Fix: {fix}", path=path, problem=what, fix=fix)


_CORRUPT_FIX = "re-export or re-copy the file (it may be truncated or not an image), or remove it from the cohort"


# --------------------------------------------------------------------------------------------------------
# SimpleITK <-> geometry (the only LPS and (z, y, x) code in core)
# --------------------------------------------------------------------------------------------------------


def _ras_affine_from_itk(origin: Any, spacing: Any, direction: Any, ndim: int) -> np.ndarray:
    direction = np.asarray(direction, dtype=np.float64).reshape(ndim, ndim)[:3, :3]
    spacing = np.asarray(spacing, dtype=np.float64)[:3]
    origin = np.asarray(origin, dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = _FLIP_XY @ direction @ np.diag(spacing)
    affine[:3, 3] = _FLIP_XY @ origin
    return affine


def _itk_from_geometry(geometry: Geometry) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    if geometry.has_shear:
        raise GeometryError(
            "The affine has shear, which NRRD/MetaImage/DICOM (origin + orthonormal direction) cannot store. "
            "Fix: write NIfTI (.nii.gz) instead."
        )
    direction = _FLIP_XY @ geometry.direction
    origin = _FLIP_XY @ geometry.affine[:3, 3]
    return tuple(origin.tolist()), tuple(float(s) for s in geometry.spacing), tuple(direction.ravel().tolist())


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
    affine = _ras_affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection(), 3)
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
        raise _read_error(path, f"SimpleITK could not read it ({_first_line(exc)})", _CORRUPT_FIX) from None
    return _sitk_to_volume(image, path, "itk", volume_index)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "ERROR" in ln or "rror" in ln] or lines
    return (useful[-1] if useful else type(exc).__name__)[:200]


def _dicom_series_files(path: Path, series_id: str | None) -> tuple[list[str], str]:
    import SimpleITK as sitk

    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise _read_error(path, "the DICOM folder does not exist", "check the path")
    try:
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise _read_error(folder, f"cannot scan for DICOM series ({_first_line(exc)})", _CORRUPT_FIX) from None
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
        raise _read_error(path, f"the DICOM series cannot be read ({_first_line(exc)})", _CORRUPT_FIX) from None
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
        raise _read_error(path, f"SimpleITK could not read the header ({_first_line(exc)})", _CORRUPT_FIX) from None
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
        affine = _ras_affine_from_itk(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), ndim)
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


# --------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, payload: Any, *, overwrite: bool = True) -> Path:
    return atomic_write_json(path, payload, overwrite=overwrite)


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
    if not _lower_name(path).endswith(NIFTI_SUFFIXES):
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
            problems.append(f"SimpleITK cannot read it back ({_first_line(exc)})")
    if problems:
        raise ImageWriteError(f"Writing {path.name} failed the read-back check: {'; '.join(problems)}.")


def _itk_header_info_any(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return _ras_affine_from_itk(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), reader.GetDimension())


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
    origin, spacing, direction = _itk_from_geometry(geometry)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    name = _lower_name(path)
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
