"""Voxel grids: :class:`Geometry` is ``(shape, spacing, affine)``, the affine mapping voxel indices
``(i, j, k, 1)`` to world millimetres in **RAS+** (nibabel's convention), and the one place where that
convention meets ITK's LPS origin and direction (:func:`ras_affine_from_itk`, :func:`itk_from_geometry`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.data.errors import GeometryError

__all__ = ["Geometry", "ras_affine_from_itk", "itk_from_geometry"]

# LPS <-> RAS: flip the first two world axes.
_FLIP_XY = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Geometry:
    """A voxel grid: ``shape`` (X, Y, Z), ``spacing`` in mm and a 4x4 voxel-to-RAS+ ``affine``.

    ``spacing`` must equal the column norms of ``affine[:3, :3]``; build one from an affine alone with
    :meth:`from_affine`. Geometries compare with :meth:`allclose` (``==`` is identity).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or any(s < 1 for s in shape):
            raise GeometryError(f"A geometry needs a 3D shape of positive sizes; got {self.shape}.")
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise GeometryError(f"The affine must be a finite 4x4 matrix; got shape {affine.shape}.")
        if not np.allclose(affine[3], [0, 0, 0, 1]):
            raise GeometryError(f"The affine's last row must be (0, 0, 0, 1); got {affine[3].tolist()}.")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise GeometryError("The affine is singular (a zero voxel size or collapsed axes).")
        spacing = tuple(float(s) for s in self.spacing)
        norms = np.linalg.norm(affine[:3, :3], axis=0)
        if len(spacing) != 3 or not np.allclose(spacing, norms, rtol=1e-4, atol=1e-6):
            raise GeometryError(
                f"spacing {spacing} does not match the affine's voxel sizes {tuple(np.round(norms, 6))}; "
                "use Geometry.from_affine(shape, affine)."
            )
        affine.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "affine", affine)

    @classmethod
    def from_affine(cls, shape: tuple[int, ...], affine: np.ndarray) -> Geometry:
        affine = np.asarray(affine, dtype=np.float64)
        return cls(tuple(int(s) for s in shape), tuple(np.linalg.norm(affine[:3, :3], axis=0).tolist()), affine)

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the voxel axes."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def orientation(self) -> str:
        """Closest axis codes, e.g. 'RAS', 'LPS', 'LAS'."""
        from nibabel.orientations import aff2axcodes

        return "".join(c or "?" for c in aff2axcodes(self.affine))

    @property
    def has_shear(self) -> bool:
        d = self.direction
        return not np.allclose(d.T @ d, np.eye(3), atol=1e-5)

    @property
    def is_oblique(self) -> bool:
        d = np.abs(self.direction)
        return not np.allclose(np.sort(d, axis=0)[-1], 1.0, atol=1e-6)

    def corners(self) -> np.ndarray:
        """RAS coordinates (8, 3) of the centres of the eight corner voxels."""
        idx = np.array(np.meshgrid(*[[0, s - 1] for s in self.shape], indexing="ij")).reshape(3, -1).T
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned RAS bounding box (min, max) of the field of view (voxel edges included)."""
        half = 0.5 * np.abs(self.affine[:3, :3]).sum(axis=1)
        c = self.corners()
        return c.min(0) - half, c.max(0) + half

    def allclose(self, other: Geometry, atol: float = 1e-4) -> bool:
        """Same shape and affines equal within ``atol`` (mm)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, rtol=0, atol=atol))

    def max_displacement(self, other_affine: np.ndarray) -> float:
        """Largest distance (mm) between where this grid and ``other_affine`` put any corner voxel."""
        idx = np.array(np.meshgrid(*[[0, s - 1] for s in self.shape], indexing="ij")).reshape(3, -1)
        idx = np.vstack([idx, np.ones(idx.shape[1])])
        return float(np.abs((self.affine - np.asarray(other_affine)) @ idx)[:3].max())

    # -- grid operations (pure geometry; no voxels move here) ---------------------------------------------
    def canonical(self) -> Geometry:
        """The same voxels relabelled so that the axes point as close as possible to R, A, S.

        Only permutes and flips axes (no interpolation), like ``nibabel.as_closest_canonical``.
        """
        from nibabel.orientations import inv_ornt_aff, io_orientation

        ornt = io_orientation(self.affine)
        affine = self.affine @ inv_ornt_aff(ornt, self.shape)
        shape = [0, 0, 0]
        for axis, (target, _flip) in enumerate(ornt):
            shape[int(target)] = self.shape[axis]
        return Geometry.from_affine(tuple(shape), affine)

    def with_spacing(self, spacing: tuple[float, float, float]) -> Geometry:
        """A grid with the same axes directions and centre, covering the same extent at ``spacing``."""
        spacing_new = np.asarray(spacing, dtype=np.float64)
        if spacing_new.shape != (3,) or np.any(spacing_new <= 0):
            raise GeometryError(f"Target spacing must be three positive numbers; got {spacing}.")
        old = np.asarray(self.spacing)
        shape = np.maximum(1, np.round(np.asarray(self.shape) * old / spacing_new)).astype(int)
        center = self.affine[:3, :3] @ ((np.asarray(self.shape) - 1) / 2) + self.affine[:3, 3]
        cols = self.direction * spacing_new
        affine = np.eye(4)
        affine[:3, :3] = cols
        affine[:3, 3] = center - cols @ ((shape - 1) / 2)
        return Geometry.from_affine(tuple(shape.tolist()), affine)

    def crop_or_pad(self, shape: tuple[int, int, int]) -> Geometry:
        """A grid of ``shape`` centred on this one (integer voxel offset, so no interpolation is needed)."""
        target = np.asarray(shape, dtype=int)
        if target.shape != (3,) or np.any(target < 1):
            raise GeometryError(f"Target shape must be three positive integers; got {shape}.")
        offset = (np.asarray(self.shape) - target) // 2
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ offset + self.affine[:3, 3]
        return Geometry(tuple(target.tolist()), self.spacing, affine)

    # -- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "spacing": [float(s) for s in self.spacing],
            "affine": [[float(v) for v in row] for row in self.affine],
            "orientation": self.orientation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(tuple(d["shape"]), tuple(d["spacing"]), np.asarray(d["affine"], dtype=np.float64))

    def __repr__(self) -> str:
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        return f"Geometry(shape={self.shape}, spacing={sp} mm, orientation={self.orientation}{', oblique' if self.is_oblique else ''})"


