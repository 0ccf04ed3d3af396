"""What preprocessing is told: :class:`PreprocessingConfig` (one grid for all modalities of a subject) and
:class:`NormalizationConfig` (how one modality's intensities are normalised), and the error raised when they
do not fit the cohort."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.data.errors import ImagingError, Issue

__all__ = ["PreprocessingError", "NormalizationConfig", "PreprocessingConfig"]


class PreprocessingError(ImagingError):
    """The preprocessing configuration does not fit the cohort, or a subject has no usable file.

    ``issues`` holds the per-file problems that led to it, when there are any."""

    def __init__(self, message: str, issues: Sequence[Issue] = ()) -> None:
        super().__init__(message)
        self.issues = list(issues)


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
