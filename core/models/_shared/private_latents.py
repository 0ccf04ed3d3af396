r"""Decoding for models with a private latent w_m per modality beside the shared z (MoPoE with
``modalities_specific_dim``, MMVAE+, CMVAE): the decoder of modality m reads the concatenation [z, w_m].

An ``encode`` output carries ``z`` and ``modalities_z`` = {m: w_m} (``one_latent_space=False``). A
modality the embedding has no private code for (a sampler that only models z, say) gets one drawn
from the model's private prior, :meth:`PrivateLatentDecoding.sample_private_prior`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.models._shared.likelihoods import mean_of
from core.models._shared.outputs import ModelOutput
from core.nn.base import evaluation_mode

__all__ = ["PrivateLatentDecoding"]


class PrivateLatentDecoding:
    """Mixin for a :class:`~core.models.base.MultimodalVAE` whose ``private_dims`` maps each modality
    with a private latent to its size (an empty mapping: one latent space, the base behaviour)."""

    private_dims: dict[str, int]

    def sample_private_prior(self, modality: str, lead: torch.Size) -> torch.Tensor:
        """w_m ~ p(w_m), shape ``(*lead, dim_m)``; N(0, I) unless the model overrides it."""
        return torch.randn(*lead, self.private_dims[modality], device=self.device)

    def decoder_parameters(self, embedding: ModelOutput, modality: str) -> torch.Tensor:
        """Parameters of p(x_m | z, w_m) for an ``encode`` or ``generate_from_prior`` output."""
        z = embedding["z"]
        if modality not in self.private_dims:
            return self.decoder_output(modality, z)
        w = (embedding.get("modalities_z") or {}).get(modality)
        if w is None:
            w = self.sample_private_prior(modality, z.shape[:-1]).to(z.dtype)
        return self.decoder_output(modality, torch.cat([z, w], dim=-1))

    @torch.no_grad()
    def decode(self, embedding: ModelOutput, modalities: str | Sequence[str] = "all", **kwargs: Any) -> ModelOutput:
        """Mean of p(x_m | z, w_m) for each requested modality."""
        with evaluation_mode(self):
            return ModelOutput(
                {
                    m: mean_of(self.model_config.decoder_distribution(m), self.decoder_parameters(embedding, m))
                    for m in self.resolve_modalities(modalities)
                }
            )
