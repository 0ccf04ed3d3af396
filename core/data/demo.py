"""The demo cohort: an MR/ultrasound phantom built on the real ICBM152 brain template.

No package ships paired MR + ultrasound volumes, so the demo data is synthesized from anatomy that
*is* real: the ICBM152 2009a T1, grey- and white-matter maps, shipped in ``resources/templates``. Per
subject (all factors stored as ground truth):

1. **Anatomy**: the template warped by a random global affine (rotation ~4 degrees, scale ~4 %) and a
   smooth displacement field; tissue fractions (GM, WM, CSF) follow the warp.
2. **Lesion** (for ``lesion_probability`` of the subjects): an irregular tumour core with an edema
   shell, centred in white matter; ``lesion_volume_ml`` is its volume.
3. **MR contrasts** T1, T2, FLAIR: a linear mix of tissue fractions with per-subject contrast jitter,
   a point-spread blur, a smooth bias field and Rician noise, skull-stripped (zero outside the brain).
4. **Ultrasound** (B-mode-like, probe on top as through a craniotomy): echogenicity plus specular
   interfaces, depth attenuation, acoustic shadowing, speckle, log compression, and a sector field of
   view returned as a per-voxel observation mask (zero outside it).

Every subject draws from its own seed (``SeedSequence(seed, spawn_key=(index,))``), so any subject can
be regenerated alone and equals the same subject generated within its cohort. Intensities are in
arbitrary units: MR roughly in [0, 1.2], ultrasound in [0, 1]. ``template="procedural"`` replaces the
template by nested ellipsoids, for tests that must not depend on the template's files.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import functools
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

from core.data.dataset import DatasetError, IncompleteDataset, MultimodalBaseDataset
from core.data.missingness import ensure_one_observed
from core.data.readers import read_volume
from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress
from core.resources import resources_dir

__all__ = [
    "MODALITIES",
    "MissingSpec",
    "DemoSpec",
    "DemoSubject",
    "DemoCohort",
    "spec_from_dict",
    "spec_to_dict",
    "template_path",
    "generate_subject",
    "simulate_masks",
    "make_demo_dataset",
    "make_demo_cohort",
    "write_demo_cohort",
    "add_arguments",
    "run_from_args",
    "main",
]

MODALITIES = ("T1", "T2", "FLAIR", "US")
BIDS_SUFFIX = {"T1": ("anat", "T1w"), "T2": ("anat", "T2w"), "FLAIR": ("anat", "FLAIR"), "US": ("us", "US")}
TISSUES = ("WM", "GM", "CSF", "tumour", "edema")
# Relative signal per tissue (rows: WM, GM, CSF, tumour, edema).
CONTRAST = {
    "T1": (0.85, 0.60, 0.15, 0.40, 0.50),
    "T2": (0.35, 0.50, 1.00, 0.70, 0.80),
    "FLAIR": (0.40, 0.55, 0.05, 0.75, 0.95),
    "US": (0.45, 0.30, 0.03, 0.80, 0.55),
}
BRAIN_EXTENT_MM = (166.0, 207.0, 177.0)  # ICBM152 brain bounding box plus ~15 %, room for the scale jitter
BRAIN_CENTRE_MM = (0.0, -17.0, 5.0)
TEMPLATE_NOTICE = """Synthetic MR/ultrasound phantom written by mmvae-workbench (core.data.demo).
Not patient data. The anatomy is derived from the ICBM152 2009a nonlinear symmetric template:

Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
McGill University. Permission to use, copy, modify, and distribute this software and its documentation
for any purpose and without fee is hereby granted, provided that the above copyright notice appear in
all copies. The authors and McGill University make no representations about the suitability of this
software for any purpose. It is provided "as is" without express or implied warranty.
"""


@dataclass(frozen=True)
class MissingSpec:
    """Which modalities to hide, and how.

    * ``mcar``: each (subject, modality) missing independently with ``rates[m]``.
    * ``mnar_label``: ``rates[m]`` for subjects with a lesion, ``rates_no_lesion[m]`` without (no
      tumour, no surgery, no intra-operative ultrasound).
    * ``mnar_content``: ultrasound kept with a probability rising with the lesion's radius (small
      lesions are not operated on); the other modalities as ``mcar``.
    """

    kind: Literal["none", "mcar", "mnar_label", "mnar_content"] = "mcar"
    rates: dict[str, float] = field(default_factory=lambda: {"T2": 0.3, "FLAIR": 0.3, "US": 0.5})
    rates_no_lesion: dict[str, float] = field(default_factory=lambda: {"T2": 0.3, "FLAIR": 0.3, "US": 0.9})

    def __post_init__(self) -> None:
        if self.kind not in ("none", "mcar", "mnar_label", "mnar_content"):
            raise DatasetError(f"missing.kind '{self.kind}' is not one of none, mcar, mnar_label, mnar_content.")
        for name, table in (("rates", self.rates), ("rates_no_lesion", self.rates_no_lesion)):
            for m, p in table.items():
                if m not in MODALITIES:
                    raise DatasetError(f"missing.{name} names unknown modality '{m}'; valid: {list(MODALITIES)}.")
                if not 0 <= float(p) <= 1:
                    raise DatasetError(f"missing.{name}['{m}'] = {p}; a probability must be between 0 and 1.")


@dataclass(frozen=True)
class DemoSpec:
    """What demo cohort to generate."""

    n_subjects: int = 40
    shape: tuple[int, ...] = (32, 32, 32)
    dims: int = 3
    modalities: tuple[str, ...] = MODALITIES
    seed: int = 0
    template: Literal["icbm152", "procedural"] = "icbm152"
    lesion_probability: float = 0.7
    missing: MissingSpec = field(default_factory=MissingSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.n_subjects < 1:
            raise DatasetError(f"demo.n_subjects = {self.n_subjects}; at least one subject is needed.")
        if self.dims not in (2, 3):
            raise DatasetError(f"demo.dims = {self.dims}; use 3 for volumes or 2 for one axial slice per subject.")
        if len(self.shape) != self.dims:
            raise DatasetError(f"demo.shape {self.shape} has {len(self.shape)} sizes but dims is {self.dims}.")
        if any(s < 8 or s > 512 for s in self.shape):
            raise DatasetError(f"demo.shape {self.shape}: every size must be between 8 and 512 voxels.")
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise DatasetError(f"demo.modalities {list(self.modalities)}: choose among {list(MODALITIES)}.")
        if self.template not in ("icbm152", "procedural"):
            raise DatasetError(f"demo.template '{self.template}' is not 'icbm152' or 'procedural'.")
        if not 0 <= self.lesion_probability <= 1:
            raise DatasetError(f"demo.lesion_probability = {self.lesion_probability}; it must be in [0, 1].")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """The 3D grid the subject is synthesized on (for 2D, a cube whose middle slice is kept)."""
        return self.shape if self.dims == 3 else (self.shape[0], self.shape[1], self.shape[0])


def spec_from_dict(values: dict[str, Any]) -> DemoSpec:
    """A :class:`DemoSpec` from plain settings (YAML), with errors naming unknown keys."""
    values = dict(values or {})
    known = set(DemoSpec.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [f"'{close[0]}'" for key in unknown if (close := difflib.get_close_matches(key, known, n=1))]
        hint = f" Did you mean {', '.join(hints)}?" if hints else ""
        raise DatasetError(f"Unknown demo settings {unknown}; valid keys are {sorted(known)}.{hint}")
    missing = values.pop("missing", None)
    if isinstance(missing, dict):
        unknown = sorted(set(missing) - set(MissingSpec.__dataclass_fields__))
        if unknown:
            raise DatasetError(f"Unknown demo.missing settings {unknown}; valid: {sorted(MissingSpec.__dataclass_fields__)}.")
        missing = MissingSpec(**missing)
    elif isinstance(missing, str):
        missing = MissingSpec(kind=missing)
    if "shape" in values:
        values["shape"] = tuple(values["shape"])
        values.setdefault("dims", len(values["shape"]))
    if "modalities" in values:
        values["modalities"] = tuple(values["modalities"])
    return DemoSpec(**values, **({"missing": missing} if missing is not None else {}))


def spec_to_dict(spec: DemoSpec) -> dict[str, Any]:
    out = asdict(spec)
    out["shape"] = list(spec.shape)
    out["modalities"] = list(spec.modalities)
    return out


# ---------------------------------------------------------------------------------------------- template
def template_path(kind: str) -> Path | None:
    """Path of an ICBM152 2009a map (``t1``, ``gm``, ``wm``) among the package's resources, or None."""
    path = resources_dir() / "templates" / "icbm152_2009a" / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=2)
