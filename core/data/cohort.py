"""Finding a cohort on disk: which file holds which modality of which subject, and what is missing.

Three layouts are recognised (:func:`discover_cohort` picks one with ``layout="auto"``):

* **manifest**: a CSV with columns ``subject, modality, path[, observation_mask]`` (paths relative to the
  CSV's folder; an empty path declares the modality missing for that subject). Used when ``source`` is a
  ``.csv`` file, or a folder holding ``manifest.csv``.
* **bids**: ``sub-<label>/[ses-<label>/]<datatype>/sub-<label>[_ses-<label>][_<entity>-<value>]_<suffix>.nii.gz``.
  Suffixes map to modalities (``T1w``->T1, ``T2w``->T2, ``FLAIR``, ``PDw``->PD, ``US``; ``T1w`` with a
  ``ce-`` entity -> T1ce). BIDS has no ultrasound datatype, so every folder under the subject is searched
  (``sub-01/us/sub-01_US.nii.gz``). ``..._US_fov.nii.gz`` (also ``_mask``) is the observation mask of US.
* **folders**: one folder per subject with one file per modality, named by a suffix after ``_`` or ``-``
  (BraTS: ``_t1``, ``_t1ce``, ``_t2``, ``_flair``; BraTS 2023: ``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``;
  ``_us``; ``_us_fov`` is the US observation mask). A sub-folder holding a DICOM series counts as one file
  named after the folder. Segmentations (``_seg``) are skipped.

``modality_patterns`` maps glob patterns (matched case-insensitively against the file name, or the path
relative to the cohort root when the pattern contains ``/``) to modality names, and is tried before the
built-in rules: ``{"*-US-before*": "US", "*_US_sector*": "US:mask"}`` (``:mask`` marks an observation mask).

A ``participants.tsv`` (BIDS; also looked for beside a manifest or at the root of a folder layout) gives
per-subject covariates, returned as labels.

Names and paths that enter here are checked once: subject ids and modality names must follow
:data:`core.atomic.SAFE_NAME_RULE` (they become file names of exports; a row or folder breaking it is skipped
with an error), a manifest path that is not an image file type is refused without being opened, and a file
that resolves outside the cohort folder (``..``, an absolute path or a symlink) is used with a warning naming
where it really is.

Its quality report (every file checked before training) is :mod:`core.data.quality`.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from core.atomic import SAFE_NAME_RULE, is_safe_name
from core.data.errors import ImagingError, Issue
from core.data.formats import has_dicom_preamble, is_image_path, strip_image_suffix

__all__ = [
    "CohortError",
    "FileEntry",
    "Cohort",
    "discover_cohort",
    "read_manifest",
    "discover_bids",
    "discover_folders",
    "read_covariates",
    "BIDS_SUFFIXES",
    "FOLDER_SUFFIXES",
    "MODALITY_ORDER",
]


class CohortError(ImagingError):
    """The cohort as a whole cannot be used (empty folder, unreadable manifest, no modality found)."""


# Built-in names. Keys are matched case-insensitively.
BIDS_SUFFIXES: dict[str, str] = {
    "t1w": "T1", "t2w": "T2", "flair": "FLAIR", "pdw": "PD", "t2starw": "T2star", "pd": "PD",
    "us": "US", "ultrasound": "US",
}
FOLDER_SUFFIXES: dict[str, str] = {
    "t1": "T1", "t1n": "T1", "t1w": "T1", "t1native": "T1",
    "t1ce": "T1ce", "t1c": "T1ce", "t1gd": "T1ce", "t1post": "T1ce",
    "t2": "T2", "t2w": "T2",
    "flair": "FLAIR", "t2f": "FLAIR", "t2flair": "FLAIR",
    "pd": "PD", "pdw": "PD",
    "us": "US", "ius": "US", "ultrasound": "US",
}
MASK_WORDS = {"fov", "mask", "sector", "obsmask", "observed"}
SKIP_WORDS = {"seg", "segmentation", "label", "labels", "dseg", "defacemask", "brainmask"}
MODALITY_ORDER = ["T1", "T1ce", "T2", "FLAIR", "PD", "T2star", "US"]
_SIDECAR_SUFFIXES = (".json", ".tsv", ".txt", ".md5", ".tag", ".bval", ".bvec", ".csv", ".md", ".html")


@dataclass(frozen=True)
class FileEntry:
    """One modality of one subject: the image file and, optionally, its observation (FOV) mask file."""

    subject: str
    modality: str
    path: Path
    observation_mask: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "modality": self.modality, "path": str(self.path),
                "observation_mask": str(self.observation_mask) if self.observation_mask else None}


@dataclass
class Cohort:
    """A subjects x modalities table of files, plus per-subject covariates.

    ``entries[(subject, modality)]`` exists only where the file exists; ``issues`` lists what discovery
    found wrong (unreadable manifest rows, duplicates, unrecognised files, a modality with no file).
    """

    subjects: list[str]
    modalities: list[str]
    entries: dict[tuple[str, str], FileEntry]
    layout: str
    root: Path | None = None
    covariates: dict[str, dict[str, str]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    unmatched: list[Path] = field(default_factory=list)

    def entry(self, subject: str, modality: str) -> FileEntry | None:
        return self.entries.get((subject, modality))

    def subject_entries(self, subject: str) -> dict[str, FileEntry]:
        return {m: e for m in self.modalities if (e := self.entries.get((subject, m))) is not None}

    def presence(self) -> np.ndarray:
        """Bool array (n_subjects, n_modalities)."""
        return np.array([[(s, m) in self.entries for m in self.modalities] for s in self.subjects], dtype=bool).reshape(
            len(self.subjects), len(self.modalities)
        )

    def counts(self) -> dict[str, int]:
        p = self.presence()
        return {m: int(p[:, j].sum()) for j, m in enumerate(self.modalities)}

    def subset(self, subjects: Sequence[str]) -> Cohort:
        keep = [s for s in self.subjects if s in set(subjects)]
        return Cohort(
            subjects=keep, modalities=list(self.modalities),
            entries={k: v for k, v in self.entries.items() if k[0] in set(keep)}, layout=self.layout, root=self.root,
            covariates={s: v for s, v in self.covariates.items() if s in set(keep)},
            issues=[i for i in self.issues if i.subject is None or i.subject in set(keep)], unmatched=list(self.unmatched),
        )

    def labels(self, subjects: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor] | None, dict[str, list[str]]]:
        """Covariates as label tensors for ``subjects`` (default all).

        Numeric columns become float32 (NaN where missing); other columns become int64 category codes
        (-1 where missing), with the category names returned in the second value.
        """
        subjects = list(self.subjects if subjects is None else subjects)
        columns: list[str] = []
        for row in self.covariates.values():
            columns += [c for c in row if c not in columns]
        if not columns:
            return None, {}
        labels: dict[str, torch.Tensor] = {}
        categories: dict[str, list[str]] = {}
        for col in columns:
            raw = [self.covariates.get(s, {}).get(col) for s in subjects]
            raw = [None if v is None or v.strip().lower() in ("", "n/a", "na", "nan") else v.strip() for v in raw]
            try:
                labels[col] = torch.tensor([float("nan") if v is None else float(v) for v in raw], dtype=torch.float32)
            except ValueError:
                cats = sorted({v for v in raw if v is not None})
                categories[col] = cats
                labels[col] = torch.tensor([-1 if v is None else cats.index(v) for v in raw], dtype=torch.int64)
        return labels, categories

    def fingerprint(self) -> str:
        """Hash of every file's path, size and modification time (changes when any input changes)."""
        h = hashlib.sha256()
        for (s, m), e in sorted(self.entries.items()):
            for p in (e.path, e.observation_mask):
                if p is None:
                    continue
                try:
                    st = p.stat()
                    h.update(f"{s}|{m}|{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{s}|{m}|{p}|missing\n".encode())
        h.update(repr(sorted(self.covariates.items())).encode())
        return h.hexdigest()[:32]

    def __repr__(self) -> str:
        counts = ", ".join(f"{m}={c}" for m, c in self.counts().items())
        return f"Cohort({self.layout}, {len(self.subjects)} subjects, {counts})"


