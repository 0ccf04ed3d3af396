r"""Mixtures of experts over the observed modalities (MMVAE, MMVAE+, CMVAE) or subsets (MoPoE).

For the experts E(i) observed for sample i, the mixture posterior is

    q(z | X_i) = 1/|E(i)| \sum_{e \in E(i)} q_e(z),

so an unobserved expert has weight exactly zero (``torch.where`` on the log-densities, never an
in-place write), and the mixture of a sample is that of the experts it has. A sample without any
observed expert has no posterior: its rows come back as 0 and the caller leaves them out of the loss.
"""

from __future__ import annotations

import torch

__all__ = ["mixture_log_prob", "draw_components"]


def _expand_present(present: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``present`` ``(E, B)`` broadcast to ``like`` ``(E, *lead, B)`` (lead: importance samples)."""
    return present.view(present.shape[0], *([1] * (like.dim() - 2)), present.shape[1]).expand_as(like)


def mixture_log_prob(log_probs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    r"""log (1/|E(i)|) \sum_{e \in E(i)} q_e(z) from the experts' log-densities.

    Args:
        log_probs: ``(E, *lead, B)`` log q_e(z) of each expert at the same points z.
        present: ``(E, B)`` bool, which experts sample i has.

    Returns:
        ``(*lead, B)``; 0 for a sample without any expert (no gradient reaches its experts).
    """
    keep = _expand_present(present, log_probs)
    has_expert = keep.any(0)
    # A sample with no expert keeps all its (finite) terms, so logsumexp and its gradient stay finite.
    logits = torch.where(keep | ~has_expert, log_probs, torch.full_like(log_probs, float("-inf")))
    count = present.sum(0).clamp_min(1).to(log_probs.dtype)
    mixture = torch.logsumexp(logits, dim=0) - count.log()
    return torch.where(has_expert, mixture, torch.zeros_like(mixture))


def draw_components(available: torch.Tensor) -> torch.Tensor:
    """One mixture component per sample, uniformly among those it has (one Monte-Carlo draw of z).

    Args:
        available: ``(C, B)`` bool, which components sample i has.

    Returns:
        ``(B,)`` component indices; 0 for a sample without any (the caller leaves it out).
    """
    scores = torch.where(available, torch.rand(available.shape, device=available.device), torch.full((), -1.0, device=available.device))
    return scores.argmax(0)
