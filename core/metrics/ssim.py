r"""Structural similarity (SSIM) of images ``(B, C, H, W)`` and volumes ``(B, C, X, Y, Z)``.

With Gaussian-weighted local means, variances and covariance inside a window (Wang et al. 2004):

    SSIM(x, y) = \frac{(2 \mu_x \mu_y + C_1)(2 \sigma_{xy} + C_2)}{(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
    C_1 = (K_1 L)^2,\ C_2 = (K_2 L)^2

where the local statistics are weighted sums (no N/(N-1) correction) over a separable Gaussian
window of ``window_size`` voxels and standard deviation ``sigma`` per axis, computed with torch
convolutions ("valid" positions only, as in the paper). On an axis shorter than the window, the
window shrinks to the largest odd size that fits. The score of a sample is the mean of the SSIM map
over channels and over the window positions whose centre voxel is observed.

References:
    Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to structural
    similarity", IEEE TIP 2004. https://doi.org/10.1109/TIP.2003.819861

Example:
    >>> import torch
    >>> x = torch.rand(2, 1, 16, 16)
    >>> [round(v, 6) for v in ssim(x, x, data_range=1.0).tolist()]
    [1.0, 1.0]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window_1d", "ssim", "ssim_map"]


def gaussian_window_1d(size: int, sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised Gaussian weights of odd length ``size`` centred on the middle tap."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd number, got {size}.")
    offsets = torch.arange(size, dtype=dtype) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def _fit_window(window_size: int, length: int) -> int:
    size = min(window_size, length)
    return size if size % 2 == 1 else size - 1


def _filter(x: torch.Tensor, windows: list[torch.Tensor]) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of ``(B, C, *spatial)`` channel by channel."""
    channels = x.shape[1]
    dims = x.dim() - 2
    conv = F.conv2d if dims == 2 else F.conv3d
    for axis, window in enumerate(windows):
        shape = [1] * dims
        shape[axis] = window.numel()
        kernel = window.to(x).view(1, 1, *shape).expand(channels, 1, *shape)
        x = conv(x, kernel, groups=channels)
    return x


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """The local SSIM map ``(B, C, *valid)``, computed in float64."""
    if x.shape != y.shape:
        raise ValueError(f"ssim needs tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    dims = x.dim() - 2
    if dims not in (2, 3):
        raise ValueError(f"ssim takes (B, C, H, W) images or (B, C, X, Y, Z) volumes, got shape {tuple(x.shape)}.")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}.")
    x, y = x.double(), y.double()
    windows = [gaussian_window_1d(_fit_window(window_size, n), sigma) for n in x.shape[2:]]
    mu_x, mu_y = _filter(x, windows), _filter(y, windows)
    var_x = _filter(x * x, windows) - mu_x**2
    var_y = _filter(y * y, windows) - mu_y**2
    cov = _filter(x * y, windows) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float,
    observed: torch.Tensor | None = None,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean SSIM per sample ``(B,)``; ``observed`` (bool, x's shape) restricts it to observed centres.

    A sample with no observed window centre gives NaN.
    """
    values = ssim_map(x, y, data_range, window_size, sigma, k1, k2)
    if observed is None:
        return values.flatten(1).mean(1)
    crops = []
    for axis, valid in enumerate(values.shape[2:]):
        start = (x.shape[2 + axis] - valid) // 2
        crops.append(slice(start, start + valid))
    centres = observed.expand_as(x)[(slice(None), slice(None), *crops)].flatten(1)
    flat = values.flatten(1)
    count = centres.sum(1)
    total = torch.where(centres, flat, torch.zeros((), dtype=flat.dtype, device=flat.device)).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))
