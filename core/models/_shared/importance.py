r"""Importance-weighted bounds (IWAE) and the doubly reparameterised gradient (DReG).

With K samples z_k ~ q(z | x) and log-weights lw_k = log p(x, z_k) - log q(z_k | x), the IWAE bound
(Burda et al. 2016) is

    L_K = log (1/K) \sum_k exp(lw_k)  <=  log p(x).

Its score-function part makes the encoder gradient noisier as K grows. DReG (Tucker et al. 2019)
replaces the encoder gradient by the unbiased, lower-variance

    \sum_k \tilde w_k^2 (\partial lw_k / \partial z_k)(\partial z_k / \partial \phi),
    \tilde w_k = softmax_k(lw_k),

where lw_k evaluates q with its parameters detached (only the path through z_k remains). The decoder
and prior gradients stay those of L_K: \sum_k \tilde w_k \partial lw_k / \partial \theta.

References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    https://arxiv.org/abs/1509.00519
    Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for Monte Carlo
    Objectives", ICLR 2019. https://arxiv.org/abs/1810.04152
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from core.models._shared.gaussian import log_normal, rsample

__all__ = ["log_mean_exp", "iwae_bound", "dreg_bound", "importance_sampled_log_px", "importance_sampled_nll"]


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(x_k) along ``dim``, computed stably."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def iwae_bound(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """L_K from log-weights ``(K, ...)``; its gradient is the plain IWAE gradient."""
    return log_mean_exp(log_w, dim)


def dreg_bound(log_w: torch.Tensor, latents: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    r"""L_K as a value, with the DReG gradient of the module docstring.

    Args:
        log_w: ``(K, B)`` log-weights, computed with the proposal's parameters **detached** (q is
            evaluated at z_k with stopped mean and scale).
        latents: the reparameterised samples z_k ``(K, B, ...)`` that ``log_w`` was computed from; a hook
            multiplies the gradient reaching each by \tilde w_k once more (hence \tilde w_k^2).
        dim: the sample dimension of ``log_w``.

    Returns:
        ``(B,)``: the value of L_K (as :func:`iwae_bound`); backpropagating it gives the DReG gradient.
    """
    weights = torch.softmax(log_w.detach(), dim=dim)
    for z in latents:
        if z.requires_grad:
            factor = weights.view(*weights.shape, *([1] * (z.dim() - weights.dim())))
            z.register_hook(lambda grad, factor=factor: grad * factor)
    surrogate = (weights * log_w).sum(dim)
    return iwae_bound(log_w.detach(), dim) + (surrogate - surrogate.detach())


def importance_sampled_log_px(log_weights: Callable[[int], torch.Tensor], K: int, batch_size_K: int) -> torch.Tensor:
    r"""log p(x_i) ~ log (1/K) \sum_k exp(lw_k), per sample ``(B,)``: what the models' ``compute_joint_nll``
    estimate, each with its own proposal q (MMVAE and MMVAE+ stratify theirs per expert instead).

    Args:
        log_weights: ``k -> (k, B)`` log-weights lw = log p(x, z) - log q(z | x) at ``k`` fresh draws z ~ q.
        K: number of importance samples; ``batch_size_K`` of them are drawn at a time (in order).
    """
    chunks = [log_weights(min(batch_size_K, K - start)) for start in range(0, K, batch_size_K)]
    return log_mean_exp(torch.cat(chunks), dim=0)


def importance_sampled_nll(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    log_likelihood: Callable[[torch.Tensor], torch.Tensor],
    K: int,
    batch_size_K: int,
) -> torch.Tensor:
    r"""-\sum_i log p(x_i) for a one-latent model with prior N(0, I), the proposal q = N(mu, exp(logvar)):

        log p(x) ~ logsumexp_k [log p(z_k) + log p(x | z_k) - log q(z_k | x)] - log K,  z_k ~ q.

    Args:
        mu, logvar: ``(B, D)`` parameters of the proposal.
        log_likelihood: ``(k, B, D)`` samples -> ``(k, B)`` log p(x | z), summed over the modalities.
        K: number of importance samples; ``batch_size_K`` of them are drawn and decoded at a time.
    """

    def log_weights(k: int) -> torch.Tensor:
        z = rsample(mu, logvar, k).reshape(k, *mu.shape)
        log_w = log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - log_normal(z, mu, logvar)
        return log_w + log_likelihood(z)

    return -importance_sampled_log_px(log_weights, K, batch_size_K).sum()
