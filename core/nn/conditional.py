r"""Conditional decoders p(x | z, c): a latent code plus the conditioning modalities (CVAE).

A conditional decoder is called as ``decoder(z, cond)`` with ``z`` of shape ``(n, D)`` and ``cond`` the
dict ``{modality: tensor (n, *shape)}`` of the conditioning modalities, and returns a
:class:`~core.nn.base.DecoderOutput` (or a tensor) with the parameters of p(x | z, c), MultiVae's
``BaseConditionalDecoder`` interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from core.nn.base import BaseDecoder, DecoderOutput, as_gaussian, as_reconstruction
from core.nn.default_architectures import default_decoder, default_encoder

__all__ = ["BaseConditionalDecoder", "ConditionalDecoder"]


class BaseConditionalDecoder(BaseDecoder):
    """Base class for conditional decoders; ``forward(z, cond)`` returns a DecoderOutput."""


class ConditionalDecoder(BaseConditionalDecoder):
    r"""p(x | z, c) from shape-picked default networks.

    Each conditioning modality is summarised by its own default encoder (mean and log-variance heads
    of ``embedding_dim`` each, both used), the summaries are concatenated with z and the default decoder
    of x's shape maps the result to x:

        x_hat = decoder([z, mu_1(c_1), logvar_1(c_1), ..., mu_K(c_K), logvar_K(c_K)])

    Summarising rather than flattening the conditioning volumes keeps the decoder small for images.

    Args:
        latent_dim: size of z.
        output_shape: per-sample shape of x.
        cond_dims: conditioning modality -> per-sample shape.
        embedding_dim: size of each summary head; default ``latent_dim``.
    """

    def __init__(
        self, latent_dim: int, output_shape: Sequence[int], cond_dims: Mapping[str, Sequence[int]], embedding_dim: int | None = None
    ) -> None:
        super().__init__()
        size = embedding_dim or latent_dim
        self.cond_modalities = list(cond_dims)
        self.branches = nn.ModuleDict({m: default_encoder(shape, size) for m, shape in cond_dims.items()})
        self.decoder = default_decoder(latent_dim + 2 * size * len(self.cond_modalities), output_shape)

    def forward(self, z: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> DecoderOutput:
        summaries = [torch.cat(as_gaussian(self.branches[m](cond[m])), dim=-1) for m in self.cond_modalities]
        return DecoderOutput(reconstruction=as_reconstruction(self.decoder(torch.cat([z, *summaries], dim=-1))))
