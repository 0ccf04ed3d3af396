r"""DMVAE: private-shared disentangled multimodal VAE (Lee & Pavlovic, 2021).

Each modality m has a shared latent z and a private latent w_m; its decoder reads both,
p_theta(x_m | z, w_m), with priors N(0, I) on z and on every w_m. Each encoder returns two Gaussians,
q_m(z | x_m) and q_m(w_m | x_m). The shared posterior of the observed modalities is a product of
experts with the prior expert,

    q(z | X) \propto p(z) \prod_m q_m(z | x_m).

The objective (to minimise, per sample) sums a joint ELBO and one cross-modal ELBO per modality; each
reconstructs *every* modality from the shared code and that modality's own private code:

    L(X) = -ELBO(q(z|X)) - \sum_k ELBO(q_k(z|x_k)),
    ELBO(q) = E_{q(z) \prod_m q_m(w_m|x_m)} [ \sum_m \lambda_m \log p(x_m | z, w_m) ]
              - \beta KL(q(z) || p(z)) - \sum_m \beta_m KL(q_m(w_m|x_m) || p(w_m))

with one reparameterised sample per ELBO, averaged over the batch (``beta`` = 1, ``beta_m`` =
``modalities_specific_betas``, 1 by default). The cross-modal ELBOs teach a single modality's shared
code to explain the others, which is what cross-modal synthesis uses.

Incomplete data: only observed experts enter the product, only observed modalities are reconstructed
and have a private KL, and the ELBO of q_k counts for the samples that observe k.

Inference for a subset S: z ~ q(z | x_S) \propto p(z) \prod_{m in S} q_m(z|x_m); w_m ~ q_m(w_m|x_m) for
m in S and w_m ~ p(w_m) = N(0, I) otherwise (``modalities_z``). ``decode`` draws w_m from its prior for any
modality the embedding has no private code for, so codes from ``generate_from_prior`` and from the
latent samplers decode too.

Private spaces: ``modalities_specific_dim`` (one size for every modality, or one per modality) is
1 when not given, the value MultiVae's model falls back to. The collapse check watches the shared
latent only: a private space that carries nothing is a legitimate outcome when the modalities share all
their content.

References:
    Lee & Pavlovic, "Private-Shared Disentangled Multimodal VAE for Learning of Latent
    Representations", CVPR Workshops 2021. https://arxiv.org/abs/2012.13024
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from torch import nn

from core.data.dataset import DatasetOutput
from core.models._shared.annealing import TrainingProgress
from core.models._shared.free_bits import kl_per_dimension_term
from core.models._shared.gaussian import kl_standard_normal, log_normal, rsample
from core.models._shared.importance import importance_sampled_log_px
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.poe import product_of_experts
from core.models._shared.private_latents import PrivateLatentDecoding
from core.models.base import MultimodalVAE
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, advanced
from core.models.registry import register_model
from core.nn.default_architectures import default_decoder, default_encoder
from core.nn.multilatent import SharedPrivateEncoder, as_shared_and_private

__all__ = ["DMVAEConfig", "DMVAE"]

Gaussian = tuple[torch.Tensor, torch.Tensor]
DEFAULT_PRIVATE_DIM = 1


@dataclass(config=MODEL_CONFIG_DICT)
class DMVAEConfig(BaseMultiVAEConfig):
    """Config of :class:`DMVAE` (MultiVae's ``DMVAEConfig``)."""

    modalities_specific_dim: int | dict[str, int] | None = Field(
        None,
        description="Size of each modality's private latent space: one number for all, or {modality: size}. "
        f"Empty: {DEFAULT_PRIVATE_DIM}.",
    )
    modalities_specific_betas: dict[str, float] | None = Field(
        None, **advanced("Weight of each private KL, {modality: weight}; empty: 1 for every modality.")
    )
    beta: float = Field(1.0, ge=0, description="Weight of the KL divergence of the shared latent.")

    @model_validator(mode="after")
    def _check_private_spaces(self) -> DMVAEConfig:
        dims = self.modalities_specific_dim
        sizes = dims.values() if isinstance(dims, dict) else [] if dims is None else [dims]
        if any(s < 1 for s in sizes):
            raise ValueError(f"modalities_specific_dim = {dims}; every private space needs at least 1 dimension.")
        if any(b < 0 for b in (self.modalities_specific_betas or {}).values()):
            raise ValueError(f"modalities_specific_betas = {self.modalities_specific_betas}; weights must be >= 0.")
        names = self.modalities
        for key, value in (("modalities_specific_dim", dims), ("modalities_specific_betas", self.modalities_specific_betas)):
            if isinstance(value, dict) and names and set(value) != set(names):
                raise ValueError(f"{key} names {sorted(value)} but the modalities are {sorted(names)}; give one per modality.")
        return self

    def private_dim(self, modality: str) -> int:
        """Size of the private latent space of ``modality``."""
        dims = self.modalities_specific_dim
        if isinstance(dims, dict):
            return int(dims[modality])
        return DEFAULT_PRIVATE_DIM if dims is None else int(dims)

    def private_beta(self, modality: str) -> float:
        return float((self.modalities_specific_betas or {}).get(modality, 1.0))


@register_model
class DMVAE(PrivateLatentDecoding, MultimodalVAE):
    """Shared latent by a product of experts with the prior, plus a private latent per modality.

    Args:
        model_config: a :class:`DMVAEConfig`.
        encoders: modality -> encoder returning q(z | x_m) and q(w_m | x_m) (see
            :mod:`core.nn.multilatent`); default a shape-picked encoder with its heads split.
        decoders: modality -> decoder from ``latent_dim + modalities_specific_dim[m]`` (z and w_m
            concatenated in that order).
    """

    name = "DMVAE"
    config_class = DMVAEConfig
    supports_incomplete_data = True
    summary = "Shared latent (product of experts with the prior) and a private latent per modality; learns from incomplete data."
    ddp_find_unused_parameters = False  # every encoder and decoder takes part in every step

    def __init__(
        self,
        model_config: DMVAEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders)
        self.private_dims = {m: self.model_config.private_dim(m) for m in self.modalities}

    def build_default_encoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        size = self.latent_dim + self.model_config.private_dim(modality)
        return SharedPrivateEncoder(default_encoder(shape, size), self.latent_dim)

    def build_default_decoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return default_decoder(self.latent_dim + self.model_config.private_dim(modality), shape)

    # ------------------------------------------------------------------ inference
    def encode_modalities(self, batch: DatasetOutput, modalities: Sequence[str]) -> tuple[dict[str, Gaussian], dict[str, Gaussian]]:
        """``(shared, private)``: q_m(z | x_m) and q_m(w_m | x_m) of each modality, each ``(B, dim)``."""
        shared, private = {}, {}
        for m in modalities:
            shared[m], private[m] = as_shared_and_private(self.encoders[m](batch.data[m]))
        return shared, private

    def shared_posterior(self, batch: DatasetOutput, subset: Sequence[str], shared: Mapping[str, Gaussian]) -> Gaussian:
        r"""q(z | x_S) \propto p(z) \prod_{m in S, observed} q_m(z | x_m)."""
        mus = torch.stack([shared[m][0] for m in subset])
        logvars = torch.stack([shared[m][1] for m in subset])
        present = torch.stack([batch.masks[m] for m in subset])
        return product_of_experts(mus, logvars, present, with_prior=True)

    def encode(
        self,
        inputs: Any,
        cond_mod: str | Sequence[str] = "all",
        N: int = 1,
        return_mean: bool = False,
        flatten: bool = False,
        ignore_incomplete: bool = False,
        **kwargs: Any,
    ) -> ModelOutput:
        """``z`` ~ q(z | x_cond) and ``modalities_z`` {m: w_m} for every modality, each ``(B, dim)`` for
        N = 1, ``(N, B, dim)`` otherwise (``(N*B, dim)`` with ``flatten``).

        w_m comes from q_m(w_m | x_m) when m is a conditioning modality the sample has, and from its
        prior N(0, I) otherwise (zeros, its mean, with ``return_mean``).
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        shared, private = self.encode_modalities(batch, cond)
        mu, logvar = self.shared_posterior(batch, cond, shared)
        z = rsample(mu, logvar, N, return_mean)
        modalities_z = {}
        for m in self.modalities:
            prior = torch.zeros(batch.batch_size, self.private_dims[m], device=mu.device, dtype=mu.dtype)
            w_prior = rsample(prior, prior, N, return_mean)
            if m in cond:
                seen = batch.masks[m].view(-1, 1)
                modalities_z[m] = torch.where(seen, rsample(*private[m], N, return_mean), w_prior)
            else:
                modalities_z[m] = w_prior
        if flatten and N > 1:
            z = z.reshape(-1, z.shape[-1])
            modalities_z = {m: w.reshape(-1, w.shape[-1]) for m, w in modalities_z.items()}
        return ModelOutput(z=z, modalities_z=modalities_z, one_latent_space=False)

    def decode_with_private(self, modality: str, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Decoder parameters of p(x_m | z, w_m) for codes of shape ``(*lead, dim)``."""
        return self.decoder_output(modality, torch.cat([z, w], dim=-1))

    @torch.no_grad()
    def generate_from_prior(self, n_samples: int = 1, **kwargs: Any) -> ModelOutput:
        """z ~ N(0, I) ``(n_samples, latent_dim)`` and every w_m ~ N(0, I) ``(n_samples, dim_m)``."""
        z = torch.randn(n_samples, self.latent_dim, device=self.device)
        modalities_z = {m: torch.randn(n_samples, d, device=self.device) for m, d in self.private_dims.items()}
        return ModelOutput(z=z, modalities_z=modalities_z, one_latent_space=False)

    # ------------------------------------------------------------------ objective
    def negative_elbo(
        self, batch: DatasetOutput, posterior: Gaussian, private: Mapping[str, Gaussian]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample: -ELBO(q) of the module docstring, its reconstruction term and its shared KL."""
        mu, logvar = posterior
        z = rsample(mu, logvar)
        recon = torch.zeros_like(mu[:, 0])
        kl_private = torch.zeros_like(recon)
        for m in self.modalities:
            w = rsample(*private[m])
            recon = recon + self.reconstruction_log_likelihood(batch, m, self.decode_with_private(m, z, w))
            kl_w = kl_standard_normal(*private[m])
            kl_private = kl_private + self.model_config.private_beta(m) * torch.where(batch.masks[m], kl_w, 0.0)
        kl_shared = kl_standard_normal(mu, logvar)
        return -recon + self.model_config.beta * kl_shared + kl_private, recon, kl_shared

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The DMVAE loss of the module docstring, averaged over the batch.

        Terms: ``neg_elbo[joint]`` and ``neg_elbo[m]`` (the cross-modal ELBO of q_m, over the samples
        that observe m), ``recon`` and ``kl_prior`` of the joint ELBO, and ``kl_private[m]``.
        """
        batch = self.prepare_batch(inputs)
        shared, private = self.encode_modalities(batch, self.modalities)
        joint = self.shared_posterior(batch, self.modalities, shared)
        neg_joint, recon, kl_shared = self.negative_elbo(batch, joint, private)
        neg_elbos = {"joint": neg_joint}
        for k in self.modalities:
            neg_k, _, _ = self.negative_elbo(batch, shared[k], private)
            neg_elbos[k] = torch.where(batch.masks[k], neg_k, 0.0)
        loss = sum(neg_elbos.values()).mean()
        terms = {
            **{f"neg_elbo[{k}]": v.mean().detach() for k, v in neg_elbos.items()},
            "recon": -recon.mean().detach(),
            "kl_prior": kl_shared.mean().detach(),
            kl_per_dimension_term("z"): kl_shared.mean().detach() / self.latent_dim,
            **{
                f"kl_private[{m}]": (torch.where(batch.masks[m], kl_standard_normal(*private[m]), 0.0).sum()
                                     / batch.masks[m].sum().clamp_min(1)).detach()
                for m in self.modalities
            },
        }  # fmt: skip
        return LossOutput(loss=loss, terms=terms, batch_size=batch.batch_size)

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        r"""-\sum_i log p(X_i), importance sampling with q(z|X) \prod_m q_m(w_m|x_m) as proposal:

            log p(X) ~ logsumexp_k [ \sum_m (log p(x_m | z_k, w_mk) + log p(w_mk) - log q_m(w_mk | x_m))
                                     + log p(z_k) - log q(z_k | X) ] - log K

        (rescaling not applied). For an incomplete sample, the marginal likelihood of its observed
        modalities: a missing modality's private code integrates out.
        """
        batch = self.prepare_batch(inputs)
        shared, private = self.encode_modalities(batch, self.modalities)
        mu, logvar = self.shared_posterior(batch, self.modalities, shared)

        def log_weights(k: int) -> torch.Tensor:
            z = rsample(mu, logvar, k).reshape(k, *mu.shape)
            log_w = log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - log_normal(z, mu, logvar)
            for m in self.modalities:
                mu_w, lv_w = private[m]
                w = rsample(mu_w, lv_w, k).reshape(k, *mu_w.shape)
                log_ratio = log_normal(w, torch.zeros_like(w), torch.zeros_like(w)) - log_normal(w, mu_w, lv_w)
                log_px = self.reconstruction_log_likelihood(batch, m, self.decode_with_private(m, z, w), rescale=False)
                log_w = log_w + log_px + torch.where(batch.masks[m], log_ratio, 0.0)
            return log_w

        return -importance_sampled_log_px(log_weights, K, batch_size_K).sum()