# --------------------------------------------------------------------------------------------------------
# Modality matching
# --------------------------------------------------------------------------------------------------------

Match = tuple[str, bool] | None  # (modality, is_observation_mask)


def _user_match(patterns: Mapping[str, str] | None, name: str, rel: str) -> Match | Literal["skip"]:
    for pattern, target in (patterns or {}).items():
        subject = rel if "/" in pattern else name
        if fnmatch.fnmatch(subject.lower(), pattern.lower()):
            if not target:
                return "skip"
            modality, _, role = target.partition(":")
            return modality, role.lower() in ("mask", "fov", "observation_mask")
    return None


def _bids_match(stem: str) -> Match | Literal["skip"]:
    tokens = stem.split("_")
    entities = {t.split("-", 1)[0].lower(): t.split("-", 1)[1] for t in tokens if "-" in t}
    plain = [t for t in tokens if "-" not in t]
    if not plain:
        return None
    suffix = plain[-1].lower()
    if suffix in MASK_WORDS and len(plain) >= 2 and plain[-2].lower() in BIDS_SUFFIXES:
        return BIDS_SUFFIXES[plain[-2].lower()], True
    if suffix in SKIP_WORDS:
        return "skip"
    if suffix in BIDS_SUFFIXES:
        modality = BIDS_SUFFIXES[suffix]
        if modality == "T1" and "ce" in entities:
            modality = "T1ce"
        return modality, False
    return None


