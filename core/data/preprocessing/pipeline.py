"""The preprocessing pipeline: from source files to model-ready arrays, recording everything needed to go back.

For each subject (:func:`preprocess_subject`):

1. The **reference grid** is the grid of the reference modality (``reference_modality``, default the first
   modality; a subject lacking it uses its first present modality, with a warning), relabelled to the
   closest canonical RAS orientation (axes permuted/flipped, no interpolation), optionally resampled to
   ``target_spacing`` (same centre and extent) and centre-cropped or padded to ``target_shape``.
2. Every modality is **resampled once** from its source file onto that grid: linear for intensities
   (Gaussian anti-aliasing first when downsampling), nearest neighbour for masks. Where the grid maps
   to whole voxels of the source (the reference itself without ``target_spacing``) values are copied
   exactly.
3. A **per-voxel observation mask** marks what was really observed: inside the source field of view
   (``outside_fov_unobserved``), finite, and for ultrasound inside the sector (the manifest's
   observation mask file if given, else the non-zero region of the volume for modalities in
   ``observation_mask_from_nonzero``). Unobserved voxels hold 0.
4. **Intensity normalisation** per modality: clip to percentiles of the values inside a region
   (foreground = non-zero or Otsu, the field of view, or everything observed), then z-score or min-max
   with statistics from that region. Values outside the region are set to 0 (``outside_region="zero"``).

The :class:`SubjectRecord` of each subject keeps each file's source geometry, the model grid, and the
normalisation parameters, so :mod:`~core.data.preprocessing.source_space` can put a model output back
on any source grid in source units (percentile clipping is not invertible: values beyond the clip limits
come back at the limits).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.data.cohort import Cohort, FileEntry
from core.data.errors import ImagingError, Issue
from core.data.geometry import Geometry
from core.data.preprocessing.config import PreprocessingConfig, PreprocessingError
from core.data.preprocessing.normalization import EmptyRegionError, normalize
from core.data.preprocessing.records import ModalityRecord, SubjectRecord
from core.data.preprocessing.resampling import plan_grid, resample, resampling_record
from core.data.readers import HeaderInfo, Volume, read_header, read_volume
from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress

__all__ = ["PreprocessedSubject", "PreprocessingPlan", "preprocess_subject", "plan_preprocessing", "preprocess_cohort"]


# --------------------------------------------------------------------------------------------------------
# Per subject
# --------------------------------------------------------------------------------------------------------


@dataclass
class PreprocessedSubject:
    subject: str
    data: dict[str, np.ndarray]  # modality -> (X, Y, Z) float32, only present modalities
    observation: dict[str, np.ndarray]  # modality -> (X, Y, Z) bool, only where not all True
    record: SubjectRecord


def _volume_issue(vol: Volume, subject: str, modality: str) -> list[Issue]:
    suffix = f"; {modality} is treated as missing for this subject"
    return [Issue(i.level, i.message + (suffix if i.level == "error" else ""), subject, modality, i.path, i.fix)
            for i in vol.issues]


def preprocess_subject(
    subject: str,
    entries: Mapping[str, FileEntry],
    config: PreprocessingConfig,
    *,
    modalities: Sequence[str] | None = None,
    target_shape: tuple[int, int, int] | None = None,
) -> PreprocessedSubject:
    """Load and preprocess one subject's files (see the module docstring).

    A file that cannot be used (unreadable, NaN everywhere, constant, outside the reference grid) makes
    that modality missing for this subject, with an error-level issue in the record naming the file; the
    other modalities still load. Raises :class:`PreprocessingError` only if no modality is usable.
    """
    order = list(modalities or entries)
    issues: list[Issue] = []
    volumes: dict[str, Volume] = {}
    failed: set[str] = set()

    def load(m: str) -> Volume | None:
        vol = _load(m)
        if vol is None:
            failed.add(m)
        return vol

    def _load(m: str) -> Volume | None:
        e = entries[m]
        try:
            vol = read_volume(e.path)
        except ImagingError as exc:
            issues.append(exc.to_issue(subject, m, suffix=f"; {m} is treated as missing for this subject"))
            return None
        issues.extend(_volume_issue(vol, subject, m))
        if vol.meta.get("n_nonfinite", 0) == vol.array.size:
            return None
        finite = vol.array[np.isfinite(vol.array)]
        if float(finite.max()) == float(finite.min()):
            issues.append(Issue("error", f"the volume is constant ({float(finite.min()):g}); {m} is treated as missing for this subject",
                                subject, m, str(e.path), "re-export it or remove it from the cohort"))
            return None
        return vol

    candidates = [m for m in order if m in entries]
    wanted_ref = config.reference_modality or (order[0] if order else None)
    if wanted_ref in candidates:
        candidates.remove(wanted_ref)
        candidates.insert(0, wanted_ref)
    ref_mod, ref_vol = None, None
    for m in candidates:
        ref_vol = load(m)
        if ref_vol is not None:
            ref_mod = m
            volumes[m] = ref_vol
            break
    if ref_vol is None or ref_mod is None:
        raise PreprocessingError(
            f"Subject {subject}: no usable image ({'; '.join(i.message for i in issues if i.level == 'error') or 'no files'}).",
            issues,
        )
    if ref_mod != wanted_ref:
        issues.append(Issue("warning", f"the reference modality {wanted_ref} is missing or unusable; the grid of "
                            f"{ref_mod} is used instead", subject, ref_mod, str(entries[ref_mod].path),
                            "nothing to do unless the grids of the two differ a lot"))
    grid = plan_grid(ref_vol.geometry, config, target_shape)
    record = SubjectRecord(subject, ref_mod, grid, {}, issues)
    data: dict[str, np.ndarray] = {}
    observation: dict[str, np.ndarray] = {}
    for m in [x for x in order if x in entries and x not in failed]:
        vol = volumes.get(m) or load(m)
        if vol is None:
            continue
        out = _process_modality(subject, m, vol, entries[m], grid, config, issues)
        if out is None:
            continue
        values, observed, mrec = out
        data[m] = values
        if not observed.all():
            observation[m] = observed
        record.modalities[m] = mrec
    if not data:
        raise PreprocessingError(f"Subject {subject}: no modality could be preprocessed.", issues)
    return PreprocessedSubject(subject, data, observation, record)


def _process_modality(
    subject: str, m: str, vol: Volume, entry: FileEntry, grid: Geometry, config: PreprocessingConfig, issues: list[Issue],
) -> tuple[np.ndarray, np.ndarray, ModalityRecord] | None:
    src = vol.array
    finite = np.isfinite(src)
    has_nonfinite = not finite.all()
    if has_nonfinite:
        src = np.where(finite, src, 0.0).astype(np.float32)
    values, inside = resample(src, vol.geometry, grid, order=1, antialias=config.antialias)
    how_resampled, sigma = resampling_record(vol.geometry, grid, config.antialias)
    coverage = float(inside.mean())
    if coverage == 0.0:
        issues.append(Issue("error", f"{m} does not overlap the reference grid at all; treated as missing", subject, m,
                            str(entry.path), "check its affine (qform/sform, LPS flip) or its registration"))
        return None
    if coverage < config.min_overlap:
        issues.append(Issue("warning", f"{m} covers only {100 * coverage:.1f}% of the reference grid", subject, m,
                            str(entry.path), "check the registration, or choose another reference modality"))
    observed = inside.copy() if config.outside_fov_unobserved else np.ones(grid.shape, dtype=bool)
    if has_nonfinite:
        bad, _ = resample((~finite).astype(np.float32), vol.geometry, grid, order=0)
        observed &= bad < 0.5
    how = "fov" if config.outside_fov_unobserved else "none"
    mask_path = None
    if entry.observation_mask is not None:
        try:
            mvol = read_volume(entry.observation_mask)
            sector, mins = resample((np.nan_to_num(mvol.array) > 0).astype(np.float32), mvol.geometry, grid, order=0)
            observed &= (sector > 0.5) & mins
            how, mask_path = "file", str(entry.observation_mask)
        except ImagingError as exc:
            issues.append(Issue("warning", f"observation mask unusable ({exc}); the non-zero region is used instead",
                                subject, m, str(entry.observation_mask), "fix or remove the mask file"))
            entry = FileEntry(entry.subject, entry.modality, entry.path, None)
    if entry.observation_mask is None and m in config.observation_mask_from_nonzero:
        sector, _ = resample((src != 0).astype(np.float32), vol.geometry, grid, order=0)
        observed &= sector > 0.5
        how = "nonzero"
    if not observed.any():
        issues.append(Issue("error", f"no observed voxel of {m} falls on the reference grid; treated as missing",
                            subject, m, str(entry.path), "check the observation mask and the affines"))
        return None
    values[~observed] = 0.0
    try:
        values, params = normalize(values, observed, config.normalization_for(m))
    except EmptyRegionError as exc:
        issues.append(Issue("error", f"cannot normalise {m}: {exc}; treated as missing", subject, m, str(entry.path),
                            "check the volume, or choose normalization region 'all' / method 'none' for this modality"))
        return None
    values[~observed] = 0.0
    rec = ModalityRecord(
        modality=m, path=str(entry.path), source_geometry=vol.geometry, format=vol.meta.get("format", "nifti"),
        observation_mask_path=mask_path, observation=how, normalization=params,
        resampling=how_resampled, antialias_sigma=sigma,
        observed_fraction=float(observed.mean()), qform_code=vol.meta.get("qform_code"),
        sform_code=vol.meta.get("sform_code"), xyzt_units=vol.meta.get("xyzt_units"),
    )
    return values, observed, rec


# --------------------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------------------


@dataclass
class PreprocessingPlan:
    """Decisions made before any voxel is read: modalities, reference, grid shape."""

    modalities: list[str]
    reference_modality: str
    target_shape: tuple[int, int, int]
    subjects: list[str]
    issues: list[Issue]


def _reference_header(cohort: Cohort, subject: str, ref: str, order: Sequence[str]) -> HeaderInfo | None:
    for m in [ref] + [x for x in order if x != ref]:
        e = cohort.entry(subject, m)
        if e is None:
            continue
        try:
            h = read_header(e.path)
        except ImagingError:
            continue
        if not any(i.level == "error" for i in h.issues):
            return h
    return None


def _modality_of(cohort: Cohort, subject: str, header: HeaderInfo) -> str | None:
    return next((m for m, e in cohort.subject_entries(subject).items() if e.path == header.path), None)


def plan_preprocessing(cohort: Cohort, config: PreprocessingConfig) -> PreprocessingPlan:
    """Resolve modalities, the reference modality and the target shape from headers only."""
    issues: list[Issue] = []
    counts = cohort.counts()
    if config.modalities is not None:
        modalities = list(dict.fromkeys(config.modalities))
        unknown = [m for m in modalities if counts.get(m, 0) == 0]
        for m in unknown:
            issues.append(Issue("warning", f"modality {m} is present for no subject; it is kept (all missing) "
                                "so that it can be imputed", modality=m,
                                fix="remove it from the modalities if it was a typo"))
    else:
        modalities = [m for m in cohort.modalities if counts.get(m, 0) > 0]
        for m in cohort.modalities:
            if counts.get(m, 0) == 0:
                issues.append(Issue("warning", f"modality {m} is present for no subject; it is dropped", modality=m,
                                    fix="check the file patterns or the manifest, or list it in modalities to keep it"))
    if not modalities:
        raise PreprocessingError("No modality is present for any subject. Fix: check the cohort (cohort_report).")
    ref = config.reference_modality or modalities[0]
    if ref not in modalities:
        raise PreprocessingError(
            f"reference_modality {ref!r} is not one of the modalities {modalities}. Fix: choose one of them."
        )
    subjects = [s for s in cohort.subjects if any(cohort.entry(s, m) for m in modalities)]
    ref_headers = {s: h for s in subjects if (h := _reference_header(cohort, s, ref, modalities)) is not None}
    if config.target_spacing is None and len(ref_headers) >= 2:
        spacings = {s: np.asarray(h.geometry.canonical().spacing) for s, h in ref_headers.items()}
        median = np.median(np.stack(list(spacings.values())), axis=0)
        for s, sp in spacings.items():
            rel = float((np.abs(sp - median) / median).max())
            if rel > config.spacing_tolerance:
                issues.append(Issue(
                    "warning", f"reference grid spacing {tuple(round(float(v), 3) for v in sp)} mm differs from the "
                    f"cohort median {tuple(round(float(v), 3) for v in median)} mm by {100 * rel:.0f}%, so its voxels "
                    "cover a different physical size", s, _modality_of(cohort, s, ref_headers[s]), str(ref_headers[s].path),
                    "set target_spacing so that every subject is resampled to one voxel size"))
    if config.target_shape is not None:
        shape = tuple(config.target_shape)
    else:
        shapes: Counter[tuple[int, int, int]] = Counter()
        for h in ref_headers.values():
            grid = h.geometry.canonical()
            if config.target_spacing is not None:
                grid = grid.with_spacing(config.target_spacing)
            shapes[grid.shape] += 1
        if not shapes:
            raise PreprocessingError("No subject has a readable image. Fix: run cohort_report to see why.")
        shape = shapes.most_common(1)[0][0]
        if len(shapes) > 1:
            issues.append(Issue(
                "warning", f"reference grids have {len(shapes)} different shapes {sorted(shapes)}; all are centre-"
                f"cropped/padded to the most common one {shape}",
                fix="set target_shape (and target_spacing) explicitly to choose the grid"))
    return PreprocessingPlan(modalities, ref, shape, subjects, issues)  # type: ignore[arg-type]


def preprocess_cohort(
    cohort: Cohort,
    config: PreprocessingConfig,
    plan: PreprocessingPlan | None = None,
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Iterator[PreprocessedSubject | SubjectRecord]:
    """Yield each subject preprocessed, in order; a subject with no usable file yields only its
    :class:`SubjectRecord` (grid None, issues saying why). ``cancel`` is polled between subjects."""
    plan = plan or plan_preprocessing(cohort, config)
    cfg = config.model_copy(update={"reference_modality": plan.reference_modality})
    n = len(plan.subjects)
    for k, s in enumerate(plan.subjects):
        raise_if_cancelled(cancel, "preprocessing")
        entries = {m: e for m in plan.modalities if (e := cohort.entry(s, m)) is not None}
        try:
            yield preprocess_subject(s, entries, cfg, modalities=plan.modalities, target_shape=plan.target_shape)
        except PreprocessingError as exc:
            yield SubjectRecord(s, None, None, {}, [*exc.issues, Issue(
                "error", f"subject {s} is left out: no usable image", s, fix="fix its files (see the other issues) or remove it")])
        report_progress(progress, k + 1, n, s)
