r"""Encoders with a shared and a private (modality-specific) latent space (DMVAE; MultiVae's
``BaseMultilatentEncoder``).

Such an encoder maps x_m to two diagonal Gaussians, returned as a :class:`MultiLatentEncoderOutput`:
q(z | x_m) over the shared space (``embedding``, ``log_covariance``) and q(w_m | x_m) over the
modality's private space (``style_embedding``, ``style_log_covariance``), the names MultiVae uses so
user modules port over. :func:`as_shared_and_private` also accepts a dict with those keys or a tuple
``(mu_z, logvar_z, mu_w, logvar_w)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from core.nn.base import BaseEncoder, EncoderOutput, as_gaussian

__all__ = ["MultiLatentEncoderOutput", "SharedPrivateEncoder", "as_shared_and_private"]

Gaussian = tuple[torch.Tensor, torch.Tensor]


class MultiLatentEncoderOutput(EncoderOutput):
    """``embedding``/``log_covariance`` of q(z | x) and ``style_embedding``/``style_log_covariance`` of q(w | x)."""


class SharedPrivateEncoder(BaseEncoder):
    """Any single-Gaussian encoder over ``shared_dim + private_dim`` dimensions, its heads split in two.

    The first ``shared_dim`` coordinates of the mean and log-variance heads parameterise q(z | x), the
    rest q(w | x): the same as four heads on one body, and any default architecture serves.
    """

    def __init__(self, encoder: nn.Module, shared_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.shared_dim = shared_dim

    def forward(self, x: torch.Tensor) -> MultiLatentEncoderOutput:
        mu, logvar = as_gaussian(self.encoder(x))
        d = self.shared_dim
        return MultiLatentEncoderOutput(
            embedding=mu[..., :d], log_covariance=logvar[..., :d],
            style_embedding=mu[..., d:], style_log_covariance=logvar[..., d:],
        )  # fmt: skip


def as_shared_and_private(output: Any) -> tuple[Gaussian, Gaussian]:
    """``((mu_z, logvar_z), (mu_w, logvar_w))`` from whatever a multi-latent encoder returned."""
    if isinstance(output, Mapping):
        keys = ("embedding", "log_covariance", "style_embedding", "style_log_covariance")
        if all(k in output for k in keys):
            return (output[keys[0]], output[keys[1]]), (output[keys[2]], output[keys[3]])
        raise TypeError(
            f"Encoder output has keys {sorted(output)}; an encoder with a private latent space returns "
            "'embedding', 'log_covariance', 'style_embedding' and 'style_log_covariance'."
        )
    if isinstance(output, (tuple, list)) and len(output) == 4:
        return (output[0], output[1]), (output[2], output[3])
    raise TypeError(
        "An encoder with a private latent space must return a MultiLatentEncoderOutput or "
        f"(mu_z, logvar_z, mu_w, logvar_w); got {type(output).__name__}."
    )
