"""From source files to model-ready arrays, recording everything needed to go back.

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
normalisation parameters, so :func:`to_source_space` and :func:`denormalize` can put a model output back
on any source grid in source units (percentile clipping is not invertible: values beyond the clip limits
come back at the limits).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import ndimage

from core.data.cohort import Cohort, FileEntry
from core.data.errors import ImagingError, Issue
from core.data.geometry import Geometry
from core.data.readers import HeaderInfo, Volume, read_header, read_volume
from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress

__all__ = [
    "PreprocessingError",
    "NormalizationConfig",
    "PreprocessingConfig",
    "NormalizationParams",
    "ModalityRecord",
    "SubjectRecord",
    "CohortRecords",
    "PreprocessedSubject",
    "PreprocessingPlan",
    "resample",
    "plan_grid",
    "plan_preprocessing",
    "preprocess_subject",
    "preprocess_cohort",
    "to_source_space",
    "denormalize",
    "otsu_threshold",
]


class PreprocessingError(ImagingError):
    """The preprocessing configuration does not fit the cohort, or a subject has no usable file.

    ``issues`` holds the per-file problems that led to it, when there are any."""

    def __init__(self, message: str, issues: Sequence[Issue] = ()) -> None:
        super().__init__(message)
        self.issues = list(issues)


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------


class NormalizationConfig(BaseModel):
    """How one modality's intensities are normalised."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["zscore", "minmax", "none"] = Field(
        "zscore", title="Method",
        description="z-score (mean 0, std 1) or min-max to [0, 1] inside the region; none keeps source units.")
    percentiles: tuple[float, float] | None = Field(
        (0.5, 99.5), title="Clip percentiles",
        description="Clip to these percentiles of the in-region values first; None disables clipping.")
    region: Literal["foreground", "fov", "all"] = Field(
        "foreground", title="Statistics region",
        description="Voxels the statistics come from: the foreground, the observed field of view, or every observed voxel.")
    foreground: Literal["nonzero", "otsu"] = Field(
        "nonzero", title="Foreground", description="How the foreground is found: non-zero voxels (skull-stripped MR) or an Otsu threshold.")
    outside_region: Literal["zero", "keep"] = Field(
        "zero", title="Outside the region",
        description="Set voxels outside the region to 0 (BraTS style), or normalise them like the rest.")

    @field_validator("percentiles")
    @classmethod
    def _check_percentiles(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (0.0 <= v[0] < v[1] <= 100.0):
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100; got {v}")
        return v


def _default_modality_normalization() -> dict[str, NormalizationConfig]:
    return {"US": NormalizationConfig(method="minmax", region="fov")}


class PreprocessingConfig(BaseModel):
    """How a cohort becomes model-ready arrays (all modalities of a subject on one grid)."""

    model_config = ConfigDict(extra="forbid")

    modalities: list[str] | None = Field(
        None, title="Modalities",
        description="Modalities to load, in order (default: all found). A listed modality present for no subject is kept (for imputation).")
    reference_modality: str | None = Field(
        None, title="Reference modality", description="Whose grid every modality is resampled onto (default: the first modality).")
    orientation: Literal["RAS"] = Field("RAS", title="Orientation", description="Canonical orientation of the model grid.")
    target_spacing: tuple[float, float, float] | None = Field(
        None, title="Target spacing (mm)", description="Resample the reference grid to this voxel size; None keeps the reference spacing.")
    target_shape: tuple[int, int, int] | None = Field(
        None, title="Target shape", description="Centre-crop or pad to this shape; None uses the most common reference shape.")
    antialias: bool = Field(True, title="Anti-aliasing", description="Gaussian smoothing before downsampling intensities.")
    normalization: NormalizationConfig = Field(
        default_factory=NormalizationConfig, title="Normalisation", description="Default intensity normalisation.")
    modality_normalization: dict[str, NormalizationConfig] = Field(
        default_factory=_default_modality_normalization, title="Per-modality normalisation",
        description="Overrides by modality name (default: US min-max inside its field of view).")
    observation_mask_from_nonzero: list[str] = Field(
        default_factory=lambda: ["US"], title="Observation mask from non-zero region",
        description="Modalities whose observed region is their non-zero voxels when no observation mask file is given (the US sector).")
    outside_fov_unobserved: bool = Field(
        True, title="Outside field of view is unobserved",
        description="Voxels of the grid outside a source file's field of view are marked unobserved.")
    spacing_tolerance: float = Field(
        0.1, ge=0.0, title="Spacing tolerance", description="Relative spacing difference from the modality median that is reported.")
    min_overlap: float = Field(
        0.05, ge=0.0, le=1.0, title="Minimum overlap",
        description="A modality covering less than this fraction of the grid is reported (0 overlap: treated as missing).")

    @field_validator("target_spacing")
    @classmethod
    def _positive_spacing(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"target_spacing must be positive; got {v}")
        return v

    @field_validator("target_shape")
    @classmethod
    def _positive_shape(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and any(s < 1 for s in v):
            raise ValueError(f"target_shape must be positive; got {v}")
        return v

    def normalization_for(self, modality: str) -> NormalizationConfig:
        return self.modality_normalization.get(modality, self.normalization)


# --------------------------------------------------------------------------------------------------------
# Records (JSON round-trippable)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalizationParams:
    """``normalised = (clip(x, clip_low, clip_high) - shift) / scale``, computed over ``region``."""

    method: str
    shift: float = 0.0
    scale: float = 1.0
    clip_low: float | None = None
    clip_high: float | None = None
    region: str = "all"
    outside_region: str = "keep"
    n_region_voxels: int = 0

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.clip_low is not None or self.clip_high is not None:
            x = np.clip(x, self.clip_low, self.clip_high)
        return ((x - self.shift) / self.scale).astype(np.float32)

    def invert(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) * self.scale + self.shift).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NormalizationParams:
        return cls(**d)


@dataclass
class ModalityRecord:
    """What happened to one source file of one subject."""

    modality: str
    path: str
    source_geometry: Geometry
    format: str = "nifti"
    observation_mask_path: str | None = None
    observation: str = "none"  # 'file', 'nonzero', 'fov' or 'none'
    normalization: NormalizationParams | None = None
    resampling: str = "exact"  # 'exact' (voxel copy) or 'linear'
    antialias_sigma: tuple[float, float, float] | None = None
    observed_fraction: float = 1.0
    qform_code: int | None = None
    sform_code: int | None = None
    xyzt_units: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["source_geometry"] = self.source_geometry.to_dict()
        d["normalization"] = self.normalization.to_dict() if self.normalization else None
        d["antialias_sigma"] = list(self.antialias_sigma) if self.antialias_sigma else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModalityRecord:
        d = dict(d)
        d["source_geometry"] = Geometry.from_dict(d["source_geometry"])
        d["normalization"] = NormalizationParams.from_dict(d["normalization"]) if d.get("normalization") else None
        d["antialias_sigma"] = tuple(d["antialias_sigma"]) if d.get("antialias_sigma") else None
        return cls(**d)


@dataclass
class SubjectRecord:
    """Everything needed to map a subject's model-space arrays back onto its source files."""

    subject: str
    reference_modality: str | None
    grid: Geometry | None
    modalities: dict[str, ModalityRecord] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    @property
    def present(self) -> list[str]:
        return list(self.modalities)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "reference_modality": self.reference_modality,
            "grid": self.grid.to_dict() if self.grid else None,
            "modalities": {m: r.to_dict() for m, r in self.modalities.items()},
            "issues": [i.to_dict() for i in self.issues],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubjectRecord:
        return cls(
            subject=d["subject"],
            reference_modality=d.get("reference_modality"),
            grid=Geometry.from_dict(d["grid"]) if d.get("grid") else None,
            modalities={m: ModalityRecord.from_dict(r) for m, r in d.get("modalities", {}).items()},
            issues=[Issue.from_dict(i) for i in d.get("issues", [])],
        )


class CohortRecords(dict):
    """subject id -> :class:`SubjectRecord`, plus the cohort-level facts: ``config``, ``modalities``,
    ``issues`` (cohort-level and per-subject, flattened), ``label_categories``."""

    def __init__(
        self,
        records: Mapping[str, SubjectRecord] | None = None,
        *,
        config: PreprocessingConfig | None = None,
        modalities: Sequence[str] = (),
        issues: Sequence[Issue] = (),
        label_categories: Mapping[str, list[str]] | None = None,
        grid_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(records or {})
        self.config = config or PreprocessingConfig()
        self.modalities = list(modalities)
        self.issues = list(issues)
        self.label_categories = dict(label_categories or {})
        self.grid_shape = tuple(grid_shape) if grid_shape else None

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level != "info"]

    def intensity_reference(self, modality: str) -> NormalizationParams | None:
        """Cohort-typical normalisation of ``modality`` (median shift and scale over subjects that have it),
        to put a synthesized volume of a modality the subject lacks into plausible source units."""
        params = [r.modalities[modality].normalization for r in self.values()
                  if modality in r.modalities and r.modalities[modality].normalization is not None]
        if not params:
            return None
        return NormalizationParams(
            method=params[0].method,
            shift=float(np.median([p.shift for p in params])),
            scale=float(np.median([p.scale for p in params])),
            clip_low=None, clip_high=None, region=params[0].region, outside_region=params[0].outside_region,
            n_region_voxels=0,
        )

    def to_json(self) -> str:
        return json.dumps({
            "config": self.config.model_dump(mode="json"),
            "modalities": self.modalities,
            "issues": [i.to_dict() for i in self.issues],
            "label_categories": self.label_categories,
            "grid_shape": list(self.grid_shape) if self.grid_shape else None,
            "subjects": {s: r.to_dict() for s, r in self.items()},
        })

    @classmethod
    def from_json(cls, text: str) -> CohortRecords:
        d = json.loads(text)
        return cls(
            {s: SubjectRecord.from_dict(r) for s, r in d["subjects"].items()},
            config=PreprocessingConfig.model_validate(d["config"]),
            modalities=d["modalities"],
            issues=[Issue.from_dict(i) for i in d["issues"]],
            label_categories=d.get("label_categories"),
            grid_shape=d.get("grid_shape"),
        )


# --------------------------------------------------------------------------------------------------------
# Resampling (pure numpy/scipy: geometry only, no file IO)
# --------------------------------------------------------------------------------------------------------


def _index_map(m: np.ndarray, atol: float = 1e-5) -> list[tuple[int, int, int]] | None:
    """If target voxels land exactly on source voxels: per target axis (source axis, sign, offset)."""
    out = []
    for t in range(3):
        col = m[:3, t]
        s = int(np.argmax(np.abs(col)))
        if abs(abs(col[s]) - 1.0) > atol or np.abs(np.delete(col, s)).max() > atol:
            return None
        offset = m[s, 3]
        if abs(offset - round(offset)) > 1e-3:
            return None
        out.append((s, int(round(col[s])), int(round(offset))))
    if sorted(o[0] for o in out) != [0, 1, 2]:
        return None
    return out


def _antialias_sigma(m: np.ndarray) -> np.ndarray:
    factors = np.abs(m[:3, :3]).max(axis=1)  # source voxels per target voxel, along each source axis
    return np.where(factors > 1.01, np.sqrt(np.maximum(factors**2 - 1.0, 0.0)) / 2.0, 0.0)


def resample(
    array: np.ndarray,
    source: Geometry,
    target: Geometry,
    *,
    order: Literal[0, 1] = 1,
    antialias: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``array`` (on ``source``) onto ``target`` in world space.

    Returns ``(values, inside)``: float32 values on the target grid (0 outside the source field of view)
    and a bool mask of the target voxels whose centre falls inside the source field of view (within half a
    voxel of the outermost source voxel centres, as ITK does). ``order`` 1 is linear (intensities), 0
    nearest neighbour (masks, labels). With ``antialias`` and a lower target resolution, the source is
    smoothed with a Gaussian of sigma sqrt(f^2 - 1)/2 voxels (f = downsampling factor) first.

    It agrees with ``SimpleITK.Resample(..., sitkLinear)`` inside the field of view, and with
    ``nibabel.processing.resample_from_to(order=1)`` away from its edges (both are checked in the tests).
    """
    array = np.asarray(array)
    if array.shape != source.shape:
        raise ValueError(f"array shape {array.shape} != source geometry shape {source.shape}")
    m = np.linalg.solve(source.affine, target.affine)  # target voxel -> source voxel
    exact = _index_map(m)
    if exact is not None:
        perm = [s for s, _, _ in exact]
        src = array.transpose(perm)
        idx, valid = [], []
        for t, (s, sign, off) in enumerate(exact):
            i = sign * np.arange(target.shape[t]) + off
            ok = (i >= 0) & (i < source.shape[s])
            idx.append(i[ok])
            valid.append(ok)
        values = np.zeros(target.shape, dtype=np.float32)
        values[np.ix_(*valid)] = src[np.ix_(*idx)]
        inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
        return values, inside
    inside = np.ones(target.shape, dtype=bool)
    grids = [np.arange(n, dtype=np.float64) for n in target.shape]
    for s in range(3):
        c = (m[s, 0] * grids[0])[:, None, None] + (m[s, 1] * grids[1])[None, :, None] + (m[s, 2] * grids[2])[None, None, :] + m[s, 3]
        inside &= (c >= -0.5 - 1e-6) & (c <= source.shape[s] - 0.5 + 1e-6)
    src = np.asarray(array, dtype=np.float32)
    if antialias and order > 0:
        sigma = _antialias_sigma(m)
        if np.any(sigma > 0):
            src = ndimage.gaussian_filter(src, sigma=sigma, mode="nearest", truncate=3.0)
    values = ndimage.affine_transform(
        src, m[:3, :3], offset=m[:3, 3], output_shape=target.shape, order=order, mode="nearest",
        prefilter=False, output=np.float32,
    )
    values[~inside] = 0.0
    return values, inside


def plan_grid(reference: Geometry, config: PreprocessingConfig, target_shape: tuple[int, int, int] | None = None) -> Geometry:
    """The model grid of a subject: canonical RAS, optional target spacing, centred crop/pad."""
    grid = reference.canonical()
    if config.target_spacing is not None:
        grid = grid.with_spacing(config.target_spacing)
    shape = target_shape or config.target_shape
    if shape is not None and tuple(shape) != grid.shape:
        grid = grid.crop_or_pad(tuple(shape))
    return grid


# --------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def _normalize(values: np.ndarray, observed: np.ndarray, cfg: NormalizationConfig) -> tuple[np.ndarray, NormalizationParams]:
    if cfg.method == "none":
        return values, NormalizationParams("none", region="all", outside_region="keep", n_region_voxels=int(observed.sum()))
    if cfg.region == "foreground":
        if cfg.foreground == "otsu" and observed.any():
            region = observed & (values > otsu_threshold(values[observed]))
        else:
            region = observed & (values != 0)
    else:  # 'fov' and 'all' both mean every observed voxel; 'fov' documents the intent for US
        region = observed
    n = int(region.sum())
    if n < 2:
        raise _EmptyRegion(f"the normalisation region ({cfg.region}) holds {n} voxel(s)")
    inside = values[region]
    lo = hi = None
    if cfg.percentiles is not None:
        lo, hi = (float(v) for v in np.percentile(inside, cfg.percentiles))
        inside = np.clip(inside, lo, hi)
    if cfg.method == "zscore":
        shift, scale = float(inside.mean()), float(inside.std())
    else:
        shift, scale = float(inside.min()), float(inside.max() - inside.min())
    if not scale > 1e-12 * max(1.0, abs(shift)):
        raise _EmptyRegion(f"the intensities inside the normalisation region are constant ({shift:g})")
    params = NormalizationParams(cfg.method, shift, scale, lo, hi, cfg.region, cfg.outside_region, n)
    out = params.apply(values)
    if cfg.outside_region == "zero":
        out[~region] = 0.0
    return out, params


class _EmptyRegion(Exception):
    pass


def normalize_intensities(
    values: np.ndarray, observed: np.ndarray, config: NormalizationConfig
) -> tuple[np.ndarray, NormalizationParams]:
    """Normalise one volume as the pipeline does (for data built in memory, such as the demo cohort).

    ``observed`` marks the voxels that were measured (all True for MR, the sector for ultrasound).
    Raises :class:`PreprocessingError` when the region is empty or constant.
    """
    try:
        return _normalize(np.asarray(values, dtype=np.float32).copy(), np.asarray(observed, dtype=bool), config)
    except _EmptyRegion as error:
        raise PreprocessingError(f"Cannot normalise: {error}. Check that the volume is not empty or constant.") from None


def denormalize(array: Any, params: NormalizationParams | None, *, is_std: bool = False) -> np.ndarray:
    """Back to source intensity units (a standard deviation map is only scaled)."""
    array = np.asarray(array, dtype=np.float32)
    if params is None or params.method == "none":
        return array
    if is_std:
        return (array.astype(np.float64) * params.scale).astype(np.float32)
    return params.invert(array)


def to_source_space(
    array: Any,
    record: SubjectRecord,
    modality: str | None = None,
    *,
    order: Literal[0, 1] = 1,
) -> tuple[np.ndarray, Geometry, np.ndarray]:
    """Resample a model-grid array of ``record``'s subject onto the source grid of ``modality``'s file
    (default: the reference modality). Returns ``(array, source_geometry, inside)``; voxels of the source
    grid outside the model grid (cropped away) are 0 and ``False`` in ``inside``."""
    modality = modality or record.reference_modality
    if record.grid is None or modality is None:
        raise PreprocessingError(f"Subject {record.subject} has no preprocessed grid; nothing can be mapped back.")
    if modality not in record.modalities:
        raise PreprocessingError(
            f"Subject {record.subject} has no {modality} source file to take the grid from; "
            f"use one of {sorted(record.modalities)}."
        )
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.shape != record.grid.shape:
        raise PreprocessingError(
            f"Array shape {array.shape} does not match subject {record.subject}'s model grid {record.grid.shape}."
        )
    target = record.modalities[modality].source_geometry
    values, inside = resample(array, record.grid, target, order=order, antialias=False)
    return values, target, inside


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
    m_matrix = np.linalg.solve(vol.geometry.affine, grid.affine)
    exact = _index_map(m_matrix) is not None
    sigma = None if exact or not config.antialias else tuple(float(s) for s in _antialias_sigma(m_matrix))
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
        values, params = _normalize(values, observed, config.normalization_for(m))
    except _EmptyRegion as exc:
        issues.append(Issue("error", f"cannot normalise {m}: {exc}; treated as missing", subject, m, str(entry.path),
                            "check the volume, or choose normalization region 'all' / method 'none' for this modality"))
        return None
    values[~observed] = 0.0
    rec = ModalityRecord(
        modality=m, path=str(entry.path), source_geometry=vol.geometry, format=vol.meta.get("format", "nifti"),
        observation_mask_path=mask_path, observation=how, normalization=params,
        resampling="exact" if exact else "linear", antialias_sigma=sigma,
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
