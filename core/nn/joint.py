r"""Joint encoders: one Gaussian q(z | x_1, ..., x_M) from every modality at once (JMVAE, JNF).

A joint encoder takes the dict ``{modality: x_m}`` of a complete batch and returns an
:class:`~core.nn.base.EncoderOutput` (``embedding`` = mean, ``log_covariance`` = log-variance).
User modules may subclass :class:`BaseJointEncoder` or be any ``nn.Module`` with that call signature
returning what :func:`~core.nn.base.as_gaussian` accepts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from core.nn.base import EncoderOutput, as_gaussian
from core.nn.default_architectures import mlp

__all__ = ["BaseJointEncoder", "MultipleHeadJointEncoder"]


class BaseJointEncoder(nn.Module):
    """Base class for joint encoders; ``forward(data: dict[str, Tensor])`` returns an EncoderOutput."""


class MultipleHeadJointEncoder(BaseJointEncoder):
    r"""Joint encoder built from the unimodal encoders' architecture.

    Each modality goes through a *separate copy* of its unimodal encoder (no weights are shared with
    the unimodal encoders, which JMVAE and JNF train towards this joint posterior). The outputs of
    every copy are concatenated and an MLP maps them to the joint Gaussian:

        h = [mu_1(x_1), logvar_1(x_1), ..., mu_M(x_M), logvar_M(x_M)],    (mu, logvar) = heads(MLP(h))

    MultiVae's ``MultipleHeadJointEncoder`` keeps only the mean heads, which leaves the copied
    log-variance heads without gradient; using both makes every copied parameter a trained one.

    Args:
        encoders: modality -> unimodal encoder (deep-copied; the originals are left untouched).
        latent_dim: size of the joint latent space.
        embedding_dim: size of each copy's mean (and log-variance) output; default ``latent_dim``, the
            size of the unimodal posteriors of the models that use this encoder.
        hidden: widths of the MLP after the concatenation.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        latent_dim: int,
        embedding_dim: int | None = None,
        hidden: Sequence[int] = (512, 512),
    ) -> None:
        super().__init__()
        self.modalities = list(encoders)
        self.branches = nn.ModuleDict({m: copy.deepcopy(encoder) for m, encoder in encoders.items()})
        n_features = 2 * len(self.modalities) * (embedding_dim or latent_dim)
        self.body = nn.Sequential(mlp([n_features, *hidden]), nn.SiLU())
        self.mean = nn.Linear(hidden[-1], latent_dim)
        self.logvar = nn.Linear(hidden[-1], latent_dim)

    def forward(self, data: Mapping[str, torch.Tensor]) -> EncoderOutput:
        h = torch.cat([torch.cat(as_gaussian(self.branches[m](data[m])), dim=-1) for m in self.modalities], dim=-1)
        h = self.body(h)
        return EncoderOutput(embedding=self.mean(h), log_covariance=self.logvar(h))