def _folder_match(stem: str) -> Match | Literal["skip"]:
    tokens = [t for t in re.split(r"[_\-. ]+", stem) if t]
    if not tokens:
        return None
    last = tokens[-1].lower()
    if last in MASK_WORDS and len(tokens) >= 2 and tokens[-2].lower() in FOLDER_SUFFIXES:
        return FOLDER_SUFFIXES[tokens[-2].lower()], True
    if last in SKIP_WORDS:
        return "skip"
    if last in FOLDER_SUFFIXES:
        return FOLDER_SUFFIXES[last], False
    return None


def _order_modalities(found: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    if requested is not None:
        return list(dict.fromkeys(requested))
    known = [m for m in MODALITY_ORDER if m in found]
    return known + [m for m in dict.fromkeys(found) if m not in known]


class _Collector:
    """Accumulates (subject, modality) -> file, reporting duplicates and unmatched files."""

    def __init__(self, layout: str, root: Path) -> None:
        self.layout, self.root = layout, root
        self.images: dict[tuple[str, str], Path] = {}
        self.masks: dict[tuple[str, str], Path] = {}
        self.subjects: list[str] = []
        self.issues: list[Issue] = []
        self.unmatched: list[Path] = []

    def accepts(self, subject: str, modality: str | None = None, where: str = "") -> bool:
        """The one safe-name rule for ids and modality names; a broken one is an error issue, not a crash."""
        for kind, name in (("subject id", subject), ("modality name", modality)):
            if name is not None and not is_safe_name(name):
                self.issues.append(Issue("error", f"{where}{kind} {name!r} is not a safe name; skipped",
                                         subject=subject if kind == "modality name" and is_safe_name(subject) else None,
                                         path=str(self.root), fix=f"rename it: {SAFE_NAME_RULE}"))
                return False
        return True

    def add_subject(self, subject: str) -> None:
        if subject not in self.subjects:
            self.subjects.append(subject)

    def add(self, subject: str, modality: str, path: Path, is_mask: bool) -> None:
        if not self.accepts(subject, modality, where=f"{path.name}: "):
            return
        table = self.masks if is_mask else self.images
        self.warn_if_outside(subject, modality, path)
        key = (subject, modality)
        if key in table:
            self.issues.append(Issue(
                "warning", f"two files match {modality}{' mask' if is_mask else ''}: {table[key].name} (kept) and "
                f"{path.name} (ignored)", subject=subject, modality=modality, path=str(path),
                fix="remove one, or give modality_patterns that tell them apart"))
            return
        table[key] = path

    def warn_if_outside(self, subject: str, modality: str, path: Path) -> None:
        try:
            real, root = path.resolve(), self.root.resolve()
        except OSError:
            return
        if real != root and root not in real.parents:
            self.issues.append(Issue(
                "warning", f"{path.name} resolves to {real}, outside the cohort folder {self.root}", subject=subject,
                modality=modality, path=str(path), fix="copy the file into the cohort folder (the rule: a cohort reads "
                "files inside its own folder), or check the path or symlink is the one you meant"))

    def cohort(self, requested: Sequence[str] | None, covariates: dict[str, dict[str, str]]) -> Cohort:
        found = [m for _, m in self.images]
        modalities = _order_modalities(found, requested)
        entries = {}
        for (s, m), p in self.images.items():
            if m in modalities:
                entries[(s, m)] = FileEntry(s, m, p, self.masks.get((s, m)))
        for (s, m), p in self.masks.items():
            if (s, m) not in self.images:
                self.issues.append(Issue("warning", f"observation mask {p.name} has no {m} image beside it; ignored",
                                         subject=s, modality=m, path=str(p), fix=f"add the {m} image or remove the mask"))
        cohort = Cohort(sorted(self.subjects), modalities, entries, self.layout, self.root, covariates,
                        self.issues, self.unmatched)
        _check_cohort(cohort)
        return cohort


def _check_cohort(cohort: Cohort) -> None:
    counts = cohort.counts()
    if not cohort.entries:
        raise CohortError(
            f"No image file of a known modality was found in {cohort.root} ({cohort.layout} layout). "
            "Fix: check the folder, or pass modality_patterns (e.g. {'*_T1.nii.gz': 'T1'}) or a manifest CSV."
        )
    for m, c in counts.items():
        if c == 0:
            cohort.issues.append(Issue(
                "warning", f"modality {m} is present for no subject", modality=m,
                fix="check the file patterns or manifest; it is dropped unless you list it in the preprocessing "
                "modalities (then it can only be imputed)"))
    present = cohort.presence()
    for i, s in enumerate(cohort.subjects):
        if not present[i].any():
            cohort.issues.append(Issue("warning", "no usable image for this subject", subject=s,
                                       fix="add its files or remove the subject"))
    if cohort.unmatched:
        names = ", ".join(p.name for p in cohort.unmatched[:5]) + (" ..." if len(cohort.unmatched) > 5 else "")
        cohort.issues.append(Issue("info", f"{len(cohort.unmatched)} image file(s) match no modality: {names}",
                                   fix="pass modality_patterns to map them, e.g. {'*-US-before*': 'US'}"))


# --------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------


def _iter_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (and DICOM series folders, as one item), sorted, hidden ones skipped."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        dicom_here = [f for f in filenames if f.lower().endswith(".dcm")
                      or ("." not in f and has_dicom_preamble(here / f))]
        if dicom_here and here != folder:
            out.append(here)
            dirnames[:] = []
            continue
        for f in sorted(filenames):
            if f.startswith(".") or f in dicom_here:
                continue
            p = here / f
            if is_image_path(p) and not f.lower().endswith((".raw", ".zraw")):
                out.append(p)
    return out