def _template(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(T1, GM, WM) in [0, 1] on a template grid, and that grid's voxel->mm affine."""
    if kind == "icbm152":
        paths = [template_path(k) for k in ("t1", "gm", "wm")]
        if all(p is not None for p in paths):
            volumes = [read_volume(p) for p in paths]  # through the IO boundary, like every other file
            t1, gm, wm = (v.array / np.float32(255.0) for v in volumes)
            return t1, gm, wm, np.asarray(volumes[0].geometry.affine, dtype=np.float64)
    return _procedural_template()


def _procedural_template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nested ellipsoids on a 2 mm grid in template space: WM core, GM shell, CSF rim, ventricles."""
    shape = (99, 117, 95)
    affine = np.array([[2.0, 0, 0, -98], [0, 2.0, 0, -134], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = np.array(BRAIN_CENTRE_MM)

    def radius(semi_axes: tuple[float, float, float], offset: tuple[float, float, float] = (0, 0, 0)) -> np.ndarray:
        return np.sqrt((((xyz - centre - np.array(offset)) / np.array(semi_axes)) ** 2).sum(1)).reshape(shape)

    brain = radius((68, 86, 70))
    brain_mask = (brain < 1.0).astype(np.float32)
    wm = (brain < 0.72).astype(np.float32)
    gm = ((brain >= 0.72) & (brain < 0.93)).astype(np.float32)
    ventricles = np.minimum(radius((5, 18, 7), (-9, 0, 8)), radius((5, 18, 7), (9, 0, 8))) < 1.0
    wm[ventricles] = 0
    smooth = lambda a: ndimage.gaussian_filter(a, 1.0)  # noqa: E731
    wm, gm, brain_mask = smooth(wm), smooth(gm), smooth(brain_mask)
    t1 = np.clip(brain_mask * (0.25 + 0.5 * gm + 0.75 * wm), 0, 1)
    return t1.astype(np.float32), gm.astype(np.float32), wm.astype(np.float32), affine


@functools.lru_cache(maxsize=4)
def _smoothed_template(kind: str, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The template anti-aliased for sampling at ``spacing`` mm (computed once per grid)."""
    t1, gm, wm, affine = _template(kind)
    sigma = max(0.0, (spacing / abs(affine[0, 0]) - 1) / 2)
    if sigma > 0:
        t1, gm, wm = (ndimage.gaussian_filter(a, sigma) for a in (t1, gm, wm))
    return t1, gm, wm, affine


def _grid_affine(grid_shape: tuple[int, int, int]) -> np.ndarray:
    """RAS affine of the working grid: isotropic spacing fitting the brain, centred on it."""
    spacing = max(e / s for e, s in zip(BRAIN_EXTENT_MM, grid_shape, strict=True))
    spacing = math.ceil(spacing * 4) / 4  # quarter-millimetre steps
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.array(BRAIN_CENTRE_MM) - spacing * (np.array(grid_shape) - 1) / 2
    return affine


# ---------------------------------------------------------------------------------------------- subjects
@dataclass
class DemoSubject:
    """One synthesized subject: volumes on the working grid, its geometry and its ground truth.

    ``lesion`` (tumour core + edema fraction > 0.5) and ``brain`` (the skull-stripping mask of the MR
    volumes) are boolean masks on the volumes' grid, so synthesis can be scored where it matters.
    """

    subject_id: str
    volumes: dict[str, np.ndarray]
    fov: np.ndarray
    affine: np.ndarray
    labels: dict[str, float]
    factors: dict[str, Any]
    covariates: dict[str, Any]
    lesion: np.ndarray
    brain: np.ndarray


def _rng(spec: DemoSpec, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(index,)))


