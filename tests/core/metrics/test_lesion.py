import math

import numpy as np
import pytest
import torch

from core.metrics import MetricError, ssim
from core.metrics.lesion import (
    SYNTHESIS_SCORES,
    dice,
    lesion_ratio,
    lesion_ring,
    outside_fov_fraction,
    r_squared,
    region_mae,
    region_mse,
    region_psnr,
    region_ssim,
    synthesis_scores,
    target_scale,
)


def _phantom(shape=(20, 20, 20), contrast=1.0):
    """A brain cube of value 1 with a darker slab (0.5), background 0 and a bright cubic lesion of side 4."""
    volume = np.zeros(shape)
    brain = np.zeros(shape, bool)
    brain[2:-2, 2:-2, 2:-2] = True
    volume[brain] = 1.0
    volume[2:-2, 2:-2, 2:4] = 0.5
    lesion = np.zeros(shape, bool)
    lesion[8:12, 8:12, 8:12] = True
    volume[lesion] += contrast
    return volume, brain, lesion


def test_errors_use_the_region_only_with_hand_computed_values():
    truth = np.array([[0.0, 1.0, 2.0, 3.0, 4.0], [9.0, 9.0, 9.0, 9.0, 9.0]])
    region = np.array([[True] * 5, [False] * 5])
    pred = truth.copy()
    pred[0] += np.array([0.5, -0.5, 0.5, -0.5, 0.0])
    pred[1] = -100.0  # outside the region: must not count
    assert target_scale(truth, region) == (0.0, 4.0)
    assert region_mse(truth, pred, region) == pytest.approx(0.2)
    assert region_mae(truth, pred, region) == pytest.approx(0.4)
    assert region_psnr(truth, pred, region) == pytest.approx(10 * math.log10(16 / 0.2))
    # R^2 = 1 - SSE/SST = 1 - 1.0 / 10.0
    assert r_squared(truth, pred, region) == pytest.approx(0.9)
    assert region_psnr(truth, truth, region) == pytest.approx(100.0)  # capped, finite
    assert math.isnan(r_squared(np.ones(4), np.zeros(4), np.ones(4, bool)))


def test_ssim_is_the_core_map_on_the_truth_scale_averaged_over_the_region():
    truth, brain, _ = _phantom()
    rng = np.random.default_rng(0)
    pred = truth + rng.normal(0, 0.2, truth.shape)
    assert region_ssim(truth, truth, brain) == pytest.approx(1.0)
    lo, scale = target_scale(truth, brain)
    assert (lo, scale) == (0.5, 1.5)
    batch = lambda a: torch.from_numpy((a - lo) / scale)[None, None]  # noqa: E731
    # Only the region's voxels are scored: outside it the prediction counts as the truth.
    scored = np.where(brain, pred, truth)
    expected = float(ssim(batch(truth), batch(scored), data_range=1.0, observed=torch.from_numpy(brain)[None, None])[0])
    assert region_ssim(truth, pred, brain) == pytest.approx(expected)
    assert 0 < region_ssim(truth, pred, brain) < 0.9
    garbage_outside = np.where(brain, pred, 1e3)
    assert region_ssim(truth, garbage_outside, brain) == pytest.approx(expected)


def test_lesion_ratio_and_ring_by_hand():
    volume = np.array([0.0, 1.0, 1.0, 1.0, 3.0, 3.0, 1.0, 5.0])
    region = np.array([True] * 7 + [False])
    lesion = np.array([False, False, False, False, True, True, False, True])
    # lesion in the region: 3, 3 -> mean 3; the rest: 0, 1, 1, 1, 1 -> mean 0.8; above lo = 0: 3 / 0.8
    assert lesion_ratio(volume, lesion, region, lo=0.0) == pytest.approx(3.75)
    ring = lesion_ring(lesion & region, region, ring_voxels=1)
    assert ring.tolist() == [False, False, False, True, False, False, True, False]
    assert dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_perfect_synthesis_keeps_the_lesion():
    truth, brain, lesion = _phantom()
    scores = synthesis_scores(truth, truth, brain, lesion)
    assert set(scores) == set(SYNTHESIS_SCORES)
    assert scores["r2"] == pytest.approx(1.0) and scores["ssim"] == pytest.approx(1.0) and scores["mae"] == 0
    assert scores["lesion_ratio"] == pytest.approx(scores["lesion_ratio_true"])
    # lesion 2.0 against the rest of the brain above lo = 0.5; the rest mixes 1.0 and the 0.5 slab
    rest = truth[brain & ~lesion] - 0.5
    assert scores["lesion_ratio_true"] == pytest.approx(1.5 / rest.mean())
    assert scores["lesion_ratio_error"] == 0 and scores["lesion_contrast_error"] == 0 and scores["lesion_dice"] == 1.0


def test_a_volume_without_the_lesion_fails_every_lesion_score():
    truth, brain, lesion = _phantom()
    mean_image, _, _ = _phantom(contrast=0.0)
    scores = synthesis_scores(truth, mean_image, brain, lesion)
    assert scores["lesion_contrast_error"] == pytest.approx(1.0)
    assert scores["lesion_ratio"] == pytest.approx(0.5 / np.mean(mean_image[brain & ~lesion] - 0.5))  # (1.0 - lo) / rest
    assert scores["lesion_ratio_error"] > 0.25
    assert scores["lesion_dice"] == 0.0  # nothing passes the threshold


def test_half_the_contrast_and_a_shifted_lesion_score_as_expected():
    truth, brain, lesion = _phantom()
    faint, _, _ = _phantom(contrast=0.5)
    assert synthesis_scores(truth, faint, brain, lesion)["lesion_contrast_error"] == pytest.approx(0.5)
    # Threshold at 1.5: the faint lesion (1.5) is not above it anywhere.
    assert synthesis_scores(truth, faint, brain, lesion)["lesion_dice"] == 0.0
    shifted = np.roll(truth, 1, axis=0)
    # A cube of side 4 moved by one voxel along one axis overlaps 3/4 of itself: Dice = 2 * 48 / (64 + 64).
    assert synthesis_scores(truth, shifted, brain, lesion)["lesion_dice"] == pytest.approx(0.75)


def test_lesion_scores_are_nan_without_a_lesion_in_the_region_and_bad_input_is_named():
    truth, brain, lesion = _phantom()
    fov = np.zeros_like(brain)
    fov[2:6, 2:6, 2:6] = True  # a field of view that misses the lesion
    scores = synthesis_scores(truth, truth, fov, lesion)
    assert scores["r2"] == pytest.approx(1.0) and math.isnan(scores["lesion_dice"]) and math.isnan(scores["lesion_ratio"])
    assert math.isnan(synthesis_scores(truth, truth, brain)["lesion_contrast_error"])
    with pytest.raises(MetricError, match="region is empty"):
        synthesis_scores(truth, truth, np.zeros_like(brain))
    with pytest.raises(MetricError, match="one shape"):
        synthesis_scores(truth, truth[:-1], brain)


def test_outside_fov_fraction_counts_non_background_voxels():
    fov = np.zeros((4, 4), bool)
    fov[:2] = True
    pred = np.zeros((4, 4))
    pred[:2] = 0.7  # inside: anything goes
    assert outside_fov_fraction(pred, fov) == 0.0
    pred[3, :2] = 0.1
    assert outside_fov_fraction(pred, fov) == pytest.approx(2 / 8)
