"""Back from the model grid to the source files: :func:`to_source_space` resamples a model-grid array onto a
subject's source grid, :func:`denormalize` puts it back in source intensity units (percentile clipping is not
invertible: values beyond the clip limits come back at the limits)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from core.data.geometry import Geometry
from core.data.preprocessing.config import PreprocessingError
from core.data.preprocessing.normalization import NormalizationParams
from core.data.preprocessing.records import SubjectRecord
from core.data.preprocessing.resampling import resample

__all__ = ["to_source_space", "source_grid_problem", "denormalize"]


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
    problem = source_grid_problem(record, modality)
    if problem is not None:
        raise PreprocessingError(problem)
    modality = modality or record.reference_modality
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


def source_grid_problem(record: SubjectRecord, modality: str | None = None) -> str | None:
    """Why ``record``'s model-grid arrays cannot be mapped onto ``modality``'s source grid (default: the reference
    modality), or None when they can. Callers that must fail before doing any work ask this first."""
    modality = modality or record.reference_modality
    if record.grid is None or modality is None:
        return f"Subject {record.subject} has no preprocessed grid; nothing can be mapped back."
    if modality not in record.modalities:
        return (f"Subject {record.subject} has no {modality} source file to take the grid from; "
                f"use one of {sorted(record.modalities)}.")
    return None


def denormalize(array: Any, params: NormalizationParams | None, *, is_std: bool = False) -> np.ndarray:
    """Back to source intensity units (a standard deviation map is only scaled)."""
    array = np.asarray(array, dtype=np.float32)
    if params is None or params.method == "none":
        return array
    if is_std:
        return (array.astype(np.float64) * params.scale).astype(np.float32)
    return params.invert(array)