def _draw_factors(spec: DemoSpec, index: int) -> dict[str, Any]:
    """Every random choice of a subject, drawn first, so labels and missingness need no volumes."""
    rng = _rng(spec, index)
    has_lesion = bool(rng.random() < spec.lesion_probability)
    return {
        "rotation_deg": rng.normal(0, 4, 3).round(3).tolist(),
        "scale": rng.normal(1, 0.04, 3).round(4).tolist(),
        "deformation_seed": int(rng.integers(2**31)),
        "deformation_peak_mm": 6.0,
        "lesion": has_lesion,
        "lesion_centre_pick": float(rng.random()),
        "lesion_radius_mm": float(rng.uniform(8, 18)) if has_lesion else 0.0,
        "lesion_axes": rng.uniform(0.7, 1.3, 3).round(3).tolist(),
        "contrast_jitter": {m: rng.uniform(0.9, 1.1, len(TISSUES)).round(4).tolist() for m in MODALITIES},
        "bias_seed": int(rng.integers(2**31)),
        "noise_sigma": float(rng.uniform(0.02, 0.05)),
        "noise_seed": int(rng.integers(2**31)),
        "probe_offset_mm": rng.normal(0, 12, 2).round(2).tolist(),
        "site": "A" if rng.random() < 0.5 else "B",
        "age": float(np.clip(rng.normal(55, 12), 18, 90).round(1)),
    }


