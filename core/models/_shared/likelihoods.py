r"""Decoder likelihoods ``log p(x | z)`` named by ``decoders_dist`` and parameterised by
``decoder_dist_params``, and the masked, rescaled reconstruction term every model uses.

| name        | log-likelihood per element                           | parameter      |
|-------------|------------------------------------------------------|----------------|
| normal      | -1/2 ((x - x_hat)/s)^2 - log s - 1/2 log 2 pi        | scale s (1.0)  |
| laplace     | -|x - x_hat|/s - log 2s                              | scale s (1.0)  |
| bernoulli   | x log sigmoid(x_hat) + (1-x) log(1 - sigmoid(x_hat)) | x_hat = logits |
| categorical | sum_k t_k log_softmax(x_hat)_k over dim 1            | (none)         |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from core.models._shared.gaussian import sum_event

__all__ = ["DecoderDistribution", "DISTRIBUTIONS", "elementwise_log_likelihood", "reconstruction_log_likelihood", "mean_of"]

DecoderDistribution = Literal["normal", "laplace", "bernoulli", "categorical"]
DISTRIBUTIONS: tuple[str, ...] = ("normal", "laplace", "bernoulli", "categorical")
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def elementwise_log_likelihood(
    dist: str, x: torch.Tensor, x_hat: torch.Tensor, params: Mapping[str, float] | None = None
) -> torch.Tensor:
    """Per-element log-likelihood of ``x`` under the decoder output ``x_hat`` (broadcast)."""
    params = params or {}
    if dist == "normal":
        scale = float(params.get("scale", 1.0))
        return -0.5 * ((x - x_hat) / scale).pow(2) - math.log(scale) - HALF_LOG_2PI
    if dist == "laplace":
        scale = float(params.get("scale", 1.0))
        return -(x - x_hat).abs() / scale - math.log(2 * scale)
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
    params: Mapping[str, float] | None = None,
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


def mean_of(dist: str, x_hat: torch.Tensor) -> torch.Tensor:
    """The expected value of the decoder distribution: what imputation shows for a modality."""
    if dist == "bernoulli":
        return torch.sigmoid(x_hat)
    if dist == "categorical":
        return torch.softmax(x_hat, dim=1 if x_hat.dim() > 2 else -1)
    return x_hat
