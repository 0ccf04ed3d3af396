r"""Decoder likelihoods ``log p(x | z)`` named by ``decoders_dist`` and parameterised by
``decoder_dist_params``, and the masked, rescaled reconstruction term every model uses.

| name        | log-likelihood per element                           | parameter      |
|-------------|------------------------------------------------------|----------------|
| normal      | -1/2 ((x - x_hat)/s)^2 - log s - 1/2 log 2 pi        | scale s (1.0)  |
| laplace     | -|x - x_hat|/s - log 2s                              | scale s (1.0)  |
| bernoulli   | x log sigmoid(x_hat) + (1-x) log(1 - sigmoid(x_hat)) | x_hat = logits |
| categorical | sum_k t_k log_softmax(x_hat)_k over dim 1            | (none)         |

The scale s of normal and laplace decoders is set by ``decoder_scale`` (:data:`DecoderScale`):

* ``fixed``: the ``scale`` of ``decoder_dist_params`` (1 by default, the seed's behaviour). On z-scored
  images s = 1 makes the reconstruction term weak against the KL, and synthesis regresses to the mean.
* ``learned``: one log-scale per modality, a parameter trained with the ELBO.
* ``analytic``: the optimum of the ELBO over a shared scale, computed from the batch (sigma-VAE,
  Rybkin et al. 2021, arXiv 2006.13202): s^2 = MSE for normal, s = mean |x - x_hat| for laplace,
  over the observed voxels of the observed samples only. The decoder's gradient is then that of
  D/2 log MSE: the better the fit, the more reconstruction weighs against the KL, with no beta to tune.

Both calibrated scales are soft-floored at log s = -6 (:func:`soft_floor`), as the sigma-VAE code does,
so voxels reconstructed exactly (the constant background outside an ultrasound sector) cannot drive
the likelihood to infinity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from core.models._shared.gaussian import sum_event

__all__ = [
    "DecoderDistribution",
    "DecoderScale",
    "DISTRIBUTIONS",
    "SCALED_DISTRIBUTIONS",
    "elementwise_log_likelihood",
    "reconstruction_log_likelihood",
    "analytic_log_scale",
    "soft_floor",
    "mean_of",
]

DecoderDistribution = Literal["normal", "laplace", "bernoulli", "categorical"]
DecoderScale = Literal["fixed", "learned", "analytic"]
DISTRIBUTIONS: tuple[str, ...] = ("normal", "laplace", "bernoulli", "categorical")
SCALED_DISTRIBUTIONS: tuple[str, ...] = ("normal", "laplace")
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
MIN_LOG_SCALE = -6.0


def soft_floor(log_scale: torch.Tensor, floor: float = MIN_LOG_SCALE) -> torch.Tensor:
    """``floor + softplus(log_scale - floor)``: the identity well above ``floor``, never below it."""
    return floor + F.softplus(log_scale - floor)


def _scale_terms(scale: float | torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """(scale, log scale) for a float or a tensor scale."""
    if isinstance(scale, torch.Tensor):
        return scale, scale.log()
    return scale, math.log(scale)


def elementwise_log_likelihood(
    dist: str, x: torch.Tensor, x_hat: torch.Tensor, params: Mapping[str, float | torch.Tensor] | None = None
) -> torch.Tensor:
    """Per-element log-likelihood of ``x`` under the decoder output ``x_hat`` (broadcast).

    ``params['scale']`` may be a tensor (a calibrated scale) as well as a float.
    """
    params = params or {}
    if dist in SCALED_DISTRIBUTIONS:
        scale, log_scale = _scale_terms(params.get("scale", 1.0))
        if dist == "normal":
            return -0.5 * ((x - x_hat) / scale).pow(2) - log_scale - HALF_LOG_2PI
        return -(x - x_hat).abs() / scale - log_scale - math.log(2)
    if dist == "bernoulli":
        return -F.binary_cross_entropy_with_logits(x_hat, x.expand_as(x_hat), reduction="none")
    if dist == "categorical":
        # Class scores on dim -C of the event (channel dim of an image, last dim of a vector).
        class_dim = 1 if x_hat.dim() > 2 else -1
        return x.expand_as(x_hat) * torch.log_softmax(x_hat, dim=class_dim)
    raise ValueError(f"Unknown decoder distribution '{dist}'; choose one of {DISTRIBUTIONS}.")


def reconstruction_log_likelihood(
    dist: str,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    params: Mapping[str, float | torch.Tensor] | None = None,
    rescale: float = 1.0,
    observed_voxels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``rescale * sum over the observed elements of log p(x | x_hat)``, one value per sample.

    ``x`` is ``(B, *shape)``; ``x_hat`` is ``(B, *shape)`` or ``(N, B, *shape)`` for N latent samples,
    and the result is ``(B,)`` or ``(N, B)``. ``observed_voxels`` (``(B, *shape)`` bool) drops elements
    that were never observed (outside the ultrasound sector) with ``torch.where``, so their
    placeholder values cannot leak into the loss or its gradient.
    """
    event_dims = x.dim() - 1
    log_p = elementwise_log_likelihood(dist, x, x_hat, params)
    if observed_voxels is not None:
        log_p = torch.where(observed_voxels.expand_as(log_p), log_p, torch.zeros((), dtype=log_p.dtype, device=log_p.device))
    return rescale * sum_event(log_p, event_dims)


def analytic_log_scale(
    dist: str,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    observed_samples: torch.Tensor,
    observed_voxels: torch.Tensor | None = None,
) -> torch.Tensor:
    """log of the batch-optimal shared scale (sigma-VAE), soft-floored; a scalar tensor with gradient.

    normal: log sqrt(mean (x - x_hat)^2); laplace: log mean |x - x_hat|; the mean runs over the voxels
    of the samples in ``observed_samples`` (``(B,)`` bool) that ``observed_voxels`` keeps, across any
    leading latent-sample dimension of ``x_hat``. A batch with nothing observed gives log s = 0.
    """
    if dist not in SCALED_DISTRIBUTIONS:
        raise ValueError(f"A calibrated scale applies to normal and laplace decoders, not '{dist}'.")
    error = (x - x_hat).pow(2) if dist == "normal" else (x - x_hat).abs()
    keep = observed_samples.reshape(-1, *([1] * (x.dim() - 1))).expand_as(x)
    if observed_voxels is not None:
        keep = keep & observed_voxels.expand_as(x)
    keep = keep.expand_as(error).to(error.dtype)
    count = keep.sum()
    mean_error = (error * keep).sum() / count.clamp_min(1)
    log_scale = 0.5 * mean_error.clamp_min(1e-12).log() if dist == "normal" else mean_error.clamp_min(1e-12).log()
    return torch.where(count > 0, soft_floor(log_scale), torch.zeros_like(log_scale))


def mean_of(dist: str, x_hat: torch.Tensor) -> torch.Tensor:
    """The expected value of the decoder distribution: what imputation shows for a modality."""
    if dist == "bernoulli":
        return torch.sigmoid(x_hat)
    if dist == "categorical":
        return torch.softmax(x_hat, dim=1 if x_hat.dim() > 2 else -1)
    return x_hat
