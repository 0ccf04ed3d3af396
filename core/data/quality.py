"""The cohort's quality report: every file of a discovered cohort checked before anything is trained.

:func:`check_cohort` is the one cohort report the command line (``mmvae info``) and the workbench's Data
page both show; ``strict=True`` turns its warnings into errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.data.cohort import Cohort, FileEntry, discover_cohort
from core.data.errors import ImageReadError, ImagingError, Issue
from core.data.readers import HeaderInfo, read_header, read_volume
from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress

__all__ = ["FileReport", "CohortReport", "cohort_report", "check_cohort"]


@dataclass
class FileReport:
    subject: str
    modality: str
    path: Path
    role: Literal["image", "observation_mask"] = "image"
    format: str | None = None
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    oblique: bool = False
    dtype: str | None = None
    error: str | None = None
    header: HeaderInfo | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject, "modality": self.modality, "path": str(self.path), "role": self.role,
            "format": self.format, "shape": list(self.shape) if self.shape else None,
            "spacing": [round(s, 6) for s in self.spacing] if self.spacing else None,
            "orientation": self.orientation, "oblique": self.oblique, "dtype": self.dtype, "error": self.error,
        }


@dataclass
class CohortReport:
    """What :func:`cohort_report` found: presence matrix, counts, per-file geometry and issues."""

    subjects: list[str]
    modalities: list[str]
    presence: np.ndarray
    counts: dict[str, int]
    files: list[FileReport]
    issues: list[Issue]
    layout: str

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "warning"]

    def strict(self) -> CohortReport:
        """The same report with every warning raised to an error (``mmvae info --strict``)."""
        issues = [Issue("error", i.message, i.subject, i.modality, i.path, i.fix) if i.level == "warning" else i
                  for i in self.issues]
        return CohortReport(self.subjects, self.modalities, self.presence, self.counts, self.files, issues, self.layout)

    @property
    def usable(self) -> np.ndarray:
        """Presence matrix minus the entries whose image file has an error."""
        bad = {(f.subject, f.modality) for f in self.files if f.role == "image" and f.error}
        return np.array([[self.presence[i, j] and (s, m) not in bad for j, m in enumerate(self.modalities)]
                         for i, s in enumerate(self.subjects)], dtype=bool).reshape(self.presence.shape)

    def file(self, subject: str, modality: str, role: str = "image") -> FileReport | None:
        return next((f for f in self.files if (f.subject, f.modality, f.role) == (subject, modality, role)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout, "subjects": self.subjects, "modalities": self.modalities,
            "presence": self.presence.astype(int).tolist(), "counts": self.counts,
            "files": [f.to_dict() for f in self.files], "issues": [i.to_dict() for i in self.issues],
        }

    def __str__(self) -> str:
        lines = [f"Cohort ({self.layout}): {len(self.subjects)} subjects, {len(self.modalities)} modalities"]
        width = max([len(s) for s in self.subjects] + [7])
        lines.append(" " * width + "  " + "  ".join(f"{m:>5}" for m in self.modalities))
        usable = self.usable
        for i, s in enumerate(self.subjects):
            marks = ["x" if usable[i, j] else ("!" if self.presence[i, j] else ".") for j in range(len(self.modalities))]
            lines.append(f"{s:<{width}}  " + "  ".join(f"{c:>5}" for c in marks))
        lines.append(f"{'count':<{width}}  " + "  ".join(f"{self.counts[m]:>5}" for m in self.modalities))
        lines.append("(x present, . missing, ! present but unreadable)")
        lines.append("")
        lines.append("files:")
        for f in self.files:
            if f.error:
                lines.append(f"  {f.subject} {f.modality} {f.role}: ERROR {f.error}")
            else:
                sp = "x".join(f"{v:.3g}" for v in f.spacing or ())
                lines.append(f"  {f.subject} {f.modality}{' mask' if f.role != 'image' else ''}: {f.shape} {sp} mm "
                             f"{f.orientation}{' oblique' if f.oblique else ''} {f.dtype} [{f.path.name}]")
        if self.issues:
            lines.append("")
            lines.append(f"issues ({len(self.errors)} errors, {len(self.warnings)} warnings):")
            lines += [f"  {i}" for i in self.issues]
        return "\n".join(lines)


def _overlap_fraction(a: HeaderInfo, b: HeaderInfo) -> float:
    """Fraction of ``b``'s axis-aligned world box inside ``a``'s."""
    alo, ahi = a.geometry.world_bounds()
    blo, bhi = b.geometry.world_bounds()
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None).prod()
    vol = np.clip(bhi - blo, 1e-9, None).prod()
    return float(inter / vol)


def cohort_report(
    cohort: Cohort,
    *,
    check_voxels: bool = False,
    spacing_tolerance: float = 0.1,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> CohortReport:
    """Check every file of ``cohort`` before anything is trained.

    Reads headers only (unless ``check_voxels``, which also loads each volume to find truncated compressed
    files, NaN and constant volumes). Flags unreadable files, 4D/2D/multi-channel images, qform/sform
    disagreements, spacings differing from the modality's median by more than ``spacing_tolerance``
    (relative), modalities of a subject that do not overlap in world space, masks whose grid differs from
    their image, and modalities present for no subject. Each issue names the file and the fix.
    """
    issues: list[Issue] = list(cohort.issues)
    files: list[FileReport] = []
    jobs: list[tuple[FileEntry, str, Path]] = []
    for s in cohort.subjects:
        for e in cohort.subject_entries(s).values():
            jobs.append((e, "image", e.path))
            if e.observation_mask is not None:
                jobs.append((e, "observation_mask", e.observation_mask))
    headers: dict[tuple[str, str, str], HeaderInfo] = {}
    for k, (e, role, path) in enumerate(jobs):
        raise_if_cancelled(cancel, "cohort report")
        fr = FileReport(e.subject, e.modality, path, role)  # type: ignore[arg-type]
        try:
            info = read_header(path)
            fr.header = info
            fr.format, fr.shape, fr.spacing = info.format, info.geometry.shape, info.geometry.spacing
            fr.orientation, fr.oblique, fr.dtype = info.orientation, info.geometry.is_oblique, info.dtype
            for i in info.issues:
                issues.append(Issue(i.level, i.message, e.subject, e.modality, str(path), i.fix))
                if i.level == "error":
                    fr.error = i.message
            if check_voxels and fr.error is None:
                fr.error = _check_voxels(path, e, issues, constant_is_error=role == "image")
            if fr.error is None:
                headers[(e.subject, e.modality, role)] = info
        except ImagingError as exc:
            fr.error = exc.problem
            issue = exc.to_issue(e.subject, e.modality)
            issues.append(Issue(issue.level, issue.message, e.subject, e.modality, str(path), issue.fix))
        files.append(fr)
        report_progress(progress, k + 1, len(jobs), f"{e.subject} {e.modality}")
    issues += _consistency_issues(cohort, headers, spacing_tolerance)
    return CohortReport(list(cohort.subjects), list(cohort.modalities), cohort.presence(), cohort.counts(), files,
                        issues, cohort.layout)


def check_cohort(
    source: str | os.PathLike | Cohort,
    *,
    check_voxels: bool = True,
    strict: bool = False,
    layout: Literal["auto", "bids", "folders", "manifest"] = "auto",
    modality_patterns: Mapping[str, str] | None = None,
    modalities: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> tuple[Cohort, CohortReport]:
    """Discover ``source`` and report every file: the one cohort report of the CLI and the workbench.

    With ``check_voxels`` (the default) every volume is also loaded once, so truncated compressed files,
    NaN voxels and constant volumes are named before preparation, not during it. ``strict`` makes every
    warning an error.
    """
    cohort = source if isinstance(source, Cohort) else discover_cohort(
        source, layout=layout, modality_patterns=modality_patterns, modalities=modalities)
    report = cohort_report(cohort, check_voxels=check_voxels, progress=progress, cancel=cancel)
    return cohort, report.strict() if strict else report


def _check_voxels(path: Path, e: FileEntry, issues: list[Issue], constant_is_error: bool = True) -> str | None:
    try:
        vol = read_volume(path)
    except ImageReadError as exc:
        issues.append(exc.to_issue(e.subject, e.modality))
        return exc.problem
    for i in vol.issues:
        if "NaN" in i.message:
            issues.append(Issue(i.level, i.message, e.subject, e.modality, str(path), i.fix))
            if i.level == "error":
                return i.message
    finite = vol.array[np.isfinite(vol.array)]
    if constant_is_error and finite.size and float(finite.max()) == float(finite.min()):
        msg = f"the volume is constant ({float(finite.min()):g} everywhere)"
        issues.append(Issue("error", msg, e.subject, e.modality, str(path),
                            "re-export it (it holds no image), or remove it; it is treated as missing"))
        return msg
    return None


def _consistency_issues(cohort: Cohort, headers: Mapping[tuple[str, str, str], HeaderInfo], tol: float) -> list[Issue]:
    issues: list[Issue] = []
    for m in cohort.modalities:
        infos = {s: h for (s, mm, role), h in headers.items() if mm == m and role == "image"}
        if len(infos) >= 2:
            median = np.median(np.array([h.geometry.spacing for h in infos.values()]), axis=0)
            for s, h in infos.items():
                rel = np.abs(np.asarray(h.geometry.spacing) - median) / median
                if rel.max() > tol:
                    issues.append(Issue(
                        "warning", f"spacing {tuple(round(v, 3) for v in h.geometry.spacing)} mm differs from the "
                        f"{m} median {tuple(round(float(v), 3) for v in median)} mm by {100 * rel.max():.0f}%",
                        s, m, str(h.path), "set preprocessing target_spacing so every subject is resampled to one spacing, "
                        "or check the file"))
        orientations = {h.orientation for h in infos.values()}
        if len(orientations) > 1:
            issues.append(Issue("info", f"{m} files come in several orientations {sorted(orientations)}; all are "
                                "reoriented to RAS", modality=m))
    for s in cohort.subjects:
        present = [m for m in cohort.modalities if (s, m, "image") in headers]
        if not present:
            continue
        ref = headers[(s, present[0], "image")]
        for m in present[1:]:
            h = headers[(s, m, "image")]
            if _overlap_fraction(ref, h) <= 0.0:
                issues.append(Issue(
                    "warning", f"{m} does not overlap {present[0]} in world space", s, m, str(h.path),
                    "the affines disagree: check the qform/sform, the registration, or whether one file is LPS-flipped"))
        for m in cohort.modalities:
            mask = headers.get((s, m, "observation_mask"))
            img = headers.get((s, m, "image"))
            if mask is None or img is None:
                continue
            if not mask.geometry.allclose(img.geometry, atol=1e-3):
                level = "error" if _overlap_fraction(img, mask) <= 0.0 else "info"
                issues.append(Issue(level, f"observation mask grid {mask.geometry.shape} differs from the image grid "
                                    f"{img.geometry.shape}" + ("" if level == "info" else " and does not overlap it"),
                                    s, m, str(mask.path), "it is resampled (nearest neighbour) onto the image grid"
                                    if level == "info" else "save the mask on the image's grid"))
    return issues