# --------------------------------------------------------------------------------------------------------
# SimpleITK <-> geometry (the only LPS code in core)
# --------------------------------------------------------------------------------------------------------


def ras_affine_from_itk(origin: Any, spacing: Any, direction: Any, ndim: int) -> np.ndarray:
    """The voxel-to-RAS+ affine of an ITK image's LPS ``origin``, ``spacing`` and ``direction`` (first 3 axes)."""
    direction = np.asarray(direction, dtype=np.float64).reshape(ndim, ndim)[:3, :3]
    spacing = np.asarray(spacing, dtype=np.float64)[:3]
    origin = np.asarray(origin, dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = _FLIP_XY @ direction @ np.diag(spacing)
    affine[:3, 3] = _FLIP_XY @ origin
    return affine


def itk_from_geometry(geometry: Geometry) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """ITK's LPS ``(origin, spacing, direction)`` of ``geometry``; a sheared affine raises :class:`GeometryError`."""
    if geometry.has_shear:
        raise GeometryError(
            "The affine has shear, which NRRD/MetaImage/DICOM (origin + orthonormal direction) cannot store. "
            "Fix: write NIfTI (.nii.gz) instead."
        )
    direction = _FLIP_XY @ geometry.direction
    origin = _FLIP_XY @ geometry.affine[:3, 3]
    return tuple(origin.tolist()), tuple(float(s) for s in geometry.spacing), tuple(direction.ravel().tolist())