def _rotation(degrees: list[float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float, coarse: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1] (drawn coarse, then upsampled: cheap at any resolution)."""
    small = tuple(max(4, math.ceil(s / coarse)) for s in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(small), max(0.5, sigma_vox / coarse))
    field_ = ndimage.zoom(noise, [s / c for s, c in zip(shape, small, strict=True)], order=1)[tuple(slice(0, s) for s in shape)]
    return (field_ / (np.abs(field_).max() + 1e-8)).astype(np.float32)


def _warped_tissues(spec: DemoSpec, factors: dict[str, Any], grid_affine: np.ndarray) -> dict[str, np.ndarray]:
    """Template tissue fractions sampled through the subject's warp onto the working grid."""
    shape = spec.grid_shape
    spacing = grid_affine[0, 0]
    t1, gm, wm, template_affine = _smoothed_template(spec.template, float(spacing))
    rng = np.random.default_rng(factors["deformation_seed"])
    peak_vox = factors["deformation_peak_mm"] / spacing
    displacement = [peak_vox * _smooth_field(rng, shape, 16.0 / spacing) for _ in range(3)]
    ijk = np.indices(shape, dtype=np.float32)
    ijk = [ijk[a] + displacement[a] for a in range(3)]
    xyz = np.stack([grid_affine[a, 0] * ijk[0] + grid_affine[a, 1] * ijk[1] + grid_affine[a, 2] * ijk[2] + grid_affine[a, 3]
                    for a in range(3)])
    centre = np.array(BRAIN_CENTRE_MM).reshape(3, 1)
    linear = _rotation(factors["rotation_deg"]) @ np.diag(1.0 / np.array(factors["scale"]))
    moved = linear @ (xyz.reshape(3, -1) - centre) + centre
    template_ijk = np.linalg.inv(template_affine) @ np.vstack([moved, np.ones((1, moved.shape[1]))])
    sample = lambda a: ndimage.map_coordinates(a, template_ijk[:3], order=1, mode="constant").reshape(shape)  # noqa: E731
    t1_w, gm_w, wm_w = sample(t1), sample(gm), sample(wm)
    brain = ndimage.binary_fill_holes(t1_w > 0.2).astype(np.float32)
    gm_w, wm_w = gm_w * brain, wm_w * brain
    csf = np.clip(brain - gm_w - wm_w, 0, 1)
    total = np.maximum(gm_w + wm_w + csf, 1e-6)
    return {"WM": wm_w / total * brain, "GM": gm_w / total * brain, "CSF": csf / total * brain, "brain": brain}


def _lesion_centre(tissues: dict[str, np.ndarray], factors: dict[str, Any]) -> np.ndarray:
    """A white-matter voxel picked by the subject's draw (drawn for every subject, lesion or not)."""
    candidates = np.argwhere(tissues["WM"] > 0.7)
    if len(candidates) == 0:
        candidates = np.argwhere(tissues["brain"] > 0.5)
    return candidates[min(len(candidates) - 1, int(factors["lesion_centre_pick"] * len(candidates)))].astype(np.float32)


def _add_lesion(tissues: dict[str, np.ndarray], factors: dict[str, Any], spacing: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Tumour core and edema shell replacing tissue; returns (core, edema, centre voxel)."""
    shape = tissues["WM"].shape
    zeros = np.zeros(shape, np.float32)
    centre = _lesion_centre(tissues, factors)
    if not factors["lesion"]:
        return zeros, zeros, centre.tolist()
    semi_axes = factors["lesion_radius_mm"] / spacing * np.array(factors["lesion_axes"])
    ijk = np.indices(shape, dtype=np.float32)
    r = np.sqrt(sum(((ijk[a] - centre[a]) / semi_axes[a]) ** 2 for a in range(3)))
    r = r + 0.15 * _smooth_field(np.random.default_rng(factors["deformation_seed"] + 1), shape, 4.0 / max(spacing / 2, 1))
    soft = lambda x: 1 / (1 + np.exp(-x / 0.05))  # noqa: E731
    core = soft(0.6 - r) * tissues["brain"]
    edema = np.clip(soft(1.0 - r) * tissues["brain"] - core, 0, 1)
    keep = 1 - core - edema
    for t in ("WM", "GM", "CSF"):
        tissues[t] = tissues[t] * keep
    return core.astype(np.float32), edema.astype(np.float32), centre.tolist()


def _mr(modality: str, fractions: dict[str, np.ndarray], factors: dict[str, Any], spacing: float, rng: np.random.Generator) -> np.ndarray:
    weights = np.array(CONTRAST[modality]) * np.array(factors["contrast_jitter"][modality])
    signal = sum(w * fractions[t] for w, t in zip(weights, TISSUES, strict=True))
    signal = ndimage.gaussian_filter(signal, 0.6)
    bias = 1 + 0.15 * _smooth_field(np.random.default_rng(factors["bias_seed"] + MODALITIES.index(modality)), signal.shape, 40.0 / spacing)
    sigma = factors["noise_sigma"]
    noisy = np.sqrt((signal * bias + rng.normal(0, sigma, signal.shape)) ** 2 + rng.normal(0, sigma, signal.shape) ** 2)
    return (noisy * (fractions["brain"] > 0.5)).astype(np.float32)


def _ultrasound(
    fractions: dict[str, np.ndarray], factors: dict[str, Any], grid_affine: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """B-mode-like image from a probe above the brain; returns (image, field-of-view mask)."""
    shape = fractions["WM"].shape
    spacing = grid_affine[0, 0]
    weights = np.array(CONTRAST["US"]) * np.array(factors["contrast_jitter"]["US"])
    echo = sum(w * fractions[t] for w, t in zip(weights, TISSUES, strict=True))
    labels = np.argmax(np.stack([fractions[t] for t in TISSUES] + [1 - fractions["brain"]]), axis=0).astype(np.float32)
    specular = ndimage.gaussian_gradient_magnitude(labels, 0.8)
    reflectivity = np.clip(specular / (specular.max() + 1e-8), 0, 1)
    echo = echo + 1.2 * reflectivity * fractions["brain"]
    # Geometry of the sector: apex above the top of the brain, beam pointing inferior (-z).
    brain_idx = np.argwhere(fractions["brain"] > 0.5)
    top = brain_idx[:, 2].max() if len(brain_idx) else shape[2] - 1
    centre_xy = np.array(shape[:2]) / 2 + np.array(factors["probe_offset_mm"]) / spacing
    apex = np.array([centre_xy[0], centre_xy[1], top + 8 * 2.0 / spacing])
    ijk = np.indices(shape, dtype=np.float32)
    offset = [ijk[a] - apex[a] for a in range(3)]
    depth = np.sqrt(offset[0] ** 2 + offset[1] ** 2 + offset[2] ** 2)
    angle = np.degrees(np.arccos(np.clip(-offset[2] / np.maximum(depth, 1e-6), -1, 1)))
    max_depth = 0.85 * (apex[2] - (brain_idx[:, 2].min() if len(brain_idx) else 0))
    fov = (angle <= 40) & (depth <= max_depth) & (fractions["brain"] > 0.5)
    attenuation = np.exp(-0.006 * depth * spacing)
    # Shadowing accumulates down each column (beam direction ~ -z): flip so the cumulative product runs from the probe.
    shadow = np.flip(np.cumprod(np.flip(1 - 0.35 * reflectivity, axis=2), axis=2), axis=2)
    psf_sigma = (0.8 * 2.0 / spacing, 0.8 * 2.0 / spacing, 1.6 * 2.0 / spacing)
    scatter = (ndimage.gaussian_filter(rng.standard_normal(shape), psf_sigma)
               + 1j * ndimage.gaussian_filter(rng.standard_normal(shape), psf_sigma))
    envelope = np.abs(scatter)
    envelope /= envelope.mean() + 1e-8
    speckle_weight = 0.55 if spacing >= 1.0 else 1.0
    bmode = echo * attenuation * shadow * ((1 - speckle_weight) + speckle_weight * envelope)
    high = np.percentile(bmode[fov], 99.9) if fov.any() else 1.0
    image = np.log1p(4 * np.clip(bmode, 0, None)) / np.log1p(4 * high)
    image = np.clip(image, 0, 1) * fov
    return image.astype(np.float32), fov


def generate_subject(index: int, spec: DemoSpec) -> DemoSubject:
    """Synthesize subject ``index`` of the cohort ``spec`` (identical to it within the cohort)."""
    if not 0 <= index < spec.n_subjects:
        raise DatasetError(f"Subject index {index} is outside the cohort of {spec.n_subjects}.")
    factors = _draw_factors(spec, index)
    affine = _grid_affine(spec.grid_shape)
    spacing = float(affine[0, 0])
    tissues = _warped_tissues(spec, factors, affine)
    core, edema, centre = _add_lesion(tissues, factors, spacing)
    fractions = {**tissues, "tumour": core, "edema": edema}
    noise_rng = np.random.default_rng(factors["noise_seed"])
    volumes = {}
    fov = np.zeros(spec.grid_shape, bool)
    for m in spec.modalities:
        if m == "US":
            volumes[m], fov = _ultrasound(fractions, factors, affine, noise_rng)
        else:
            volumes[m] = _mr(m, fractions, factors, spacing, noise_rng)
    lesion_ml = float((core + edema).sum() * spacing**3 / 1000.0)
    lesion = (core + edema) > 0.5
    brain = tissues["brain"] > 0.5
    factors["lesion_centre_vox"] = centre if factors["lesion"] else None
    if spec.dims == 2:
        # Every subject is sliced at its drawn centre height, so the slice level says nothing of the label.
        k = int(round(centre[2]))
        volumes = {m: v[:, :, k] for m, v in volumes.items()}
        fov, lesion, brain = fov[:, :, k], lesion[:, :, k], brain[:, :, k]
        factors["slice_index"] = k
        slice_affine = affine.copy()
        slice_affine[:3, 3] = affine[:3, :3] @ np.array([0, 0, k]) + affine[:3, 3]
        affine = slice_affine
    return DemoSubject(
        subject_id=f"sub-{index + 1:03d}",
        volumes=volumes,
        fov=fov,
        affine=affine,
        labels={"lesion_present": float(factors["lesion"]), "lesion_volume_ml": lesion_ml},
        factors=factors,
        covariates={"site": factors["site"], "age": factors["age"]},
        lesion=lesion,
        brain=brain,
    )


def simulate_masks(spec: DemoSpec) -> dict[str, torch.Tensor]:
    """Observed-modality masks of the cohort, from the subjects' drawn factors (no volumes needed)."""
    n = spec.n_subjects
    names = list(spec.modalities)
    masks = {m: torch.ones(n, dtype=torch.bool) for m in names}
    missing = spec.missing
    if missing.kind == "none":
        return masks
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(2**20,)))
    factors = [_draw_factors(spec, i) for i in range(n)]
    for m in names:
        u = rng.random(n)
        if missing.kind == "mnar_label":
            p = np.array([missing.rates.get(m, 0.0) if f["lesion"] else missing.rates_no_lesion.get(m, 0.0) for f in factors])
        elif missing.kind == "mnar_content" and m == "US":
            radius = np.array([f["lesion_radius_mm"] for f in factors])
            p = 1 / (1 + np.exp((radius - 11.0) / 1.5))  # small or no lesion: no ultrasound
        else:
            p = np.full(n, missing.rates.get(m, 0.0))
        masks[m] = torch.from_numpy(u >= p)
        if not bool(masks[m].any()):  # a tiny cohort must still show every modality once
            masks[m][int(rng.integers(n))] = True
    return ensure_one_observed(masks, seed=spec.seed, prefer=names[0])


