r"""CMVAE: MMVAE+ with a mixture prior on the shared latent, for clustering (Palumbo et al., 2024).

Generative model: a cluster c ~ Cat(\pi) (``number_of_clusters`` components, \pi learnt), the shared
latent u | c ~ p(u | c) (a learnt mean per cluster, unit scale as in the authors' code), a private
latent w_m ~ p(w) per modality (fixed, zero mean and unit scale) and x_m ~ p_theta(x_m | u, w_m).
Inference is that of :class:`~core.models.mmvae_plus.MMVAEPlus`: the mixture of experts q(u | X), the
private posteriors q_m(w_m | x_m) and the auxiliary priors r_n for the cross-reconstructions. With
q(c | u) = p(c | u) \propto \pi_c p(u | c), the paper's log-weight

    lw_{m,k} = \sum_c q(c | u_k) [ \sum_n \lambda_n log p(x_n | .) + \beta ( log \pi_c + log p(u_k | c)
               + log p(w_k) - log q(u_k | X) - log q_m(w_k | x_m) - log q(c | u_k) ) ]

equals the MMVAE+ log-weight with log p(u) = log \sum_c \pi_c p(u | c) (the identity
\sum_c q(c|u) [log \pi_c p(u|c) - log q(c|u)] = log p(u), exactly, for this q(c | u)); it is computed in
that form, stably with logsumexp. The objective is the stratified IWAE bound with DReG or IWAE gradients.
``predict_clusters`` assigns each sample the majority vote of its observed modalities' argmax_c p(c | u).

Partially observed data as in MMVAE+. Where MultiVae's code differs, this follows the paper as MMVAE+
does (see its docstring), and generation draws each modality's private code from p(w), the model's
prior (MultiVae uses r_m with ``reconstruction_option='single_prior'``). The pruning of clusters by
entropy that MultiVae offers is not implemented.

References:
    Palumbo, Manduchi, Laguna, Chopard & Vogt, "Deep Generative Clustering with Multimodal Diffusion
    Variational Autoencoders", ICLR 2024. https://openreview.net/forum?id=k5THrhXDV3
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn
from torch.distributions import Categorical, Distribution

from core.models._shared.latent_distributions import LatentDistribution
from core.models._shared.outputs import ModelOutput
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, advanced
from core.models.mmvae import IWAELoss
from core.models.mmvae_plus import MMVAEPlus
from core.models.registry import register_model
from core.nn.base import evaluation_mode

__all__ = ["CMVAEConfig", "CMVAE"]


@dataclass(config=MODEL_CONFIG_DICT)
class CMVAEConfig(BaseMultiVAEConfig):
    """Config of :class:`CMVAE` (MultiVae's ``CMVAEConfig``)."""

    K: int = Field(10, ge=1, description="Importance samples drawn from each expert per step (K of the IWAE bound).")
    prior_and_posterior_dist: LatentDistribution = Field(
        "laplace_with_softmax",
        **advanced("Family of priors and posteriors: Laplace with softmax-normalised scales (the paper) or normal."),
    )
    learn_modality_prior: bool = Field(
        True, **advanced("Learn the scale of each auxiliary prior r_m of the cross-reconstructions (key to the method).")
    )
    beta: float = Field(1.0, ge=0, description="Weight of the prior/posterior log-ratio in the bound (1: the paper).")
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
    number_of_clusters: int = Field(10, ge=1, description="Number of clusters c of the mixture prior p(c) p(u | c).")

    @property
    def private_dim(self) -> int:
        """The size of every private latent w_m."""
        return self.modalities_specific_dim or self.latent_dim


@register_model
class CMVAE(MMVAEPlus):
    """Clustering multimodal VAE: MMVAE+ with a learnt mixture prior on the shared latent."""

    name = "CMVAE"
    config_class = CMVAEConfig
    supports_incomplete_data = True
    summary = "MMVAE+ with a learnt mixture prior on the shared latent, for clustering (IWAE/DReG); learns from incomplete data."

    def build_priors(self) -> None:
        """pi (softmax of learnt logits), a learnt mean per cluster (uniform in [-1, 1] at first, as the
        authors' code), unit cluster scales, and the fixed p(w)."""
        n_clusters, d = self.model_config.number_of_clusters, self.model_config.private_dim
        self.cluster_logits = nn.Parameter(torch.zeros(n_clusters))
        self.cluster_means = nn.Parameter(2 * torch.rand(n_clusters, self.latent_dim) - 1)
        self.register_buffer("cluster_log_scales", torch.zeros(n_clusters, self.latent_dim))
        self.register_buffer("private_prior_mean", torch.zeros(d))
        self.register_buffer("private_prior_log_scale", torch.zeros(d))

    # ------------------------------------------------------------------ the mixture prior
    def cluster_priors(self) -> Distribution:
        """p(u | c) for every cluster: batch shape ``(C, D)``."""
        return self._latent(self.cluster_means, self.cluster_log_scales)

    def log_joint_clusters(self, u: torch.Tensor) -> torch.Tensor:
        """log pi_c + log p(u | c) for every cluster: ``(C, *lead)`` for ``u`` ``(*lead, D)``."""
        log_p_u = self.cluster_priors().log_prob(u.unsqueeze(-2)).sum(-1)  # (*lead, C)
        return (torch.log_softmax(self.cluster_logits, 0) + log_p_u).movedim(-1, 0)

    def log_prior_shared(self, u: torch.Tensor) -> torch.Tensor:
        """log p(u) = log sum_c pi_c p(u | c)."""
        return torch.logsumexp(self.log_joint_clusters(u), dim=0)

    def private_prior(self) -> Distribution:
        """p(w): fixed, zero mean and unit scale (the regularising prior of the private latents)."""
        return self._latent(self.private_prior_mean, self.private_prior_log_scale)

    def sample_shared_prior(self, n_samples: int) -> torch.Tensor:
        """c ~ Cat(pi), then u ~ p(u | c): ``(n_samples, latent_dim)``."""
        clusters = Categorical(logits=self.cluster_logits).sample((n_samples,))
        return self._latent(self.cluster_means[clusters], self.cluster_log_scales[clusters]).sample()

    # ------------------------------------------------------------------ clustering
    @torch.no_grad()
    def predict_clusters(self, inputs: Any) -> ModelOutput:
        """Each sample's cluster: the majority vote of its observed modalities' argmax_c p(c | u_m), u_m
        the mean of q_m(u | x_m) (ties go to the lower cluster index).

        Returns ``clusters`` ``(B,)`` and ``probabilities`` {m: p(c | u_m) ``(B, C)``} for the observed rows
        of each modality (zeros elsewhere).
        """
        with evaluation_mode(self):
            batch = self.prepare_batch(inputs)
            votes = torch.zeros(batch.batch_size, self.cluster_means.shape[0], device=self.device)
            probabilities = {}
            for m in self.modalities:
                q_u, _ = self.unimodal_posteriors(m, batch.data[m])
                p_c = torch.softmax(self.log_joint_clusters(q_u.mean), dim=0).T * batch.masks[m].unsqueeze(-1)
                probabilities[m] = p_c
                votes += torch.nn.functional.one_hot(p_c.argmax(-1), votes.shape[-1]) * batch.masks[m].unsqueeze(-1)
            return ModelOutput(clusters=votes.argmax(-1), probabilities=probabilities)
