r"""How good one synthesized volume is where it was hidden, and whether it keeps the lesion.

Every score compares a synthesized volume :math:`\hat x` with the true one :math:`x` of the same
subject on a region :math:`\Omega` only: the voxels that were hidden and carry signal (the brain for
MR, the probe's field of view for ultrasound). Background voxels would inflate every score.

Scale. The truth fixes the scale: :math:`lo = \min_\Omega x`, :math:`L = \max_\Omega x - lo`. PSNR
uses :math:`L` as its data range; SSIM compares :math:`(x - lo)/L` with :math:`(\hat x - lo)/L` (SSIM's
luminance term needs non-negative intensities, and z-scored MR has none); intensity ratios are taken
above :math:`lo`. A prediction is never rescaled on its own, so a global contrast error shows.

    MSE, MAE  over Ω, in the data's units
    PSNR      10 log10(L² / MSE)
    R²        1 - Σ_Ω (x - x̂)² / Σ_Ω (x - mean_Ω x)²
    SSIM      the SSIM map of the whole volumes (core.metrics.ssim) averaged over the window centres in Ω

Lesion fidelity, with the lesion :math:`L_\Omega = lesion \cap \Omega` and its ring
:math:`R = (dilate(lesion, w) \setminus lesion) \cap \Omega` (city-block distance ≤ ``ring_voxels``):

    ratio           mean_{L_Ω}(v - lo) / mean_{Ω \ L_Ω}(v - lo), for v = x̂ and v = x;
                    ratio error |ratio(x̂) / ratio(x) - 1| (the goal: within 0.25)
    contrast error  |c(x̂) - c(x)| / |c(x)| with c(v) = mean_{L_Ω} v - mean_R v; a volume without the
                    lesion (the mean image) scores about 1
    Dice            one fixed segmentation rule applied to both volumes: inside the lesion's
                    neighbourhood L_Ω ∪ R, the voxels on the lesion's side of the threshold
                    t = (mean_{L_Ω} x + mean_R x) / 2 (above t when the lesion is brighter than its ring,
                    below otherwise); Dice(S(x̂), S(x)). The neighbourhood keeps tissue of the lesion's
                    brightness elsewhere (CSF on T2) out of the segmentation.

Lesion scores are NaN for a subject whose lesion does not reach Ω (no lesion, or outside the field
of view); callers drop NaNs. Inputs are single volumes (or images) as NumPy arrays of one shape.

Example:
    >>> import numpy as np
    >>> truth = np.array([0.0, 1.0, 2.0, 3.0])
    >>> region = np.ones(4, bool)
    >>> round(r_squared(truth, truth + 0.5 * (truth - 1.5), region), 4)
    0.75
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from core.metrics._common import MetricError
from core.metrics.ssim import ssim

__all__ = [
    "SYNTHESIS_SCORES",
    "target_scale",
    "region_mse",
    "region_mae",
    "region_psnr",
    "region_ssim",
    "r_squared",
    "lesion_ring",
    "lesion_ratio",
    "lesion_contrast",
    "lesion_segmentation",
    "dice",
    "synthesis_scores",
    "outside_fov_fraction",
]

SYNTHESIS_SCORES = (
    "psnr", "ssim", "r2", "mae", "mse",
    "lesion_ssim", "lesion_ratio", "lesion_ratio_true", "lesion_ratio_error", "lesion_contrast_error", "lesion_dice",
)  # fmt: skip


def _checked(truth: np.ndarray, pred: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth, pred, region = np.asarray(truth, np.float64), np.asarray(pred, np.float64), np.asarray(region, bool)
    if truth.shape != pred.shape or truth.shape != region.shape:
        raise MetricError(
            f"The truth {truth.shape}, the synthesized volume {pred.shape} and the region {region.shape} must have one shape."
        )
    if not region.any():
        raise MetricError("The scoring region is empty; pass the brain mask (MR) or the field of view (ultrasound).")
    return truth, pred, region


def target_scale(truth: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """``(lo, L)``: the truth's minimum over the region and its range (1 when the truth is constant)."""
    values = np.asarray(truth, np.float64)[np.asarray(region, bool)]
    if values.size == 0:
        raise MetricError("The scoring region is empty; pass the brain mask (MR) or the field of view (ultrasound).")
    lo, hi = float(values.min()), float(values.max())
    return lo, (hi - lo) if hi > lo else 1.0


def region_mse(truth: np.ndarray, pred: np.ndarray, region: np.ndarray) -> float:
    truth, pred, region = _checked(truth, pred, region)
    return float(np.mean((truth[region] - pred[region]) ** 2))


def region_mae(truth: np.ndarray, pred: np.ndarray, region: np.ndarray) -> float:
    truth, pred, region = _checked(truth, pred, region)
    return float(np.mean(np.abs(truth[region] - pred[region])))


def region_psnr(truth: np.ndarray, pred: np.ndarray, region: np.ndarray) -> float:
    """PSNR in dB with the truth's range over the region as the peak (capped at 100 dB, like core.metrics.psnr)."""
    _, data_range = target_scale(truth, region)
    error = max(region_mse(truth, pred, region), 1e-10 * data_range**2)
    return float(10.0 * math.log10(data_range**2 / error))


