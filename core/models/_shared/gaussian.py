r"""Diagonal Gaussian helpers: closed-form KLs, densities and reparameterised sampling.

A Gaussian is always carried as ``(mu, logvar)`` with ``logvar = log sigma^2``; the last dimension is
the latent dimension, or every non-batch dimension for spatial latents (``sum_dims``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["kl_standard_normal", "kl_normal", "kl_per_dimension", "log_normal", "rsample", "sum_event"]

LOG_2PI = math.log(2 * math.pi)


def sum_event(x: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Sum the trailing ``event_dims`` dimensions (the latent or data dimensions of one sample)."""
    return x.flatten(start_dim=x.dim() - event_dims).sum(-1) if event_dims > 0 else x


def _kl_elementwise(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor | None = None, logvar_p: torch.Tensor | None = None
) -> torch.Tensor:
    """The Gaussian KL of every latent element, before any sum; the prior is N(0, 1) when ``mu_p`` is None."""
    if mu_p is None or logvar_p is None:
        return -0.5 * (1 + logvar_q - mu_q.pow(2) - logvar_q.exp())
    return 0.5 * (logvar_p - logvar_q + (logvar_q - logvar_p).exp() + (mu_q - mu_p).pow(2) * (-logvar_p).exp() - 1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor, event_dims: int = 1) -> torch.Tensor:
    r"""KL(N(mu, e^logvar) || N(0, I)) = -1/2 sum(1 + logvar - mu^2 - e^logvar), per sample."""
    return sum_event(_kl_elementwise(mu, logvar), event_dims)


def kl_normal(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor, event_dims: int = 1
) -> torch.Tensor:
    r"""KL(N(mu_q, e^lq) || N(mu_p, e^lp)) = 1/2 sum(lp - lq + e^(lq-lp) + (mu_q-mu_p)^2 e^-lp - 1)."""
    return sum_event(_kl_elementwise(mu_q, logvar_q, mu_p, logvar_p), event_dims)


def kl_per_dimension(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor | None = None, logvar_p: torch.Tensor | None = None
) -> torch.Tensor:
    r"""KL per sample and latent dimension, ``(B, D)``: a feature-map latent ``(B, C, *grid)`` is
    flattened, so D = C x grid. The prior is N(0, I) when ``mu_p`` is None. Free bits work on this."""
    return _kl_elementwise(mu_q, logvar_q, mu_p, logvar_p).flatten(start_dim=1)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, event_dims: int = 1) -> torch.Tensor:
    """log N(z; mu, e^logvar), summed over the event dimensions."""
    return sum_event(-0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * (-logvar).exp()), event_dims)


def rsample(mu: torch.Tensor, logvar: torch.Tensor, n: int = 1, return_mean: bool = False) -> torch.Tensor:
    """Reparameterised samples: shape ``mu.shape`` when ``n == 1``, else ``(n, *mu.shape)`` (sample-major)."""
    if return_mean:
        return mu if n == 1 else mu.unsqueeze(0).expand(n, *mu.shape)
    std = (0.5 * logvar).exp()
    if n == 1:
        return mu + std * torch.randn_like(mu)
    eps = torch.randn((n, *mu.shape), dtype=mu.dtype, device=mu.device)
    return mu.unsqueeze(0) + std.unsqueeze(0) * eps
