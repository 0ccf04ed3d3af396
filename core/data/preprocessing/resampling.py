"""Resampling between grids, pure numpy/scipy (geometry only, no file IO), and the model grid of a subject."""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from core.data.geometry import Geometry
from core.data.preprocessing.config import PreprocessingConfig

__all__ = ["resample", "resampling_record", "plan_grid"]


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


def resampling_record(source: Geometry, target: Geometry, antialias: bool) -> tuple[str, tuple[float, float, float] | None]:
    """How :func:`resample` maps ``source`` onto ``target``: ``'exact'`` (a voxel copy) or ``'linear'``, and the
    anti-aliasing sigma (source voxels, per source axis) it smooths with, None when it does not smooth."""
    m_matrix = np.linalg.solve(source.affine, target.affine)
    exact = _index_map(m_matrix) is not None
    sigma = None if exact or not antialias else tuple(float(s) for s in _antialias_sigma(m_matrix))
    return ("exact" if exact else "linear"), sigma


def plan_grid(reference: Geometry, config: PreprocessingConfig, target_shape: tuple[int, int, int] | None = None) -> Geometry:
    """The model grid of a subject: canonical RAS, optional target spacing, centred crop/pad."""
    grid = reference.canonical()
    if config.target_spacing is not None:
        grid = grid.with_spacing(config.target_spacing)
    shape = target_shape or config.target_shape
    if shape is not None and tuple(shape) != grid.shape:
        grid = grid.crop_or_pad(tuple(shape))
    return grid
