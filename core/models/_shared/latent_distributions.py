r"""Latent posteriors and priors of the mixture models (MMVAE, MMVAE+, CMVAE), built from an
encoder's ``(mu, l)`` output as :mod:`torch.distributions` objects, so their losses read as equations.

| name                   | distribution   | scale from the encoder's l            |
|------------------------|----------------|---------------------------------------|
| ``laplace_with_softmax`` | Laplace(mu, b) | b = D softmax(l) + 1e-6 (over the D dims) |
| ``normal``             | N(mu, s^2)     | s = exp(l / 2)                        |
| ``normal_with_softplus`` | N(mu, s^2)     | s = softplus(l) + 1e-6                |

The softmax scale (Shi et al. 2019) fixes the scales' sum to D, which keeps the mixture's experts from
shrinking their scales without bound.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, Laplace, Normal

__all__ = ["LatentDistribution", "latent_scale", "latent_family", "latent_distribution", "detached"]

LatentDistribution = Literal["laplace_with_softmax", "normal", "normal_with_softplus"]
MIN_SCALE = 1e-6


def latent_scale(kind: str, log_scale: torch.Tensor) -> torch.Tensor:
    """The scale of the table above from an encoder's second output (its ``log_covariance``)."""
    if kind == "laplace_with_softmax":
        return F.softmax(log_scale, dim=-1) * log_scale.shape[-1] + MIN_SCALE
    if kind == "normal_with_softplus":
        return F.softplus(log_scale) + MIN_SCALE
    if kind == "normal":
        return (0.5 * log_scale).exp()
    raise ValueError(f"Unknown latent distribution '{kind}'; choose laplace_with_softmax, normal or normal_with_softplus.")


def latent_family(kind: str) -> type[Laplace] | type[Normal]:
    """The distribution class of ``kind``: built as ``family(mu, scale, validate_args=False)``."""
    return Laplace if kind == "laplace_with_softmax" else Normal


def latent_distribution(kind: str, mu: torch.Tensor, log_scale: torch.Tensor) -> Distribution:
    """The element-wise distribution of ``kind`` (sum ``log_prob`` over the last dim for a density)."""
    return latent_family(kind)(mu, latent_scale(kind, log_scale), validate_args=False)


def detached(q: Laplace | Normal) -> Laplace | Normal:
    """The same distribution with its parameters cut from the graph (DReG evaluates log q this way)."""
    return type(q)(q.loc.detach(), q.scale.detach(), validate_args=False)
