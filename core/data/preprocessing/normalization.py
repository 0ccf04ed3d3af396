"""Intensity normalisation per modality: clip to percentiles of the values inside a region (foreground =
non-zero or Otsu, the field of view, or everything observed), then z-score or min-max with statistics from
that region; :class:`NormalizationParams` records what was done, so it can be undone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.data.preprocessing.config import NormalizationConfig, PreprocessingError

__all__ = ["NormalizationParams", "EmptyRegionError", "otsu_threshold", "normalize", "normalize_intensities"]


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


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


class EmptyRegionError(Exception):
    """The region the statistics come from holds fewer than two voxels, or constant intensities."""


def normalize(values: np.ndarray, observed: np.ndarray, cfg: NormalizationConfig) -> tuple[np.ndarray, NormalizationParams]:
    """``values`` normalised as ``cfg`` says, with statistics from its region among the ``observed`` voxels, and
    the parameters used; raises :class:`EmptyRegionError` (the pipeline makes it an issue)."""
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
        raise EmptyRegionError(f"the normalisation region ({cfg.region}) holds {n} voxel(s)")
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
        raise EmptyRegionError(f"the intensities inside the normalisation region are constant ({shift:g})")
    params = NormalizationParams(cfg.method, shift, scale, lo, hi, cfg.region, cfg.outside_region, n)
    out = params.apply(values)
    if cfg.outside_region == "zero":
        out[~region] = 0.0
    return out, params


def normalize_intensities(
    values: np.ndarray, observed: np.ndarray, config: NormalizationConfig
) -> tuple[np.ndarray, NormalizationParams]:
    """Normalise one volume as the pipeline does (for data built in memory, such as the demo cohort).

    ``observed`` marks the voxels that were measured (all True for MR, the sector for ultrasound).
    Raises :class:`PreprocessingError` when the region is empty or constant.
    """
    try:
        return normalize(np.asarray(values, dtype=np.float32).copy(), np.asarray(observed, dtype=bool), config)
    except EmptyRegionError as error:
        raise PreprocessingError(f"Cannot normalise: {error}. Check that the volume is not empty or constant.") from None