def discover_bids(
    root: str | os.PathLike,
    *,
    modality_patterns: Mapping[str, str] | None = None,
    default_patterns: bool = True,
    modalities: Sequence[str] | None = None,
    session: str | None = None,
) -> Cohort:
    """Discover a BIDS(-like) dataset. With several sessions per subject, each subject-session is one row
    (``sub-01_ses-pre``) unless ``session`` selects one."""
    root = Path(root)
    col = _Collector("bids", root)
    def sessions_of(sdir: Path) -> list[Path]:
        found = sorted(p for p in sdir.glob("ses-*") if p.is_dir())
        if session is not None:
            found = [p for p in found if p.name in (f"ses-{session}", session)]
        return found

    subject_dirs = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if session is not None:
        subject_dirs = [d for d in subject_dirs if sessions_of(d)]
    multi = any(len(sessions_of(d)) > 1 for d in subject_dirs)
    for sdir in subject_dirs:
        sessions = sessions_of(sdir)
        groups = [(f"{sdir.name}_{p.name}" if multi else sdir.name, p) for p in sessions] or [(sdir.name, sdir)]
        for sid, folder in groups:
            if not col.accepts(sid, where=f"folder {folder.name}: "):
                continue
            col.add_subject(sid)
            for path in _iter_images(folder):
                rel = path.relative_to(root).as_posix()
                match = _user_match(modality_patterns, path.name, rel)
                if match is None and default_patterns:
                    match = _bids_match(strip_image_suffix(path.name))
                if match == "skip":
                    continue
                if match is None:
                    col.unmatched.append(path)
                    continue
                col.add(sid, match[0], path, match[1])
    covariates = {}
    tsv = root / "participants.tsv"
    if tsv.exists():
        covariates, cov_issues = read_covariates(tsv, id_column="participant_id")
        col.issues += cov_issues
        if multi:
            covariates = {s: covariates.get(s.split("_ses-")[0], {}) for s in col.subjects}
    return col.cohort(modalities, covariates)


