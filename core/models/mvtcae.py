r"""MVTCAE: multi-view total-correlation autoencoder (Hwang et al., 2021).

The joint posterior is a product of the unimodal Gaussian experts *without* the prior expert,

    q(z | X) \propto \prod_m q_m(z | x_m),

and the objective (to maximise) comes from the total correlation of the views given z, split into a
conditional and a plain variational information bottleneck:

    L(X) = (M - \alpha)/M  E_{q(z|X)} [ \sum_m \lambda_m \log p(x_m | z) ]
           - \beta [ (1 - \alpha) KL(q(z|X) || p(z)) + \alpha/M \sum_m KL(q(z|X) || q_m(z|x_m)) ]

with one reparameterised sample of z, averaged over the batch (``alpha`` = 0.1, ``beta`` = 2.5).

Incomplete data: each sample's objective is that of its observed views. Only observed experts enter
the product, only observed modalities are reconstructed and pulled towards the joint posterior, and
M is the number of modalities that sample has (the published code keeps M fixed, which weighs a
subject's terms by how many modalities it happens to miss). A sample with no observed modality has no
posterior and is left out of the batch mean.

Inference for a subset S: q(z | x_S) \propto \prod_{m in S} q_m(z | x_m).

References:
    Hwang, Kim, Hong & Kim, "Multi-View Representation Learning via Total Correlation Objective",
    NeurIPS 2021. https://proceedings.neurips.cc/paper/2021/hash/65a99bb7a3115fdede20da98b08a370f-Abstract.html
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from core.data.dataset import DatasetOutput
from core.models._shared.annealing import TrainingProgress
from core.models._shared.free_bits import kl_per_dimension_term
from core.models._shared.gaussian import kl_normal, kl_standard_normal, rsample
from core.models._shared.importance import importance_sampled_nll
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.poe import product_of_experts
from core.models.base import MultimodalVAE, sample_latent
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig
from core.models.registry import register_model

__all__ = ["MVTCAEConfig", "MVTCAE", "PriorFreeProductVAE"]

Gaussian = tuple[torch.Tensor, torch.Tensor]


@dataclass(config=MODEL_CONFIG_DICT)
class MVTCAEConfig(BaseMultiVAEConfig):
    """Config of :class:`MVTCAE` (MultiVae's ``MVTCAEConfig``)."""

    alpha: float = Field(
        0.1, ge=0, le=1, description="Share of the conditional bottleneck (the KLs to the unimodal posteriors) in the KL."
    )
    beta: float = Field(2.5, ge=0, description="Weight of all the KL terms.")


class PriorFreeProductVAE(MultimodalVAE):
    """Shared part of the models whose posterior is a product of unimodal experts without the prior
    expert (MVTCAE, CRMVAE): the product over the observed experts, encoding and the likelihood."""

    def experts(self, batch: DatasetOutput) -> dict[str, Gaussian]:
        """``(mu_m, logvar_m)`` of every unimodal encoder on the whole batch."""
        return {m: self.encoder_gaussian(m, batch.data[m]) for m in self.modalities}

    def product_posterior(
        self, batch: DatasetOutput, subset: Sequence[str], experts: Mapping[str, Gaussian]
    ) -> Gaussian:
        r"""q(z | x_S) \propto \prod_{m in S, observed} q_m(z | x_m); every row needs one observed expert."""
        mus = torch.stack([experts[m][0] for m in subset])
        logvars = torch.stack([experts[m][1] for m in subset])
        present = torch.stack([batch.masks[m] for m in subset])
        return product_of_experts(mus, logvars, present, with_prior=False)

    def observed_samples(self, batch: DatasetOutput) -> DatasetOutput:
        """The samples with at least one observed modality (the others have no posterior); no labels."""
        covered = torch.stack([batch.masks[m] for m in self.modalities]).any(0)
        if bool(covered.all()):
            return batch
        keep = torch.nonzero(covered).flatten()
        return DatasetOutput(
            data={m: x[keep] for m, x in batch.data.items()},
            masks={m: x[keep] for m, x in batch.masks.items()},
            ids=[batch.ids[i] for i in keep.tolist()] if batch.ids else None,
            observation_masks={m: x[keep] for m, x in batch.observation_masks.items()},
        )

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
        """z ~ q(z | x_cond) (product of the observed experts of ``cond_mod``): ``(B, D)`` for N = 1,
        ``(N, B, D)`` otherwise (``(N*B, D)`` with ``flatten``).

        With ``ignore_incomplete`` each sample uses the conditioning modalities it has (at least one).
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        experts = {m: self.encoder_gaussian(m, batch.data[m]) for m in cond}
        mu, logvar = self.product_posterior(batch, cond, experts)
        return ModelOutput(z=sample_latent(mu, logvar, N, return_mean, flatten), one_latent_space=True)

    @torch.no_grad()
    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        r"""-\sum_i log p(X_i) by importance sampling with q(z | X_i) as proposal (rescaling not applied).

        log p(X) ~ logsumexp_k [log p(z_k) + \sum_m log p(x_m | z_k) - log q(z_k | X)] - log K; for an
        incomplete sample, the marginal likelihood of its observed modalities.
        """
        batch = self.prepare_batch(inputs)
        mu, logvar = self.product_posterior(batch, self.modalities, self.experts(batch))
        return importance_sampled_nll(mu, logvar, lambda z: self.joint_log_likelihood(batch, z), K, batch_size_K)


@register_model
class MVTCAE(PriorFreeProductVAE):
    """The multi-view total-correlation autoencoder; trains on incomplete data."""

    name = "MVTCAE"
    config_class = MVTCAEConfig
    supports_incomplete_data = True
    summary = "Product of experts without the prior; total-correlation objective (MVTCAE); learns from incomplete data."
    ddp_find_unused_parameters = False  # every encoder and decoder takes part in every step

    def __init__(
        self,
        model_config: MVTCAEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders)

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The negative MVTCAE objective of the module docstring, averaged over the batch.

        Terms: ``recon`` (-sum_m lambda_m log p(x_m|z)), ``kl_prior`` = KL(q(z|X) || p(z)) and
        ``kl[m]`` = KL(q(z|X) || q_m(z|x_m)) over the samples that observe m.
        """
        cfg = self.model_config
        batch = self.observed_samples(self.prepare_batch(inputs))
        experts = self.experts(batch)
        mu, logvar = self.product_posterior(batch, self.modalities, experts)
        z = rsample(mu, logvar)
        observed = {m: batch.masks[m].to(mu.dtype) for m in self.modalities}
        n_observed = sum(observed.values())  # M for each sample: the modalities it has
        recon = self.joint_log_likelihood(batch, z, rescale=True)
        kl_prior = kl_standard_normal(mu, logvar)
        kl_unimodal = {m: observed[m] * kl_normal(mu, logvar, *experts[m]) for m in self.modalities}
        per_sample = -(n_observed - cfg.alpha) / n_observed * recon + cfg.beta * (
            (1 - cfg.alpha) * kl_prior + cfg.alpha / n_observed * sum(kl_unimodal.values())
        )
        terms = {
            "recon": -recon.mean().detach(),
            "kl_prior": kl_prior.mean().detach(),
            kl_per_dimension_term("z"): kl_prior.mean().detach() / self.latent_dim,
            **{f"kl[{m}]": (kl.sum() / observed[m].sum().clamp_min(1)).detach() for m, kl in kl_unimodal.items()},
        }
        return LossOutput(loss=per_sample.mean(), terms=terms, batch_size=batch.batch_size)
