"""Which image format a path is, told from its name (and, for DICOM, the file's preamble), without reading it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

__all__ = [
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "image_format",
    "is_image_path",
    "strip_image_suffix",
    "has_dicom_preamble",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm",)
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + DICOM_SUFFIXES


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
