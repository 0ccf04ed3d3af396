r"""MMVAE+: a mixture-of-experts shared latent u plus a private latent w_m per modality, with
auxiliary priors for cross-modal reconstruction (Palumbo, Daunhawer & Vogt, 2023).

Generative model p(u) \prod_m p(w_m) p_theta(x_m | u, w_m). Each modality's encoder gives q_m(u | x_m) and
q_m(w_m | x_m); the shared posterior is the mixture q(u | X) = 1/M \sum_m q_m(u | x_m). Expert m draws K
samples (u_k, w_k) and reconstructs itself from [u_k, w_k] and every other modality n from
[u_k, \tilde w_{n,k}] with \tilde w_n ~ r_n, a modality-specific auxiliary prior whose scale is learnt
(``learn_modality_prior``): the cross-reconstructions cannot lean on w_m and must use u. The objective
is the stratified importance-weighted bound with

    lw_{m,k} = \lambda_m log p(x_m | u_k, w_k) + \sum_{n != m} \lambda_n log p(x_n | u_k, \tilde w_{n,k})
               + \beta ( log p(u_k, w_k) - log q(u_k | X) - log q_m(w_k | x_m) ),

    L(X) = 1/M \sum_m log 1/K \sum_k exp lw_{m,k},

with DReG gradients (``loss='dreg_looser'``, default) or plain IWAE ones (``'iwae_looser'``), as in
:class:`~core.models.mmvae.MMVAE`. p(u, w) has zero mean and a scale learnt only with
``learn_shared_prior``. For translation (``encode`` from a subset), the private code of a modality
outside the subset comes from p(w) (``reconstruction_option='joint_prior'``, the paper's) or from
r_m (``'single_prior'``).

Partially observed data as in MMVAE: a sample's mixture holds the experts it has (1/|obs(i)|), only
its observed modalities are reconstructed, and the loss averages over the samples with a modality.

Where MultiVae's code differs, this follows the paper: ``generate_from_prior`` draws u ~ p(u) and an
independent w_m ~ p(w_m) for each modality (MultiVae draws one [u, w] and gives every modality the same
w), the joint likelihood is estimated with the private latents' own posteriors as proposals (MultiVae
reuses the training weights, whose r_n draws are not importance-weighted), each sample's expert is
drawn at random in ``encode`` (MultiVae draws one modality for the whole batch), the loss is a mean
over the batch (MultiVae sums), and ``modalities_specific_dim`` defaults to ``latent_dim`` (MultiVae
requires it).

References:
    Palumbo, Daunhawer & Vogt, "MMVAE+: Enhancing the Generative Quality of Multimodal VAEs without
    Compromises", ICLR 2023. https://openreview.net/forum?id=sdQGxouELX
    Shi, Siddharth, Paige & Torr, "Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
    Generative Models", NeurIPS 2019. https://arxiv.org/abs/1911.03393
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn
from torch.distributions import Distribution

from core.data.dataset import DatasetOutput
from core.models._shared.annealing import TrainingProgress
from core.models._shared.free_bits import kl_per_dimension_term
from core.models._shared.importance import dreg_bound, iwae_bound
from core.models._shared.latent_distributions import (
    LatentDistribution,
    detached,
    latent_distribution,
    latent_family,
    latent_scale,
)
from core.models._shared.mixture import mixture_log_prob
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.private_latents import PrivateLatentDecoding
from core.models.base import MultimodalVAE
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, advanced
from core.models.mmvae import IWAELoss, pick_expert_samples, stratified_log_likelihood
from core.models.registry import register_model
from core.nn.base import evaluation_mode
from core.nn.default_architectures import default_decoder, default_encoder
from core.nn.multilatent import SharedPrivateEncoder, as_shared_and_private

__all__ = ["MMVAEPlusConfig", "MMVAEPlus", "Posteriors"]

#: q_m(u | x_m) and q_m(w_m | x_m) of one modality.
Posteriors = tuple[Distribution, Distribution]


@dataclass(config=MODEL_CONFIG_DICT)
class MMVAEPlusConfig(BaseMultiVAEConfig):
    """Config of :class:`MMVAEPlus` (MultiVae's ``MMVAEPlusConfig``)."""

    K: int = Field(10, ge=1, description="Importance samples drawn from each expert per step (K of the IWAE bound).")
    prior_and_posterior_dist: LatentDistribution = Field(
        "laplace_with_softmax",
        **advanced("Family of priors and posteriors: Laplace with softmax-normalised scales (the paper) or normal."),
    )
    learn_shared_prior: bool = Field(False, **advanced("Learn the scale of the prior p(u, w) (its mean stays 0)."))
    learn_modality_prior: bool = Field(
        True, **advanced("Learn the scale of each auxiliary prior r_m of the cross-reconstructions (key to the method).")
    )
    beta: float = Field(1.0, ge=0, description="Weight of log p(u,w) - log q(u|X) - log q(w|x) in the bound (1: the paper).")
    modalities_specific_dim: int | None = Field(
        None, ge=1, description="Size of each modality's private latent w_m; None: latent_dim."
    )
    reconstruction_option: Literal["joint_prior", "single_prior"] = Field(
        "joint_prior",
        **advanced("Where a translated modality's private code comes from: the prior p(w) (the paper) or r_m."),
    )
    loss: IWAELoss = Field(
        "dreg_looser", **advanced("Gradient estimator of the stratified IWAE bound: DReG (lower variance) or plain IWAE.")
    )

    @property
    def private_dim(self) -> int:
        """The size of every private latent w_m."""
        return self.modalities_specific_dim or self.latent_dim


@register_model
class MMVAEPlus(PrivateLatentDecoding, MultimodalVAE):
    """MMVAE+: mixture-of-experts shared latent, private latents, auxiliary priors; incomplete data.

    Args:
        model_config: an :class:`MMVAEPlusConfig`.
        encoders: modality -> encoder of q_m(u | x_m) and q_m(w_m | x_m) (``embedding``,
            ``log_covariance``, ``style_embedding``, ``style_log_covariance``: the scale parameters of
            :mod:`core.models._shared.latent_distributions`).
        decoders: modality -> decoder of p(x_m | [u, w_m]).
    """

    name = "MMVAEPlus"
    config_class = MMVAEPlusConfig
    supports_incomplete_data = True
    summary = "Mixture-of-experts shared latent plus private latents with auxiliary priors (IWAE/DReG); learns from incomplete data."

    def __init__(
        self,
        model_config: MMVAEPlusConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders)
        self.private_dims = {m: model_config.private_dim for m in self.modalities}
        d = model_config.private_dim
        self.register_buffer("auxiliary_prior_mean", torch.zeros(d))
        self.auxiliary_prior_log_scales = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(d), requires_grad=model_config.learn_modality_prior) for m in self.modalities}
        )
        self.build_priors()

    def build_priors(self) -> None:
        """The parameters of p(u, w): zero mean, a log-scale learnt with ``learn_shared_prior``."""
        size = self.latent_dim + self.model_config.private_dim
        self.register_buffer("prior_mean", torch.zeros(size))
        self.prior_log_scale = nn.Parameter(torch.zeros(size), requires_grad=self.model_config.learn_shared_prior)

    def build_default_encoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return SharedPrivateEncoder(default_encoder(shape, self.latent_dim + self.model_config.private_dim), self.latent_dim)

    def build_default_decoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return default_decoder(self.latent_dim + self.model_config.private_dim, shape)

    # ------------------------------------------------------------------ distributions
    def _latent(self, mu: torch.Tensor, log_scale: torch.Tensor) -> Distribution:
        return latent_distribution(self.model_config.prior_and_posterior_dist, mu, log_scale)

    def _prior_part(self, part: slice) -> Distribution:
        """The marginal of p(u, w) on ``part`` of its dimensions (softmax scales are normalised over all D + d)."""
        kind = self.model_config.prior_and_posterior_dist
        return latent_family(kind)(self.prior_mean[part], latent_scale(kind, self.prior_log_scale)[part], validate_args=False)

    def log_prior_shared(self, u: torch.Tensor) -> torch.Tensor:
        """log p(u), summed over its dimensions: ``(*lead)`` for ``u`` ``(*lead, D)``."""
        return self._prior_part(slice(0, self.latent_dim)).log_prob(u).sum(-1)

    def private_prior(self) -> Distribution:
        """p(w): the private part of the prior p(u, w) (element-wise over d)."""
        return self._prior_part(slice(self.latent_dim, None))

    def auxiliary_prior(self, modality: str) -> Distribution:
        """r_m(w_m): zero mean, scale learnt when ``learn_modality_prior``."""
        return self._latent(self.auxiliary_prior_mean, self.auxiliary_prior_log_scales[modality])

    def translation_prior(self, modality: str) -> Distribution:
        """Where a modality outside the conditioning subset gets its private code (``reconstruction_option``)."""
        return self.private_prior() if self.model_config.reconstruction_option == "joint_prior" else self.auxiliary_prior(modality)

    def sample_shared_prior(self, n_samples: int) -> torch.Tensor:
        """u ~ p(u), ``(n_samples, latent_dim)``."""
        return self._prior_part(slice(0, self.latent_dim)).sample((n_samples,))

    def sample_private_prior(self, modality: str, lead: torch.Size) -> torch.Tensor:
        return self.private_prior().sample(lead)

    def unimodal_posteriors(self, modality: str, x: torch.Tensor) -> Posteriors:
        """``(q_m(u | x_m), q_m(w_m | x_m))``."""
        shared, private = as_shared_and_private(self.encoders[modality](x))
        return self._latent(*shared), self._latent(*private)

    # ------------------------------------------------------------------ inference
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
        """u from the mixture of the conditioning experts; w_m from q_m(w_m | x_m) for an observed
        conditioning modality, otherwise from ``translation_prior``.

        Returns ``z`` (u: ``(B, D)`` for N = 1, ``(N, B, D)`` otherwise, ``(N*B, D)`` with ``flatten``) and
        ``modalities_z`` ({m: w_m} for every modality, same leading shape). Each draw of u picks one of its
        sample's observed conditioning experts; ``return_mean`` gives the mixture's mean and the means of
        the private posteriors (the prior means where there is none).
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        posteriors = {m: self.unimodal_posteriors(m, batch.data[m]) for m in cond}
        available = torch.stack([batch.masks[m] for m in cond])
        n_draws = (N,)
        if return_mean:
            weights = available.to(self.auxiliary_prior_mean.dtype) / available.sum(0).clamp_min(1)
            u = (torch.stack([q_u.mean for q_u, _ in posteriors.values()]) * weights.unsqueeze(-1)).sum(0).expand(N, -1, -1)
        else:
            u = pick_expert_samples(torch.stack([q_u.rsample(n_draws) for q_u, _ in posteriors.values()]), available)
        modalities_z = {}
        for m in self.modalities:
            prior = self.translation_prior(m)
            w = prior.mean.expand(N, batch.batch_size, -1) if return_mean else prior.sample((N, batch.batch_size))
            if m in posteriors:
                q_w = posteriors[m][1]
                seen = batch.masks[m].view(1, -1, 1)
                w = torch.where(seen, q_w.mean.expand(N, -1, -1) if return_mean else q_w.rsample(n_draws), w)
            modalities_z[m] = w
        return ModelOutput(
            z=self._shape(u, N, flatten),
            modalities_z={m: self._shape(w, N, flatten) for m, w in modalities_z.items()},
            one_latent_space=False,
        )

    @staticmethod
    def _shape(code: torch.Tensor, N: int, flatten: bool) -> torch.Tensor:
        """``(N, B, dim)`` draws in the shared convention: ``(B, dim)`` for N = 1, ``(N*B, dim)`` with flatten."""
        if N == 1:
            return code[0]
        return code.reshape(-1, code.shape[-1]) if flatten else code

    @torch.no_grad()
    def generate_from_prior(self, n_samples: int = 1, **kwargs: Any) -> ModelOutput:
        """u ~ p(u) ``(n_samples, latent_dim)`` and, independently for every modality, w_m ~ p(w)."""
        u = self.sample_shared_prior(n_samples)
        modalities_z = {m: self.sample_private_prior(m, torch.Size([n_samples])) for m in self.modalities}
        return ModelOutput(z=u, modalities_z=modalities_z, one_latent_space=False)

    # ------------------------------------------------------------------ objective
    def reconstructions_log_likelihood(
        self, batch: DatasetOutput, modality: str, u: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        r"""\lambda_m log p(x_m | u, w) + \sum_{n != m} \lambda_n log p(x_n | u, \tilde w_n), \tilde w_n ~ r_n; ``(K, B)``."""
        total = self.reconstruction_log_likelihood(batch, modality, self.decoder_output(modality, torch.cat([u, w], -1)))
        for n in self.modalities:
            if n != modality:
                w_n = self.auxiliary_prior(n).rsample(w.shape[:-1])
                total = total + self.reconstruction_log_likelihood(batch, n, self.decoder_output(n, torch.cat([u, w_n], -1)))
        return total

    def log_weights(
        self,
        batch: DatasetOutput,
        modality: str,
        u: torch.Tensor,
        w: torch.Tensor,
        log_q_posteriors: Mapping[str, Posteriors],
        beta: float,
    ) -> torch.Tensor:
        """lw of the module docstring for expert ``modality``'s draws ``u`` ``(K, B, D)`` and ``w`` ``(K, B, d)``."""
        experts = list(log_q_posteriors)
        present = torch.stack([batch.masks[e] for e in experts])
        log_q_u = mixture_log_prob(torch.stack([log_q_posteriors[e][0].log_prob(u).sum(-1) for e in experts]), present)
        log_q_w = log_q_posteriors[modality][1].log_prob(w).sum(-1)
        log_p = self.log_prior_shared(u) + self.private_prior().log_prob(w).sum(-1)
        return self.reconstructions_log_likelihood(batch, modality, u, w) + beta * (log_p - log_q_u - log_q_w)

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The negative stratified bound of the module docstring, averaged over the batch.

        Terms: ``bound`` (nats per sample), ``bound[m]`` (over the samples that have m), and Monte-Carlo
        estimates of the KL of the shared (``kl_shared``) and private (``kl_private``) posteriors from
        their priors, for monitoring.
        """
        cfg = self.model_config
        batch = self.prepare_batch(inputs)
        experts = [m for m in self.modalities if bool(batch.masks[m].any())]  # MultiVae's drop_unused_modalities
        posteriors = {m: self.unimodal_posteriors(m, batch.data[m]) for m in experts}
        dreg = cfg.loss == "dreg_looser"
        log_q_posteriors = {m: (detached(q_u), detached(q_w)) for m, (q_u, q_w) in posteriors.items()} if dreg else posteriors
        zero = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        total = zero
        kl_shared, kl_private = zero, zero
        for m in experts:
            q_u, q_w = posteriors[m]
            u, w = q_u.rsample((cfg.K,)), q_w.rsample((cfg.K,))
            log_w = self.log_weights(batch, m, u, w, log_q_posteriors, cfg.beta)
            bound = torch.where(batch.masks[m], dreg_bound(log_w, [u, w]) if dreg else iwae_bound(log_w), zero)
            total = total + bound
            terms[f"bound[{m}]"] = (bound.sum() / batch.masks[m].sum()).detach()
            with torch.no_grad():
                kl_shared = kl_shared + ((q_u.log_prob(u).sum(-1) - self.log_prior_shared(u)).mean(0) * batch.masks[m]).sum()
                kl_private = kl_private + ((q_w.log_prob(w) - self.private_prior().log_prob(w)).sum(-1).mean(0) * batch.masks[m]).sum()
        n_observed = torch.stack([batch.masks[m] for m in self.modalities]).sum(0)
        bound = (total / n_observed.clamp_min(1)).sum() / (n_observed > 0).sum().clamp_min(1)
        pairs = n_observed.sum().clamp_min(1)
        terms.update(bound=bound.detach(), kl_shared=kl_shared / pairs, kl_private=kl_private / pairs)
        terms[kl_per_dimension_term("z")] = terms["kl_shared"] / self.latent_dim
        return LossOutput(loss=-bound, terms=terms, batch_size=batch.batch_size)

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        r"""-\sum_i log p(X_i) by importance sampling with the proposal q(u | X) \prod_n q_n(w_n | x_n).

        u: K // M stratified draws from each expert; w_n from its own posterior, so the weight
        p(u) \prod_n p(w_n) p(x_n | u, w_n) / (q(u | X) \prod_n q_n(w_n | x_n)) is exact (rescaling and beta
        not applied). An incomplete sample's estimate is of its observed modalities.
        """
        with evaluation_mode(self):
            batch = self.prepare_batch(inputs)
            experts = [m for m in self.modalities if bool(batch.masks[m].any())]
            posteriors = {m: self.unimodal_posteriors(m, batch.data[m]) for m in experts}
            present = torch.stack([batch.masks[m] for m in experts])
            per_expert = max(1, K // len(self.modalities))
            chunks = []
            for start in range(0, per_expert, batch_size_K):
                k = min(batch_size_K, per_expert - start)
                log_w = []
                for m in experts:
                    u = posteriors[m][0].sample((k,))
                    log_q_u = mixture_log_prob(torch.stack([posteriors[e][0].log_prob(u).sum(-1) for e in experts]), present)
                    lw = self.log_prior_shared(u) - log_q_u
                    for n, (_, q_w) in posteriors.items():
                        w = q_w.sample((k,))
                        private_ratio = (self.private_prior().log_prob(w) - q_w.log_prob(w)).sum(-1)
                        lw = lw + torch.where(batch.masks[n], private_ratio, torch.zeros_like(private_ratio))
                        x_hat = self.decoder_output(n, torch.cat([u, w], -1))
                        lw = lw + self.reconstruction_log_likelihood(batch, n, x_hat, rescale=False)
                    log_w.append(lw)
                chunks.append(torch.stack(log_w))  # (E, k, B)
            return -stratified_log_likelihood(torch.cat(chunks, dim=1), present).sum()