def _normalized(subject: DemoSubject) -> dict[str, np.ndarray]:
    """Intensities as the default preprocessing leaves them: MR z-scored in the brain, US min-max in the sector."""
    from core.data.preprocessing.config import PreprocessingConfig
    from core.data.preprocessing.normalization import normalize_intensities

    config = PreprocessingConfig()
    out = {}
    for m, volume in subject.volumes.items():
        observed = subject.fov if m == "US" else np.ones(volume.shape, bool)
        out[m] = normalize_intensities(volume, observed, config.normalization_for(m))[0]
    return out


@dataclass(frozen=True)
class DemoCohort:
    """The demo cohort in memory with the masks that score synthesis: ``lesion`` and ``brain`` are
    boolean ``(n, 1, *shape)`` tensors in the datasets' subject order."""

    dataset: IncompleteDataset
    ground_truth: MultimodalBaseDataset
    lesion: torch.Tensor
    brain: torch.Tensor


def make_demo_dataset(
    spec: DemoSpec, normalize: bool = True, progress: ProgressFn | None = None, cancel: CancelFn | None = None
) -> tuple[IncompleteDataset, MultimodalBaseDataset]:
    """The demo cohort in memory: (incomplete dataset per ``spec.missing``, complete ground truth).

    Tensors are ``(n, 1, *shape)``; ids ``sub-001``...; labels ``lesion_present``, ``lesion_volume_ml``;
    the ultrasound field of view is its observation mask. With ``normalize`` (default) intensities are
    normalised as the file pipeline's default preprocessing does, so in-memory experiments see the same
    data a run on the written cohort sees; ``normalize=False`` keeps the phantom's raw units.
    """
    cohort = make_demo_cohort(spec, normalize, progress, cancel)
    return cohort.dataset, cohort.ground_truth


