"""One list of broken-input cases, shared by the command-line and the workbench tests (same expectations).

:func:`write_bad_cohort` writes a manifest cohort of tiny 8^3 volumes: four healthy subjects plus one
subject per broken file, a manifest row with a hostile subject id, paths that leave the cohort folder,
and a FLAIR column whose files are all missing. :data:`CASES` says what the cohort report must name for
each: the subject, the modality, the level and words of the message.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (8, 8, 8)
HEALTHY = ["good-1", "good-2", "good-3", "good-4"]


@dataclass(frozen=True)
class Case:
    name: str
    subject: str | None
    modality: str | None
    level: str
    words: str  # a substring of the issue's message


CASES = [
    Case("truncated .nii.gz", "trunc", "T1", "error", "cannot be read"),
    Case("non-image .nii.gz", "notimage", "T1", "error", "not a readable NIfTI"),
    Case("4D where 3D is expected", "fourd", "T1", "error", "3D volume was expected"),
    Case("qform/sform disagreement", "xform", "T2", "warning", "qform"),
    Case("spacing unlike the others", "spacing", "T1", "warning", "spacing"),
    Case("NaN voxels", "nan", "T2", "warning", "NaN"),
    Case("constant volume", "const", "T1", "error", "constant"),
    Case("header declaring a huge volume", "huge", "T1", "error", "header declares"),
    Case("modality missing for every subject", None, "FLAIR", "warning", "present for no subject"),
    Case("subject id leaving the output folder", None, None, "error", "'../../outside/pwn' is not a safe name"),
    Case("manifest path leaving the cohort folder", "escape", "T1", "warning", "outside the cohort folder"),
    Case("manifest path to a non-image file", "escape", "T2", "error", "not an image file type"),
]


def _volume(path: Path, *, value: float | None = None, spacing=(1.0, 1.0, 1.0), seed: int = 0) -> Path:
    data = (np.random.default_rng(seed).random(SHAPE).astype(np.float32) + 1 if value is None
            else np.full(SHAPE, value, np.float32))
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)
    return path


def write_bad_cohort(root: Path) -> Path:
    """Write the cohort under ``root/cohort`` (plus files outside it); returns the cohort folder."""
    cohort = root / "cohort"
    cohort.mkdir(parents=True)
    rows = ["subject,modality,path"]

    def add(subject: str, modality: str, name: str) -> None:
        rows.append(f"{subject},{modality},{name}")

    for k, s in enumerate([*HEALTHY, "trunc", "notimage", "fourd", "xform", "spacing", "nan", "const", "huge"]):
        _volume(cohort / f"{s}_T1.nii.gz", seed=k)
        _volume(cohort / f"{s}_T2.nii.gz", seed=100 + k)
        add(s, "T1", f"{s}_T1.nii.gz")
        add(s, "T2", f"{s}_T2.nii.gz")
        add(s, "FLAIR", f"{s}_FLAIR.nii.gz")  # never written: FLAIR is missing for everyone
    raw = (cohort / "trunc_T1.nii.gz").read_bytes()
    (cohort / "trunc_T1.nii.gz").write_bytes(raw[: len(raw) // 2])
    (cohort / "notimage_T1.nii.gz").write_text("subject,age\nnot an image\n")
    nib.save(nib.Nifti1Image(np.ones((*SHAPE, 3), np.float32), np.eye(4)), cohort / "fourd_T1.nii.gz")
    img = nib.Nifti1Image(np.random.default_rng(7).random(SHAPE).astype(np.float32), None)
    shifted = np.eye(4)
    shifted[0, 3] = 12.0
    img.set_sform(np.eye(4), code=2)
    img.set_qform(shifted, code=1)
    nib.save(img, cohort / "xform_T2.nii.gz")
    _volume(cohort / "spacing_T1.nii.gz", spacing=(2.5, 1.0, 1.0))
    nan = np.random.default_rng(8).random(SHAPE).astype(np.float32) + 1
    nan[:2] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), cohort / "nan_T2.nii.gz")
    _volume(cohort / "const_T1.nii.gz", value=3.0)
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    (cohort / "huge_T1.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 4100))

    (root / "outside").mkdir()
    _volume(root / "outside" / "elsewhere_T1.nii.gz", seed=42)
    (root / "outside" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    add("escape", "T1", "../outside/elsewhere_T1.nii.gz")
    add("escape", "T2", "../outside/passwd")
    add("../../outside/pwn", "T1", "good-1_T1.nii.gz")
    (cohort / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return cohort


def digest(folder: Path) -> dict[str, str]:
    """Hash of every file under ``folder`` (to show that nothing on disk changed)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def unmet(issues: list) -> list[str]:
    """The cases the issues do not name as expected (empty when every case is handled)."""
    missing = []
    for case in CASES:
        hits = [i for i in issues if case.words in i.message and i.level == case.level
                and (case.subject is None or i.subject == case.subject)
                and (case.modality is None or i.modality == case.modality)]
        if not hits or not all(i.fix for i in hits):
            missing.append(case.name)
    return missing
