r"""The KL term with free bits, and the per-dimension KL that tells whether a latent is used.

Free bits (Kingma et al. 2016, IAF): the objective charges each latent dimension at least ``lambda``
nats, ``sum_d max(lambda, E[KL_d])`` with the expectation over the batch, so a dimension under lambda
gets no gradient pushing it further towards the prior. The KL that is *reported* stays the true one.
IAF floors each channel of a feature map (KL summed over the grid); a spatial latent here is floored
per channel and voxel instead, so the floor means the same for every level whatever its grid.
"""

from __future__ import annotations

import torch

__all__ = ["free_bits_kl", "COLLAPSE_TERM_PREFIX", "kl_per_dimension_term"]

COLLAPSE_TERM_PREFIX = "kl_per_dim"


def free_bits_kl(kl_dimensions: torch.Tensor, weights: torch.Tensor, free_bits: float) -> torch.Tensor:
    r"""``sum_p w_p KL_p`` with each dimension's weighted mean KL floored at ``free_bits`` nats.

    Args:
        kl_dimensions: ``(P, D)`` KL per (subset, sample) pair and latent dimension.
        weights: ``(P,)`` the weight of each pair in the loss (zero for pairs that do not count).
        free_bits: lambda in nats per dimension; 0 gives the plain weighted KL.
    """
    if free_bits <= 0:
        return (kl_dimensions.sum(-1) * weights).sum()
    total = weights.sum()
    mean_per_dimension = (kl_dimensions * weights.unsqueeze(-1)).sum(0) / total.clamp_min(torch.finfo(weights.dtype).tiny)
    return total * mean_per_dimension.clamp_min(free_bits).sum()


def kl_per_dimension_term(level: str) -> str:
    """The name of the monitored term holding the mean KL per latent dimension of ``level``.

    The trainer's collapse check reads every term with this prefix.
    """
    return f"{COLLAPSE_TERM_PREFIX}[{level}]"