def make_demo_cohort(
    spec: DemoSpec, normalize: bool = True, progress: ProgressFn | None = None, cancel: CancelFn | None = None
) -> DemoCohort:
    """:func:`make_demo_dataset` plus each subject's lesion and brain masks (one generation pass)."""
    volumes = []
    subjects = []
    for i in range(spec.n_subjects):
        raise_if_cancelled(cancel, "demo generation")
        subject = generate_subject(i, spec)
        volumes.append(_normalized(subject) if normalize else subject.volumes)
        subjects.append(subject)
        report_progress(progress, i + 1, spec.n_subjects, subject.subject_id)
    data = {m: torch.from_numpy(np.stack([v[m] for v in volumes]))[:, None] for m in spec.modalities}
    labels = {k: torch.tensor([s.labels[k] for s in subjects]) for k in ("lesion_present", "lesion_volume_ml")}
    ids = [s.subject_id for s in subjects]
    observation = {"US": torch.from_numpy(np.stack([s.fov for s in subjects]))[:, None]} if "US" in spec.modalities else {}
    complete = MultimodalBaseDataset(data, labels=labels, ids=ids, observation_masks=observation)
    incomplete = IncompleteDataset(data, simulate_masks(spec), labels=labels, ids=ids, observation_masks=observation)
    lesion, brain = (torch.from_numpy(np.stack([getattr(s, name) for s in subjects]))[:, None] for name in ("lesion", "brain"))
    return DemoCohort(incomplete, complete, lesion, brain)


