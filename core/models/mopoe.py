r"""MoPoE: a mixture of products of experts over subsets of the modalities (Sutter et al., 2021).

Each subset s of the modalities has a product-of-experts posterior q_s(z | x_s) \propto \prod_{m in s}
q_m(z | x_m), and the joint posterior is their mixture q(z | X) = 1/|S| \sum_{s in S} q_s(z | x_s) over
the chosen subsets S (``subsets``; default every non-empty one). The generalized multimodal ELBO,
with one draw of z from the mixture (a subset picked at random per sample), is

    ELBO(X) = E_{q(z|X)} [ \sum_m \lambda_m log p(x_m | z) ] - \beta 1/|S| \sum_s KL(q_s(z|x_s) || p(z)),

the KL of the mixture being bounded by the mean KL of its components (Jensen), as in the paper.
With ``modalities_specific_dim`` each modality also has a private latent w_m ~ q(w_m | x_m), its decoder
reads [z, w_m], and the ELBO gains - \beta_style \sum_m KL(q(w_m|x_m) || N(0, I)).

The N(0, I) expert enters the product of the full subset only, as in the authors' code (MultiVae too);
the paper's products have no prior expert.

Partially observed data: a subset is a component of a sample's mixture only if the sample has all its
modalities; its z comes from one of those, its KL averages over them, and only its observed modalities
are reconstructed (and have a private KL). The loss averages over the samples with at least one
available subset.

Where MultiVae's code differs, this follows the paper: the components are drawn at random per sample
(MultiVae assigns batch slices in order when the batch is complete), the style KL is weighted by
``beta_style`` alone (MultiVae also multiplies it by ``beta``), the loss of an incomplete batch is a
mean over the samples it covers, ``encode(..., return_mean=True)`` returns the mean of the distribution
that ``encode`` samples from, and ``generate_from_prior`` draws the private latents too (MultiVae's
decoding of its prior samples fails with private latents).

References:
    Sutter, Daunhawer & Vogt, "Generalized Multimodal ELBO", ICLR 2021. https://arxiv.org/abs/2105.02470
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
from core.models._shared.mixture import draw_components, mixture_log_prob
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.poe import product_of_experts
from core.models._shared.private_latents import PrivateLatentDecoding
from core.models._shared.subsets import all_subsets, subset_name
from core.models.base import MultimodalVAE, sample_latent
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, ConfigError, advanced
from core.models.registry import register_model
from core.nn.base import as_gaussian, evaluation_mode
from core.nn.default_architectures import default_decoder, default_encoder
from core.nn.multilatent import SharedPrivateEncoder, as_shared_and_private

__all__ = ["MoPoEConfig", "MoPoE"]

Gaussian = tuple[torch.Tensor, torch.Tensor]


@dataclass(config=MODEL_CONFIG_DICT)
class MoPoEConfig(BaseMultiVAEConfig):
    """Config of :class:`MoPoE` (MultiVae's ``MoPoEConfig``)."""

    subsets: list[list[str]] | dict[str, list[str]] | None = Field(
        None,
        **advanced("Subsets whose products of experts form the mixture, e.g. [['T1', 'T2'], ['T1'], ['T2']]; None: all."),
    )
    beta: float = Field(1.0, ge=0, description="Weight of the KL divergence of the shared latent.")
    beta_style: float = Field(1.0, ge=0, **advanced("Weight of the KL divergences of the private latents."))
    modalities_specific_dim: dict[str, int] | None = Field(
        None, **advanced("Size of each modality's private latent w_m, {modality: size}; None: no private latents.")
    )

    @model_validator(mode="after")
    def _check_mopoe_fields(self) -> MoPoEConfig:
        for subset in self.subset_lists():
            if not subset:
                raise ValueError("subsets holds an empty subset; every subset needs at least one modality.")
        for m, dim in (self.modalities_specific_dim or {}).items():
            if dim < 1:
                raise ValueError(f"modalities_specific_dim['{m}'] = {dim}; a private latent needs at least 1 dimension.")
        if self.modalities:
            check_modality_names(self, self.modalities)
        return self

    def subset_lists(self) -> list[list[str]]:
        """``subsets`` as a list of lists (the values of a dict); empty when None."""
        subsets = self.subsets or []
        return [list(s) for s in (subsets.values() if isinstance(subsets, dict) else subsets)]


def check_modality_names(config: MoPoEConfig, modalities: Sequence[str]) -> None:
    """Raise if ``subsets`` or ``modalities_specific_dim`` names a modality not in ``modalities``."""
    named = {m for subset in config.subset_lists() for m in subset} | set(config.modalities_specific_dim or {})
    unknown = sorted(named - set(modalities))
    if unknown:
        raise ValueError(f"subsets or modalities_specific_dim name unknown modalities {unknown}; the modalities are {list(modalities)}.")


def pick_components(params: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """``params`` ``(C, B, D)`` of every component at the components ``choice`` ``(K, B)``: ``(K, B, D)``."""
    index = choice.unsqueeze(0).unsqueeze(-1).expand(1, *choice.shape, params.shape[-1])
    return params.unsqueeze(1).expand(-1, choice.shape[0], -1, -1).gather(0, index).squeeze(0)


@register_model
class MoPoE(PrivateLatentDecoding, MultimodalVAE):
    """Mixture of products of experts (the generalized multimodal ELBO); learns from incomplete data.

    Args:
        model_config: a :class:`MoPoEConfig`.
        encoders: modality -> encoder of q_m(z | x_m) (mean, log-variance); with private latents, of
            q_m(z | x_m) and q_m(w_m | x_m) (``style_embedding``, ``style_log_covariance`` too).
        decoders: modality -> decoder of p(x_m | z), or p(x_m | [z, w_m]) with private latents.
    """

    name = "MoPoE"
    config_class = MoPoEConfig
    supports_incomplete_data = True
    summary = "Mixture of products of experts over subsets (generalized multimodal ELBO); learns from incomplete data."

    def __init__(
        self,
        model_config: MoPoEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        self.private_dims = dict(model_config.modalities_specific_dim or {})
        super().__init__(model_config, encoders, decoders)
        try:
            check_modality_names(self.model_config, self.modalities)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        given = self.model_config.subset_lists()
        chosen = [tuple(m for m in self.modalities if m in s) for s in given] if given else all_subsets(self.modalities)
        self.mixture_subsets: list[tuple[str, ...]] = list(dict.fromkeys(chosen))

    def build_default_encoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        private = self.private_dims.get(modality)
        if private is None:
            return default_encoder(shape, self.latent_dim)
        return SharedPrivateEncoder(default_encoder(shape, self.latent_dim + private), self.latent_dim)

    def build_default_decoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return default_decoder(self.latent_dim + self.private_dims.get(modality, 0), shape)

    # ------------------------------------------------------------------ inference
    def unimodal_posteriors(self, batch: DatasetOutput) -> tuple[dict[str, Gaussian], dict[str, Gaussian]]:
        """``(shared, private)``: q_m(z | x_m) of every modality and q_m(w_m | x_m) where m has a w_m."""
        shared, private = {}, {}
        for m in self.modalities:
            output = self.encoders[m](batch.data[m])
            if m in self.private_dims:
                shared[m], private[m] = as_shared_and_private(output)
            else:
                shared[m] = as_gaussian(output)
        return shared, private

    def subset_posterior(self, experts: Mapping[str, Gaussian], subset: Sequence[str], present: torch.Tensor) -> Gaussian:
        """q_s(z | x_s): the product of the present experts of ``subset`` (``present`` ``(|s|, B)``), with
        the N(0, I) expert for a row that has the full set."""
        mus = torch.stack([experts[m][0] for m in subset])
        logvars = torch.stack([experts[m][1] for m in subset])
        if len(subset) == len(self.modalities):
            mus = torch.cat([mus, torch.zeros_like(mus[:1])])
            logvars = torch.cat([logvars, torch.zeros_like(logvars[:1])])
            present = torch.cat([present, present.all(0, keepdim=True)])
        return product_of_experts(mus, logvars, present, with_prior=False)

    def available_subsets(self, batch: DatasetOutput) -> torch.Tensor:
        """``(|S|, B)`` bool: the subsets whose modalities a sample all has."""
        return torch.stack([torch.stack([batch.masks[m] for m in s]).all(0) for s in self.mixture_subsets])

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
        """z ~ q_S(z | x_S), the product of experts of the conditioning modalities a sample has (with the
        prior expert when that is every modality), and, with private latents, w_m ~ q(w_m | x_m) for the
        observed conditioning modalities and N(0, I) for the others.

        Returns ``z`` of shape ``(B, D)`` for N = 1, ``(N, B, D)`` otherwise (``(N*B, D)`` with ``flatten``),
        and ``modalities_z`` of the same leading shape when the model has private latents.
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        shared, private = self.unimodal_posteriors(batch)
        mu, logvar = self.subset_posterior(shared, cond, torch.stack([batch.masks[m] for m in cond]))
        z = sample_latent(mu, logvar, N, return_mean, flatten)
        if not self.private_dims:
            return ModelOutput(z=z, one_latent_space=True)
        modalities_z = {}
        for m, dim in self.private_dims.items():
            prior = torch.zeros(batch.batch_size, dim, device=mu.device, dtype=mu.dtype)
            w_mu, w_logvar = private[m] if m in cond else (prior, prior)
            seen = (batch.masks[m] if m in cond else torch.zeros_like(batch.masks[m])).unsqueeze(-1)
            w_mu, w_logvar = torch.where(seen, w_mu, prior), torch.where(seen, w_logvar, prior)
            modalities_z[m] = sample_latent(w_mu, w_logvar, N, return_mean, flatten)
        return ModelOutput(z=z, modalities_z=modalities_z, one_latent_space=False)

    @torch.no_grad()
    def generate_from_prior(self, n_samples: int = 1, **kwargs: Any) -> ModelOutput:
        """z ~ N(0, I) ``(n_samples, latent_dim)`` and, with private latents, every w_m ~ N(0, I)."""
        z = torch.randn(n_samples, self.latent_dim, device=self.device)
        if not self.private_dims:
            return ModelOutput(z=z, one_latent_space=True)
        modalities_z = {m: self.sample_private_prior(m, z.shape[:-1]) for m in self.private_dims}
        return ModelOutput(z=z, modalities_z=modalities_z, one_latent_space=False)

    # ------------------------------------------------------------------ objective
    def mixture_components(self, batch: DatasetOutput, shared: Mapping[str, Gaussian]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mus, logvars)`` of every subset's product, ``(|S|, B, D)``, all experts included (rows lacking
        one of a subset's modalities are unavailable for it and masked by the caller)."""
        components = []
        for s in self.mixture_subsets:
            everyone = torch.ones(len(s), batch.batch_size, dtype=torch.bool, device=batch.masks[s[0]].device)
            components.append(self.subset_posterior(shared, s, everyone))
        return torch.stack([mu for mu, _ in components]), torch.stack([lv for _, lv in components])

    def decode_for_loss(self, modality: str, z: torch.Tensor, private: Mapping[str, Gaussian]) -> torch.Tensor:
        """Decoder parameters of p(x_m | z) or p(x_m | [z, w_m]) with a fresh w_m ~ q(w_m | x_m)."""
        if modality in private:
            z = torch.cat([z, rsample(*private[modality])], dim=-1)
        return self.decoder_output(modality, z)

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The negative generalized ELBO of the module docstring, averaged over the samples it covers.

        Terms: ``recon`` (-sum_m lambda_m log p(x_m|z)), ``kl`` (the mean KL of the available subsets),
        ``kl[S]`` per subset (over the samples that have it) and ``kl_private[m]`` with private latents.
        """
        cfg = self.model_config
        batch = self.prepare_batch(inputs)
        shared, private = self.unimodal_posteriors(batch)
        mus, logvars = self.mixture_components(batch, shared)
        available = self.available_subsets(batch)  # (|S|, B)
        covered = available.any(0)
        n_available = available.sum(0).clamp_min(1)
        zero = torch.zeros((), device=mus.device)

        choice = draw_components(available).unsqueeze(0)  # one component per sample
        z = rsample(pick_components(mus, choice)[0], pick_components(logvars, choice)[0])
        recon = sum(self.reconstruction_log_likelihood(batch, m, self.decode_for_loss(m, z, private)) for m in self.modalities)

        kl_subsets = torch.where(available, kl_standard_normal(mus, logvars), zero)  # (|S|, B)
        kl = kl_subsets.sum(0) / n_available
        kl_private = {m: torch.where(batch.masks[m], kl_standard_normal(*private[m]), zero) for m in private}
        per_sample = -recon + cfg.beta * kl + cfg.beta_style * sum(kl_private.values(), zero)
        n_covered = covered.sum().clamp_min(1)

        def mean(values: torch.Tensor) -> torch.Tensor:
            return (torch.where(covered, values, zero).sum() / n_covered).detach()

        terms = {"recon": mean(-recon), "kl": mean(kl), kl_per_dimension_term("z"): mean(kl) / self.latent_dim}
        for s, kl_s, has in zip(self.mixture_subsets, kl_subsets, available, strict=True):
            terms[f"kl[{subset_name(s)}]"] = (kl_s.sum() / has.sum().clamp_min(1)).detach()
        for m, kl_m in kl_private.items():
            terms[f"kl_private[{m}]"] = (kl_m.sum() / batch.masks[m].sum().clamp_min(1)).detach()
        loss = torch.where(covered, per_sample, zero).sum() / n_covered
        return LossOutput(loss=loss, terms=terms, batch_size=batch.batch_size)

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        r"""-\sum_i log p(X_i), importance sampling with the mixture q(z | X_i) q(w | X_i) as proposal.

        log p(X) ~ logsumexp_k [\sum_m log p(x_m | z_k, w_k) + log p(z_k, w_k) - log q(z_k, w_k | X)] - log K,
        each z_k from a component drawn among the sample's available subsets (rescaling not applied).
        An incomplete sample's estimate is of its observed modalities; one without any available subset
        adds nothing.
        """
        with evaluation_mode(self):
            batch = self.prepare_batch(inputs)
            shared, private = self.unimodal_posteriors(batch)
            mus, logvars = self.mixture_components(batch, shared)
            available = self.available_subsets(batch)

            def log_weights(k: int) -> torch.Tensor:
                choice = torch.stack([draw_components(available) for _ in range(k)])  # (k, B)
                z = rsample(pick_components(mus, choice), pick_components(logvars, choice))  # (k, B, D)
                log_q = mixture_log_prob(log_normal(z.unsqueeze(0), mus.unsqueeze(1), logvars.unsqueeze(1)), available)
                log_w = log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - log_q
                for m in self.modalities:
                    latent = z
                    if m in private:
                        w_mu, w_logvar = private[m]
                        w = rsample(w_mu, w_logvar, k).reshape(k, *w_mu.shape)
                        prior_minus_q = log_normal(w, torch.zeros_like(w), torch.zeros_like(w)) - log_normal(w, w_mu, w_logvar)
                        log_w = log_w + torch.where(batch.masks[m], prior_minus_q, torch.zeros_like(prior_minus_q))
                        latent = torch.cat([z, w], dim=-1)
                    log_w = log_w + self.reconstruction_log_likelihood(batch, m, self.decoder_output(m, latent), rescale=False)
                return log_w

            log_px = importance_sampled_log_px(log_weights, K, batch_size_K)
            # A sample with no available subset (custom subsets) has no proposal: it is left out.
            return -torch.where(available.any(0), log_px, torch.zeros_like(log_px)).sum()
