r"""MMVAE: a mixture of the unimodal experts as the joint posterior (Shi et al., 2019).

Generative model p(z) p_theta(x_1 | z) ... p_theta(x_M | z); the joint posterior is the mixture

    q(z | X) = 1/M \sum_m q_m(z | x_m),

and the objective is the stratified ("looser") importance-weighted bound: each expert draws its own K
samples, which decode *every* modality,

    L(X) = 1/M \sum_m E_{z_{1:K} ~ q_m(z|x_m)} [ log 1/K \sum_k exp lw_{m,k} ],
    lw_{m,k} = \sum_n \lambda_n log p(x_n | z_k) + \beta ( log p(z_k) - log q(z_k | X) ),

a lower bound of log p(X) for beta = 1 (the paper). ``loss='dreg_looser'`` (the default, as in the
authors' experiments) estimates its gradient with DReG, ``'iwae_looser'`` with the plain IWAE
gradient; both report the same bound. Posteriors and the prior are Laplace with softmax-normalised
scales (``laplace_with_softmax``) or normal; the prior's scale is learnt when ``learn_prior``.

Partially observed data: a sample's mixture holds only the experts it has, 1/M becomes 1/|obs(i)|, only
its observed modalities are reconstructed, and its bound averages the bounds of its own experts; the
loss averages over the samples with at least one modality.

Where MultiVae's code differs, this follows the paper: ``beta`` weighs the prior/posterior ratio as
in MMVAE+ (MultiVae accepts it and ignores it; beta = 1 is the paper's bound), the loss is a mean over
the batch (MultiVae sums), ``encode`` draws each sample's expert at random for every sample (MultiVae
draws one modality for the whole batch), and ``compute_joint_nll`` handles incomplete samples.

References:
    Shi, Siddharth, Paige & Torr, "Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
    Generative Models", NeurIPS 2019. https://arxiv.org/abs/1911.03393
    Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for Monte Carlo
    Objectives", ICLR 2019. https://arxiv.org/abs/1810.04152
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn
from torch.distributions import Distribution, kl_divergence

from core.data.dataset import DatasetOutput
from core.models._shared.annealing import TrainingProgress
from core.models._shared.free_bits import kl_per_dimension_term
from core.models._shared.importance import dreg_bound, iwae_bound
from core.models._shared.latent_distributions import detached, latent_distribution
from core.models._shared.mixture import draw_components, mixture_log_prob
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models.base import MultimodalVAE
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, advanced
from core.models.registry import register_model
from core.nn.base import evaluation_mode

__all__ = ["MMVAEConfig", "MMVAE", "IWAELoss", "pick_expert_samples", "stratified_log_likelihood"]

IWAELoss = Literal["dreg_looser", "iwae_looser"]


@dataclass(config=MODEL_CONFIG_DICT)
class MMVAEConfig(BaseMultiVAEConfig):
    """Config of :class:`MMVAE` (MultiVae's ``MMVAEConfig``)."""

    K: int = Field(10, ge=1, description="Importance samples drawn from each expert per step (K of the IWAE bound).")
    prior_and_posterior_dist: Literal["laplace_with_softmax", "normal"] = Field(
        "laplace_with_softmax",
        **advanced("Family of the prior and the posteriors: Laplace with softmax-normalised scales (the paper) or normal."),
    )
    learn_prior: bool = Field(True, **advanced("Learn the scale of the prior p(z) (its mean stays 0)."))
    beta: float = Field(1.0, ge=0, description="Weight of log p(z) - log q(z|X) in the bound (1: the paper's bound).")
    loss: IWAELoss = Field(
        "dreg_looser", **advanced("Gradient estimator of the stratified IWAE bound: DReG (lower variance) or plain IWAE.")
    )


def pick_expert_samples(samples: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Draws of the mixture from every expert's draws: each (sample index, row) takes one expert at random.

    Args:
        samples: ``(E, N, B, D)`` N draws from each of E experts.
        available: ``(E, B)`` bool, the experts each row has.

    Returns:
        ``(N, B, D)``.
    """
    choice = torch.stack([draw_components(available) for _ in range(samples.shape[1])])  # (N, B)
    index = choice.view(1, *choice.shape, 1).expand(1, *samples.shape[1:])
    return samples.gather(0, index).squeeze(0)


def stratified_log_likelihood(log_w: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """log p(X) from K log-weights drawn from each expert of an equal-weight mixture proposal.

    ``log_w`` is ``(E, K, B)``; a row uses the experts ``present`` ``(E, B)`` marks, so the estimate
    (1 / (K |obs|)) sum over its experts and draws of exp(log_w) is unbiased for each sample.
    """
    keep = present.unsqueeze(1).expand_as(log_w)
    masked = torch.where(keep, log_w, torch.full_like(log_w, float("-inf"))).flatten(0, 1)
    return torch.logsumexp(masked, dim=0) - (present.sum(0).clamp_min(1) * log_w.shape[1]).log()


@register_model
class MMVAE(MultimodalVAE):
    """Mixture-of-experts multimodal VAE trained with the stratified IWAE bound (DReG gradients).

    Args:
        model_config: an :class:`MMVAEConfig`.
        encoders: modality -> encoder of q_m(z | x_m): mean and ``log_covariance`` (the scale parameter
            of the table in :mod:`core.models._shared.latent_distributions`).
        decoders: modality -> decoder of p(x_m | z).
    """

    name = "MMVAE"
    config_class = MMVAEConfig
    supports_incomplete_data = True
    summary = "Mixture of the unimodal experts; stratified importance-weighted bound (DReG); learns from incomplete data."

    def __init__(
        self,
        model_config: MMVAEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders)
        self.register_buffer("prior_mean", torch.zeros(self.latent_dim))
        self.prior_log_scale = nn.Parameter(torch.zeros(self.latent_dim), requires_grad=model_config.learn_prior)

    # ------------------------------------------------------------------ distributions
    def prior(self) -> Distribution:
        """p(z): zero mean, scale learnt when ``learn_prior``."""
        return latent_distribution(self.model_config.prior_and_posterior_dist, self.prior_mean, self.prior_log_scale)

    def unimodal_posterior(self, modality: str, x: torch.Tensor) -> Distribution:
        """q_m(z | x_m)."""
        return latent_distribution(self.model_config.prior_and_posterior_dist, *self.encoder_gaussian(modality, x))

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
        """z ~ the mixture of the conditioning experts: ``(B, D)`` for N = 1, ``(N, B, D)`` otherwise.

        Every draw picks one of its sample's observed conditioning experts at random; ``return_mean``
        gives the mixture's mean (the average of those experts' means). ``flatten`` merges N and B.
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        experts = [self.unimodal_posterior(m, batch.data[m]) for m in cond]
        available = torch.stack([batch.masks[m] for m in cond])  # (E, B)
        if return_mean:
            weights = available.to(experts[0].mean.dtype) / available.sum(0).clamp_min(1)
            z = (torch.stack([q.mean for q in experts]) * weights.unsqueeze(-1)).sum(0)
            z = z if N == 1 else z.expand(N, *z.shape)
        else:
            z = pick_expert_samples(torch.stack([q.rsample((N,)) for q in experts]), available)
            z = z[0] if N == 1 else z
        if flatten and N > 1:
            z = z.reshape(-1, z.shape[-1])
        return ModelOutput(z=z, one_latent_space=True)

    @torch.no_grad()
    def generate_from_prior(self, n_samples: int = 1, **kwargs: Any) -> ModelOutput:
        """z ~ p(z) (the learnt prior), ``(n_samples, latent_dim)``."""
        return ModelOutput(z=self.prior().sample((n_samples,)), one_latent_space=True)

    # ------------------------------------------------------------------ objective
    def expert_log_weights(
        self, batch: DatasetOutput, experts: Sequence[str], z: torch.Tensor, log_q_experts: Sequence[Distribution], beta: float
    ) -> torch.Tensor:
        r"""lw = \sum_n \lambda_n log p(x_n | z) + beta (log p(z) - log q(z | X)), ``(K, B)``, for ``z`` ``(K, B, D)``."""
        log_px = sum(self.reconstruction_log_likelihood(batch, n, self.decoder_output(n, z)) for n in self.modalities)
        present = torch.stack([batch.masks[e] for e in experts])
        log_q = mixture_log_prob(torch.stack([q.log_prob(z).sum(-1) for q in log_q_experts]), present)
        return log_px + beta * (self.prior().log_prob(z).sum(-1) - log_q)

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The negative stratified bound of the module docstring, averaged over the batch.

        Terms: ``bound`` (the mean bound per sample, in nats), ``bound[m]`` (the bound of expert m over
        the samples that have m) and ``kl`` (the mean KL(q_m || p) of the observed experts, monitoring).
        """
        cfg = self.model_config
        batch = self.prepare_batch(inputs)
        # An expert missing for the whole batch takes no part (MultiVae's drop_unused_modalities).
        experts = [m for m in self.modalities if bool(batch.masks[m].any())]
        posteriors = {m: self.unimodal_posterior(m, batch.data[m]) for m in experts}
        dreg = cfg.loss == "dreg_looser"
        log_q_experts = [detached(posteriors[m]) if dreg else posteriors[m] for m in experts]
        zero = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        total = zero
        for m in experts:
            z = posteriors[m].rsample((cfg.K,))  # (K, B, D)
            log_w = self.expert_log_weights(batch, experts, z, log_q_experts, cfg.beta)
            bound = dreg_bound(log_w, [z]) if dreg else iwae_bound(log_w)
            bound = torch.where(batch.masks[m], bound, zero)
            total = total + bound
            terms[f"bound[{m}]"] = (bound.sum() / batch.masks[m].sum()).detach()
        n_observed = torch.stack([batch.masks[m] for m in self.modalities]).sum(0)
        covered = n_observed > 0
        per_sample = total / n_observed.clamp_min(1)
        bound = per_sample.sum() / covered.sum().clamp_min(1)
        kl = self.monitored_kl(batch, posteriors)
        terms.update(bound=bound.detach(), kl=kl)
        terms[kl_per_dimension_term("z")] = kl / self.latent_dim
        return LossOutput(loss=-bound, terms=terms, batch_size=batch.batch_size)

    @torch.no_grad()
    def monitored_kl(self, batch: DatasetOutput, posteriors: Mapping[str, Distribution]) -> torch.Tensor:
        """Mean over the observed (sample, expert) pairs of KL(q_m(z|x_m) || p(z)): is the latent used?"""
        prior = self.prior()
        kls = [(kl_divergence(q, prior).sum(-1) * batch.masks[m]).sum() for m, q in posteriors.items()]
        count = sum(batch.masks[m].sum() for m in posteriors)
        return torch.stack(kls).sum() / max(int(count), 1)

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        r"""-\sum_i log p(X_i), importance sampling with the mixture q(z | X_i) as proposal.

        K // M draws from each expert (stratified, so the estimate is unbiased); rescaling and beta are
        not applied. An incomplete sample's estimate is of its observed modalities, from its experts.
        """
        with evaluation_mode(self):
            batch = self.prepare_batch(inputs)
            experts = [m for m in self.modalities if bool(batch.masks[m].any())]
            posteriors = [self.unimodal_posterior(m, batch.data[m]) for m in experts]
            present = torch.stack([batch.masks[m] for m in experts])
            per_expert = max(1, K // len(self.modalities))
            chunks = []
            for start in range(0, per_expert, batch_size_K):
                k = min(batch_size_K, per_expert - start)
                log_w = []
                for q in posteriors:
                    z = q.sample((k,))
                    log_px = sum(
                        self.reconstruction_log_likelihood(batch, n, self.decoder_output(n, z), rescale=False)
                        for n in self.modalities
                    )
                    log_q = mixture_log_prob(torch.stack([e.log_prob(z).sum(-1) for e in posteriors]), present)
                    log_w.append(log_px + self.prior().log_prob(z).sum(-1) - log_q)
                chunks.append(torch.stack(log_w))  # (E, k, B)
            log_px = stratified_log_likelihood(torch.cat(chunks, dim=1), present)
            return -log_px.sum()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, K={self.model_config.K}, loss={self.model_config.loss}"