def write_demo_cohort(
    out_dir: str | os.PathLike, spec: DemoSpec, progress: ProgressFn | None = None, cancel: CancelFn | None = None
) -> Path:
    """Write the cohort as a BIDS-like tree of NIfTI files with a manifest; returns the manifest path.

    Only present modalities are written. Files: ``sub-XXX/anat/sub-XXX_{T1w,T2w,FLAIR}.nii.gz``,
    ``sub-XXX/us/sub-XXX_US.nii.gz`` and its field of view ``sub-XXX_US_fov.nii.gz``, plus
    ``manifest.csv`` (subject, modality, path, observation_mask), ``participants.tsv``,
    ``ground_truth.json``, ``dataset_description.json`` and ``.bidsignore``. The cohort is built in a
    staging folder and moved into place at the end, so a cancelled run leaves nothing behind.
    """
    from core.data.geometry import Geometry
    from core.data.writers import write_nifti

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; choose a new folder for the demo cohort.")
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        masks = simulate_masks(spec)
        rows, participants, truth = [], [], {}
        for i in range(spec.n_subjects):
            raise_if_cancelled(cancel, "demo generation")
            subject = generate_subject(i, spec)
            sid = subject.subject_id
            for m in spec.modalities:
                if not bool(masks[m][i]):
                    continue
                folder, suffix = BIDS_SUFFIX[m]
                rel = Path(sid) / folder / f"{sid}_{suffix}.nii.gz"
                volume = subject.volumes[m]
                array = volume[:, :, None] if spec.dims == 2 else volume
                geometry = Geometry.from_affine(array.shape, subject.affine)
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                write_nifti(staging / rel, array, geometry, description=f"mmvae-workbench demo phantom {m}", verify=False)
                fov_rel = ""
                if m == "US":
                    fov_rel = str(Path(sid) / folder / f"{sid}_US_fov.nii.gz")
                    fov = subject.fov[:, :, None] if spec.dims == 2 else subject.fov
                    write_nifti(staging / fov_rel, fov.astype(np.uint8), geometry, dtype=np.uint8,
                                description="ultrasound field of view", verify=False)
                rows.append({"subject": sid, "modality": m, "path": str(rel), "observation_mask": fov_rel})
            participants.append({"participant_id": sid, **{k: round(v, 4) for k, v in subject.labels.items()}, **subject.covariates})
            truth[sid] = subject.factors
            report_progress(progress, i + 1, spec.n_subjects, sid)
        with open(staging / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["subject", "modality", "path", "observation_mask"])
            writer.writeheader()
            writer.writerows(rows)
        with open(staging / "participants.tsv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(participants[0]), delimiter="\t")
            writer.writeheader()
            writer.writerows(participants)
        (staging / "ground_truth.json").write_text(json.dumps({"spec": spec_to_dict(spec), "subjects": truth}, indent=1))
        (staging / "dataset_description.json").write_text(
            json.dumps({"Name": "mmvae-workbench MR/US demo phantom", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                        "GeneratedBy": [{"Name": "mmvae-workbench core.data.demo"}],
                        "SourceDatasets": [{"Description": "ICBM152 2009a nonlinear symmetric template"}],
                        "License": "Derived from the ICBM152 template; see README for its copyright notice."}, indent=2)
        )
        (staging / ".bidsignore").write_text("us/\n*_US*\n")
        (staging / "README").write_text(TEMPLATE_NOTICE)
        if out_dir.exists():
            out_dir.rmdir()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir / "manifest.csv"


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (must be new or empty)")
    parser.add_argument("--n", type=int, default=40, help="number of subjects (default 40)")
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 32, 32], help="grid size: X Y Z (or H W with --dims 2)")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=None, help="3 for volumes, 2 for one slice per subject")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--missing", choices=("none", "mcar", "mnar_label", "mnar_content"), default="mcar")
    parser.add_argument("--template", choices=("icbm152", "procedural"), default="icbm152")


def run_from_args(args: argparse.Namespace) -> Path:
    from core.progress import ProgressReporter

    spec = DemoSpec(
        n_subjects=args.n,
        shape=tuple(args.shape),
        dims=args.dims or len(args.shape),
        seed=args.seed,
        modalities=tuple(args.modalities),
        template=args.template,
        missing=MissingSpec(kind=args.missing),
    )
    with ProgressReporter("demo cohort") as progress:
        manifest = write_demo_cohort(args.out, spec, progress=progress)
    print(f"wrote {spec.n_subjects} subjects to {manifest.parent} (manifest: {manifest})")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the mmvae-workbench demo MR/US cohort.")
    add_arguments(parser)
    run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()
