"""Voxel errors and SSIM against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from core.metrics import gaussian_window_1d, mae, mse, psnr, ssim


def test_mse_mae_psnr_by_hand_with_an_observation_mask():
    x = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # (B=1, 2, 2)
    x_hat = torch.tensor([[[1.0, 1.0], [0.0, 7.0]]])
    assert mse(x, x_hat).item() == pytest.approx((1 + 0 + 4 + 16) / 4)
    assert mae(x, x_hat).item() == pytest.approx((1 + 0 + 2 + 4) / 4)
    observed = torch.tensor([[[True, True], [True, False]]])  # the 16 is outside the observed region
    assert mse(x, x_hat, observed).item() == pytest.approx(5 / 3)
    assert mae(x, x_hat, observed).item() == pytest.approx(1.0)
    assert psnr(x, x_hat, data_range=3.0, observed=observed).item() == pytest.approx(10 * math.log10(9 / (5 / 3)))


def test_no_observed_voxel_gives_nan_and_a_perfect_prediction_a_capped_psnr():
    x = torch.ones(2, 3)
    observed = torch.tensor([[False] * 3, [True] * 3])
    values = mse(x, x + 1, observed)
    assert math.isnan(values[0]) and values[1] == 1.0
    assert psnr(x, x, data_range=1.0).tolist() == pytest.approx([100.0, 100.0])


def _ssim_by_hand(x: list, y: list, weights: list, L: float) -> float:
    """SSIM at the single valid window position, from the formula with explicit weighted sums."""
    mx = sum(w * a for w, a in zip(weights, x, strict=True))
    my = sum(w * b for w, b in zip(weights, y, strict=True))
    vx = sum(w * a * a for w, a in zip(weights, x, strict=True)) - mx * mx
    vy = sum(w * b * b for w, b in zip(weights, y, strict=True)) - my * my
    cxy = sum(w * a * b for w, a, b in zip(weights, x, y, strict=True)) - mx * my
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def _gauss(size: int, sigma: float) -> list:
    raw = [math.exp(-((i - (size - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(size)]
    return [r / sum(raw) for r in raw]


def test_gaussian_window_is_normalised_and_symmetric():
    w = gaussian_window_1d(5, 1.5)
    assert w.sum().item() == pytest.approx(1.0)
    assert w.tolist() == pytest.approx(_gauss(5, 1.5))


def test_ssim_2d_matches_the_formula_on_a_3x3_image():
    x = [[0.1, 0.5, 0.9], [0.3, 0.2, 0.8], [0.7, 0.4, 0.6]]
    y = [[0.2, 0.5, 0.7], [0.1, 0.3, 0.9], [0.6, 0.6, 0.5]]
    g = _gauss(3, 1.5)
    weights = [g[i] * g[j] for i in range(3) for j in range(3)]
    expected = _ssim_by_hand(sum(x, []), sum(y, []), weights, L=1.0)
    got = ssim(torch.tensor(x)[None, None], torch.tensor(y)[None, None], data_range=1.0, window_size=3)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # The default 11-wide window shrinks to the 3x3 image, so the value is the same.
    assert ssim(torch.tensor(x)[None, None], torch.tensor(y)[None, None], data_range=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_ssim_3d_matches_the_formula_on_a_3x3x3_volume():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 3, generator=gen), torch.rand(3, 3, 3, generator=gen)
    g = _gauss(3, 1.5)
    weights = [g[i] * g[j] * g[k] for i in range(3) for j in range(3) for k in range(3)]
    expected = _ssim_by_hand(x.flatten().tolist(), y.flatten().tolist(), weights, L=2.0)
    got = ssim(x[None, None], y[None, None], data_range=2.0, window_size=3)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ssim_is_one_for_identical_images_and_averages_observed_centres_only():
    x = torch.rand(2, 2, 9, 9, generator=torch.Generator().manual_seed(1))
    assert ssim(x, x, data_range=1.0).tolist() == pytest.approx([1.0, 1.0])
    noisy = x.clone()
    noisy[:, :, :, 5:] += 0.5  # damage only the right part
    observed = torch.zeros_like(x, dtype=torch.bool)
    observed[:, :, :, :3] = True  # windows centred on columns 1-2 span columns 0-3, away from the damage
    full = ssim(noisy, x, data_range=1.0, window_size=3)
    left = ssim(noisy, x, data_range=1.0, window_size=3, observed=observed)
    assert (left > full).all()
    nothing = ssim(noisy, x, data_range=1.0, observed=torch.zeros_like(observed))
    assert torch.isnan(nothing).all()


def test_ssim_rejects_vectors_and_shape_mismatch():
    with pytest.raises(ValueError, match="images"):
        ssim(torch.rand(2, 5), torch.rand(2, 5), data_range=1.0)
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5), data_range=1.0)
