r"""Product of Gaussian experts, with missing experts excluded and an optional prior expert.

For experts N(mu_j, sigma_j^2) the product is Gaussian with precision sum_j 1/sigma_j^2 and mean
sum_j w_j mu_j where w_j = (1/sigma_j^2) / sum_k (1/sigma_k^2). In log space:

    logvar = -logsumexp_j(-logvar_j),    w = softmax_j(-logvar_j)

which neither overflows for tiny variances nor divides by zero. A missing expert gets a weight of
exactly zero through ``-inf`` logits built with ``torch.where`` (never an in-place write into an
encoder's output, which would break autograd). The prior expert N(0, I) guarantees that every row
has at least one expert; without it, a row with no observed expert is an error.
"""

from __future__ import annotations

import torch

__all__ = ["product_of_experts"]


def product_of_experts(
    mus: torch.Tensor,
    logvars: torch.Tensor,
    present: torch.Tensor | None = None,
    with_prior: bool = True,
    prior_mu: torch.Tensor | None = None,
    prior_logvar: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine ``E`` Gaussian experts into one.

    Args:
        mus, logvars: ``(E, B, *D)`` expert parameters.
        present: ``(E, B)`` bool; ``False`` drops that expert for that sample. ``None`` keeps all.
        with_prior: add the prior expert (standard normal unless ``prior_mu``/``prior_logvar`` given,
            each broadcastable to ``(B, *D)``, e.g. a hierarchical level's conditional prior).

    Returns:
        ``(mu, logvar)`` of shape ``(B, *D)``.
    """
    if mus.shape != logvars.shape:
        raise ValueError(f"Expert means {tuple(mus.shape)} and log-variances {tuple(logvars.shape)} differ in shape.")
    n_experts, batch = mus.shape[:2]
    if present is None:
        present = torch.ones(n_experts, batch, dtype=torch.bool, device=mus.device)
    if with_prior:
        p_mu = torch.zeros_like(mus[0]) if prior_mu is None else prior_mu.expand_as(mus[0])
        p_lv = torch.zeros_like(logvars[0]) if prior_logvar is None else prior_logvar.expand_as(logvars[0])
        mus = torch.cat([mus, p_mu.unsqueeze(0)])
        logvars = torch.cat([logvars, p_lv.unsqueeze(0)])
        present = torch.cat([present, torch.ones(1, batch, dtype=torch.bool, device=present.device)])
    elif not bool(present.any(dim=0).all()):
        rows = torch.nonzero(~present.any(dim=0)).flatten().tolist()[:5]
        raise ValueError(f"Samples {rows} have no observed expert and no prior expert; their posterior is undefined.")
    keep = present.view(*present.shape, *([1] * (mus.dim() - 2)))
    precision_logits = torch.where(keep, -logvars, torch.full_like(logvars, float("-inf")))
    logvar = -torch.logsumexp(precision_logits, dim=0)
    weights = torch.softmax(precision_logits, dim=0)
    # where() rather than weights * mus: 0 * (a non-finite placeholder mean) must not give NaN.
    mu = torch.where(keep, weights * mus, torch.zeros_like(mus)).sum(dim=0)
    return mu, logvar