def region_ssim(truth: np.ndarray, pred: np.ndarray, region: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SSIM on the truth's scale, averaged over the window centres in ``mask`` (default: the region).
    NaN when no window centre falls in it.

    Only the region's voxels are scored, like every other metric here: outside it the prediction is
    replaced by the truth, so windows that straddle the region's edge compare real voxels with real
    voxels instead of penalizing whatever a method writes in the background (a U-Net's nonzero skull,
    say) or rewarding an exact zero there.
    """
    truth, pred, region = _checked(truth, pred, region)
    if truth.ndim not in (2, 3):
        raise MetricError(f"SSIM needs an image or a volume, got an array of shape {truth.shape}.")
    lo, data_range = target_scale(truth, region)
    scored = np.where(np.asarray(region, bool), pred, truth)
    as_batch = lambda a: torch.from_numpy((a - lo) / data_range)[None, None]  # noqa: E731
    centres = torch.from_numpy(np.asarray(region if mask is None else mask, bool))[None, None]
    return float(ssim(as_batch(truth), as_batch(scored), data_range=1.0, observed=centres)[0])


def r_squared(truth: np.ndarray, pred: np.ndarray, region: np.ndarray) -> float:
    """Coefficient of determination over the region (NaN when the truth is constant there)."""
    truth, pred, region = _checked(truth, pred, region)
    x, x_hat = truth[region], pred[region]
    total = float(np.sum((x - x.mean()) ** 2))
    return 1.0 - float(np.sum((x - x_hat) ** 2)) / total if total > 0 else math.nan


def lesion_ring(lesion: np.ndarray, region: np.ndarray, ring_voxels: int = 2) -> np.ndarray:
    """The voxels of the region within ``ring_voxels`` (city-block) of the lesion, outside it."""
    lesion = np.asarray(lesion, bool)
    if ring_voxels < 1:
        raise MetricError(f"ring_voxels must be at least 1, got {ring_voxels}.")
    grown = ndimage.binary_dilation(lesion, iterations=ring_voxels) if lesion.any() else lesion
    return grown & ~lesion & np.asarray(region, bool)


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else math.nan


def lesion_ratio(volume: np.ndarray, lesion: np.ndarray, region: np.ndarray, lo: float) -> float:
    """Mean intensity above ``lo`` in the lesion over that of the rest of the region."""
    volume, lesion, region = np.asarray(volume, np.float64), np.asarray(lesion, bool), np.asarray(region, bool)
    inside, rest = lesion & region, ~lesion & region
    background = _mean(volume, rest) - lo
    return (_mean(volume, inside) - lo) / background if background > 0 else math.nan


def lesion_contrast(volume: np.ndarray, lesion: np.ndarray, ring: np.ndarray) -> float:
    """Mean of the lesion minus mean of its ring (NaN when either is empty)."""
    volume = np.asarray(volume, np.float64)
    return _mean(volume, np.asarray(lesion, bool)) - _mean(volume, np.asarray(ring, bool))


def lesion_segmentation(volume: np.ndarray, threshold: float, bright: bool, neighbourhood: np.ndarray) -> np.ndarray:
    """The fixed rule: voxels of ``neighbourhood`` above ``threshold`` (``bright``) or below it."""
    volume = np.asarray(volume, np.float64)
    side = volume > threshold if bright else volume < threshold
    return side & np.asarray(neighbourhood, bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A∩B| / (|A| + |B|); 1 when both are empty (they agree that there is nothing)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum() + b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def synthesis_scores(
    truth: np.ndarray, pred: np.ndarray, region: np.ndarray, lesion: np.ndarray | None = None, ring_voxels: int = 2
) -> dict[str, float]:
    """Every score of :data:`SYNTHESIS_SCORES` for one subject (lesion scores NaN without a lesion in Ω)."""
    truth, pred, region = _checked(truth, pred, region)
    lo, _ = target_scale(truth, region)
    scores = {
        "psnr": region_psnr(truth, pred, region),
        "ssim": region_ssim(truth, pred, region),
        "r2": r_squared(truth, pred, region),
        "mae": region_mae(truth, pred, region),
        "mse": region_mse(truth, pred, region),
    }
    scores.update({name: math.nan for name in SYNTHESIS_SCORES if name not in scores})
    inside = np.zeros_like(region) if lesion is None else np.asarray(lesion, bool) & region
    if lesion is not None and inside.shape != region.shape:
        raise MetricError(f"The lesion mask {np.shape(lesion)} must have the volumes' shape {region.shape}.")
    ring = lesion_ring(inside, region, ring_voxels)
    if not inside.any() or not ring.any() or not (region & ~inside).any():
        return scores
    ratio_true, ratio = lesion_ratio(truth, inside, region, lo), lesion_ratio(pred, inside, region, lo)
    contrast_true = lesion_contrast(truth, inside, ring)
    threshold = (_mean(truth, inside) + _mean(truth, ring)) / 2
    neighbourhood = inside | ring
    bright = contrast_true > 0
    scores.update(
        lesion_ssim=region_ssim(truth, pred, region, mask=inside),
        lesion_ratio=ratio,
        lesion_ratio_true=ratio_true,
        lesion_ratio_error=abs(ratio / ratio_true - 1) if ratio_true else math.nan,
        lesion_contrast_error=abs(lesion_contrast(pred, inside, ring) - contrast_true) / abs(contrast_true) if contrast_true else math.nan,
        lesion_dice=dice(
            lesion_segmentation(pred, threshold, bright, neighbourhood), lesion_segmentation(truth, threshold, bright, neighbourhood)
        ),
    )
    return scores


def outside_fov_fraction(pred: np.ndarray, fov: np.ndarray, background: float = 0.0, atol: float = 1e-6) -> float:
    """Fraction of the voxels outside the field of view whose value is not the background (should be 0)."""
    pred, fov = np.asarray(pred, np.float64), np.asarray(fov, bool)
    if pred.shape != fov.shape:
        raise MetricError(f"The synthesized volume {pred.shape} and the field of view {fov.shape} must have one shape.")
    outside = ~fov
    return float(np.mean(np.abs(pred[outside] - background) > atol)) if outside.any() else 0.0