def discover_folders(
    root: str | os.PathLike,
    *,
    modality_patterns: Mapping[str, str] | None = None,
    default_patterns: bool = True,
    modalities: Sequence[str] | None = None,
) -> Cohort:
    """Discover a folder-per-subject layout (every non-hidden sub-folder of ``root`` is a subject)."""
    root = Path(root)
    col = _Collector("folders", root)
    subject_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "derivatives")
    for sdir in subject_dirs:
        images = _iter_images(sdir)
        if not images:
            col.issues.append(Issue("info", f"folder {sdir.name} holds no image file; not a subject", path=str(sdir)))
            continue
        if not col.accepts(sdir.name, where=f"folder {sdir.name}: "):
            continue
        col.add_subject(sdir.name)
        for path in images:
            rel = path.relative_to(root).as_posix()
            match = _user_match(modality_patterns, path.name, rel)
            if match is None and default_patterns:
                match = _folder_match(strip_image_suffix(path.name))
            if match == "skip":
                continue
            if match is None:
                col.unmatched.append(path)
                continue
            col.add(sdir.name, match[0], path, match[1])
    covariates = {}
    tsv = root / "participants.tsv"
    if tsv.exists():
        covariates, cov_issues = read_covariates(tsv)
        col.issues += cov_issues
    return col.cohort(modalities, covariates)


def read_manifest(
    path: str | os.PathLike,
    *,
    modalities: Sequence[str] | None = None,
    covariates: str | os.PathLike | None = None,
) -> Cohort:
    """Read a manifest CSV: ``subject, modality, path[, observation_mask]`` (header row required).

    Relative paths are resolved against the CSV's folder. A row with an empty ``path`` declares the
    modality missing for that subject. A path that does not exist is reported (the subject keeps its other
    modalities). Covariates come from ``covariates`` or a ``participants.tsv`` beside the CSV.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"Manifest {path} does not exist. Fix: check the path.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CohortError(f"Manifest {path} cannot be read as UTF-8 text ({exc}). Fix: save it as a UTF-8 CSV.") from None
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    missing = [c for c in ("subject", "modality", "path") if c not in fields]
    if missing:
        raise CohortError(
            f"Manifest {path} lacks column(s) {missing}; it has {reader.fieldnames}. "
            "Fix: the first row must name the columns subject,modality,path[,observation_mask]."
        )
    base = path.parent
    col = _Collector("manifest", base)
    declared: list[str] = []
    unknown = [f for f in fields if f not in ("subject", "modality", "path", "observation_mask")]
    if unknown:
        col.issues.append(Issue("info", f"manifest columns {unknown} are ignored", path=str(path)))
    absent: dict[str, list[Issue]] = {}  # modality -> its rows naming files that do not exist
    for line_no, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        subject, modality = row.get("subject", ""), row.get("modality", "")
        if not subject or not modality:
            col.issues.append(Issue("warning", f"manifest line {line_no} has no subject or modality; skipped",
                                    path=str(path), fix="fill in both columns"))
            continue
        if not col.accepts(subject, modality, where=f"manifest line {line_no}: "):
            continue
        col.add_subject(subject)
        if modality not in declared:
            declared.append(modality)
        if not row.get("path"):
            continue
        file = Path(row["path"]).expanduser()
        file = file if file.is_absolute() else base / file
        if not (is_image_path(file) or file.is_dir() or has_dicom_preamble(file)):
            col.issues.append(Issue("error", f"manifest line {line_no}: {row['path']} is not an image file type; not "
                                    f"opened, {modality} is treated as missing", subject=subject, modality=modality,
                                    path=str(file), fix="point the row at a NIfTI, NRRD, MetaImage file or a DICOM "
                                    "series folder"))
            continue
        if not file.exists():
            absent.setdefault(modality, []).append(Issue(
                "error", f"manifest line {line_no}: file {file} does not exist; {modality} is treated as missing",
                subject=subject, modality=modality, path=str(file),
                fix="correct the path in the manifest (relative paths start at the CSV's folder)"))
            continue
        col.add(subject, modality, file, False)
        if row.get("observation_mask"):
            mask = Path(row["observation_mask"]).expanduser()
            mask = mask if mask.is_absolute() else base / mask
            if not mask.exists():
                col.issues.append(Issue("warning", f"manifest line {line_no}: observation mask {mask} does not exist; "
                                        "the non-zero region is used instead", subject=subject, modality=modality,
                                        path=str(mask), fix="correct the observation_mask path"))
            else:
                col.add(subject, modality, mask, True)
    col.issues += _absent_file_issues(absent, {m for _, m in col.images}, path)
    if not col.subjects:
        raise CohortError(f"Manifest {path} has no data rows. Fix: add one row per subject and modality.")
    cov: dict[str, dict[str, str]] = {}
    cov_path = Path(covariates) if covariates is not None else base / "participants.tsv"
    if cov_path.exists():
        cov, cov_issues = read_covariates(cov_path)
        col.issues += cov_issues
    requested = modalities if modalities is not None else _order_modalities(declared, None)
    return col.cohort(requested, cov)


def _absent_file_issues(absent: Mapping[str, list[Issue]], found: set[str], manifest: Path) -> list[Issue]:
    """One issue per missing file, except for a modality none of whose files exists: one issue says so."""
    issues: list[Issue] = []
    for modality, rows in absent.items():
        if modality in found or len(rows) == 1:
            issues += rows
            continue
        issues.append(Issue(
            "error", f"none of the {len(rows)} {modality} files the manifest names exists (e.g. {rows[0].path})",
            modality=modality, path=str(manifest), fix=f"correct the {modality} paths in the manifest (relative paths "
            "start at the CSV's folder), or remove its rows"))
    return issues


def read_covariates(path: str | os.PathLike, id_column: str | None = None) -> tuple[dict[str, dict[str, str]], list[Issue]]:
    """Read a participants table (TSV, or CSV by extension): subject id -> column -> raw string.

    The id column is ``id_column``, else ``participant_id``, else ``subject``, else the first column.
    """
    path = Path(path)
    issues: list[Issue] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [Issue("warning", f"covariates file cannot be read ({exc}); no labels", path=str(path),
                          fix="save it as UTF-8 text")]
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not rows:
        return {}, issues
    columns = list(rows[0].keys())
    idcol = next((c for c in (id_column, "participant_id", "subject") if c and c in columns), columns[0])
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        sid = (row.get(idcol) or "").strip()
        if not sid:
            continue
        out[sid] = {k: (v or "").strip() for k, v in row.items() if k and k != idcol}
    return out, issues


def discover_cohort(
    source: str | os.PathLike,
    *,
    layout: Literal["auto", "bids", "folders", "manifest"] = "auto",
    modality_patterns: Mapping[str, str] | None = None,
    default_patterns: bool = True,
    modalities: Sequence[str] | None = None,
    session: str | None = None,
) -> Cohort:
    """Find the subjects, modalities and files of a cohort.

    ``layout="auto"``: a ``.csv`` file or a folder with ``manifest.csv`` -> manifest; a folder with
    ``sub-*`` folders -> BIDS; any other folder -> folder-per-subject. ``modalities`` restricts and orders
    the modalities (a listed modality with no file is kept, with a warning).
    """
    source = Path(source)
    if not source.exists():
        raise CohortError(f"{source} does not exist. Fix: check the path.")
    if layout == "auto":
        if source.is_file():
            if source.suffix.lower() in (".csv", ".tsv"):
                layout = "manifest"
            else:
                raise CohortError(f"{source} is a file but not a manifest CSV. Fix: pass the cohort folder or a .csv manifest.")
        elif (source / "manifest.csv").is_file():
            layout, source = "manifest", source / "manifest.csv"
        elif any(p.is_dir() for p in source.glob("sub-*")):
            layout = "bids"
        else:
            layout = "folders"
    if layout == "manifest":
        return read_manifest(source if source.is_file() else source / "manifest.csv", modalities=modalities)
    if not source.is_dir():
        raise CohortError(f"{source} is not a folder. Fix: pass the cohort's root folder.")
    if not any(source.iterdir()):
        raise CohortError(f"{source} is empty. Fix: point to the folder that holds the subjects' images.")
    if layout == "bids":
        return discover_bids(source, modality_patterns=modality_patterns, default_patterns=default_patterns,
                             modalities=modalities, session=session)
    return discover_folders(source, modality_patterns=modality_patterns, default_patterns=default_patterns,
                            modalities=modalities)
