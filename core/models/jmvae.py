r"""JMVAE: a joint encoder plus unimodal encoders pulled towards it (Suzuki et al., 2016; JMVAE-kl).

Generative model p(z) = N(0, I), p_theta(x_m | z) per modality. A joint encoder q_phi(z | X) sees all
M modalities; unimodal encoders q_phi_m(z | x_m) are trained to match it, so that any single modality
can be encoded at test time. The objective (to minimise, per sample) is

    L(X) = - E_{q(z|X)} [ \sum_m \lambda_m \log p(x_m | z) ]
           + a_e [ \beta KL(q(z|X) || p(z)) + \alpha \sum_m KL(q(z|X) || q_m(z|x_m)) ]

with one reparameterised sample of z, averaged over the batch. a_e = min(e / W, 1) anneals both KL
terms per epoch (1/W at the first epoch, W = ``warmup``); beta is an add-on of MultiVae (1 in the
paper), alpha weighs the unimodal terms.

Inference for a subset S of the modalities:

* S = all modalities: the joint encoder;
* S = {m}: the unimodal encoder q_m(z | x_m);
* 1 < |S| < M: the product of the unimodal Gaussians of S *without* the prior expert,
  q(z | x_S) \propto \prod_{m in S} q_m(z | x_m). Each q_m approximates the joint posterior from one
  modality, so their product sharpens it the way the posteriors of conditionally independent
  observations combine; the paper has no subset inference and this follows MultiVae's extension.

Training needs complete samples (the joint encoder takes every modality): an incomplete batch raises
:class:`IncompleteDataError`. Encoding only needs the conditioning modalities, so a JMVAE trained on
complete subjects can impute a missing modality of an incomplete one.

References:
    Suzuki, Nakayama & Matsuo, "Joint Multimodal Learning with Deep Generative Models", ICLR workshop
    2017. https://arxiv.org/abs/1611.01891
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from core.data.dataset import DatasetOutput
from core.models._shared.annealing import TrainingProgress, linear_warmup_per_epoch
from core.models._shared.free_bits import kl_per_dimension_term
from core.models._shared.gaussian import kl_normal, kl_standard_normal, rsample
from core.models._shared.importance import importance_sampled_nll
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.poe import product_of_experts
from core.models.base import IncompleteDataError, MultimodalVAE, sample_latent
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, ConfigError
from core.models.registry import register_model
from core.nn.base import as_gaussian
from core.nn.joint import MultipleHeadJointEncoder

__all__ = ["JMVAEConfig", "JMVAE", "JointEncoderVAE"]


@dataclass(config=MODEL_CONFIG_DICT)
class JMVAEConfig(BaseMultiVAEConfig):
    """Config of :class:`JMVAE` (MultiVae's ``JMVAEConfig``)."""

    alpha: float = Field(0.1, ge=0, description="Weight of the KL terms between the joint and the unimodal posteriors.")
    warmup: int = Field(10, ge=0, description="Epochs over which the KL weight rises linearly (1/warmup at epoch 1).")
    beta: float = Field(1.0, ge=0, description="Weight of the KL divergence to the prior (1 in the paper).")


class JointEncoderVAE(MultimodalVAE):
    """Shared part of the models with a joint encoder q(z | x_1, ..., x_M) (JMVAE, JNF).

    Args:
        model_config: the model's config.
        encoders: modality -> unimodal encoder returning a Gaussian over ``latent_dim``.
        decoders: modality -> decoder from ``latent_dim``.
        joint_encoder: module taking the dict of all modalities and returning a Gaussian over
            ``latent_dim``; default :class:`~core.nn.joint.MultipleHeadJointEncoder` built from copies
            of the unimodal encoders.
    """

    supports_incomplete_data = False

    def __init__(
        self,
        model_config: BaseMultiVAEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
        joint_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders)
        self.record_custom_architectures(joint_encoder=joint_encoder)
        if joint_encoder is None:
            joint_encoder = MultipleHeadJointEncoder(self.encoders, self.latent_dim)
        elif not isinstance(joint_encoder, nn.Module):
            raise ConfigError(f"joint_encoder must be a torch.nn.Module, got {type(joint_encoder).__name__}.")
        self.joint_encoder = joint_encoder

    def require_complete(self, batch: DatasetOutput) -> None:
        """Raise :class:`IncompleteDataError` if any sample of ``batch`` lacks a modality."""
        for m in self.modalities:
            if not bool(batch.masks[m].all()):
                missing = torch.nonzero(~batch.masks[m]).flatten().tolist()
                who = [batch.ids[i] for i in missing[:5]] if batch.ids else missing[:5]
                raise IncompleteDataError(
                    f"{self.name} cannot train on incomplete data: its joint encoder q(z | x_1..x_M) needs every "
                    f"modality, and '{m}' is missing for {len(missing)} sample(s) (e.g. {who}). Use MVAE, MHVAE or "
                    "Nexus, which learn from partially observed subjects, or keep only the complete subjects."
                )

    def joint_gaussian(self, batch: DatasetOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z | X) from the joint encoder, each ``(B, D)``."""
        return as_gaussian(self.joint_encoder({m: batch.data[m] for m in self.modalities}))

    @torch.no_grad()
    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        r"""-\sum_i log p(X_i), importance sampling with q(z | X_i) as proposal (rescaling not applied).

        log p(X) ~ logsumexp_k [log p(z_k) + \sum_m log p(x_m | z_k) - log q(z_k | X)] - log K.
        """
        batch = self.prepare_batch(inputs)
        self.require_complete(batch)
        mu, logvar = self.joint_gaussian(batch)
        return importance_sampled_nll(mu, logvar, lambda z: self.joint_log_likelihood(batch, z), K, batch_size_K)


@register_model
class JMVAE(JointEncoderVAE):
    """Joint multimodal VAE (JMVAE-kl): a joint encoder and unimodal encoders trained to match it."""

    name = "JMVAE"
    config_class = JMVAEConfig
    supports_incomplete_data = False
    summary = "Joint encoder plus unimodal encoders pulled towards it (JMVAE-kl); needs complete data to train."

    def __init__(
        self,
        model_config: JMVAEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
        joint_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders, joint_encoder)

    @property
    def start_keep_best_epoch(self) -> int:
        return self.model_config.warmup + 1

    # ------------------------------------------------------------------ inference
    def posterior_subset(self, batch: DatasetOutput, subset: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z | x_S): joint encoder, one unimodal encoder, or a PoE without prior."""
        if len(subset) == len(self.modalities):
            return self.joint_gaussian(batch)
        experts = [self.encoder_gaussian(m, batch.data[m]) for m in subset]
        if len(experts) == 1:
            return experts[0]
        mus = torch.stack([mu for mu, _ in experts])
        logvars = torch.stack([lv for _, lv in experts])
        return product_of_experts(mus, logvars, with_prior=False)

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
        """z ~ q(z | x_cond): ``(B, D)`` for N = 1, ``(N, B, D)`` otherwise (``(N*B, D)`` with ``flatten``).

        Args:
            inputs: a batch or a dataset.
            cond_mod: ``'all'``, a modality name or a list of names.
            N: number of samples per data point.
            return_mean: return the posterior mean (repeated N times) instead of samples.
            flatten: merge the sample and batch dimensions.
            ignore_incomplete: kept for a uniform API; every conditioning modality must be observed.
            **kwargs: accepted for a uniform API across models and ignored.

        Raises:
            IncompleteDataError: a conditioning modality is missing for some sample.
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        mu, logvar = self.posterior_subset(batch, cond)
        return ModelOutput(z=sample_latent(mu, logvar, N, return_mean, flatten), one_latent_space=True)

    # ------------------------------------------------------------------ objective
    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The JMVAE-kl loss of the module docstring, averaged over the batch.

        Terms: ``recon`` (-sum_m lambda_m log p(x_m|z)), ``kl_prior``, ``kl[m]`` = KL(q(z|X) || q_m(z|x_m)),
        ``neg_elbo`` (recon + beta * kl_prior, not annealed) and ``annealing`` (a_e).
        """
        cfg = self.model_config
        batch = self.prepare_batch(inputs)
        self.require_complete(batch)
        anneal = linear_warmup_per_epoch(progress, cfg.warmup)
        mu, logvar = self.joint_gaussian(batch)
        z = rsample(mu, logvar)
        recon = self.joint_log_likelihood(batch, z, rescale=True)
        kl_prior = kl_standard_normal(mu, logvar)
        kl_unimodal = {m: kl_normal(mu, logvar, *self.encoder_gaussian(m, batch.data[m])) for m in self.modalities}
        per_sample = -recon + anneal * (cfg.beta * kl_prior + cfg.alpha * sum(kl_unimodal.values()))
        terms = {
            "recon": -recon.mean().detach(),
            "kl_prior": kl_prior.mean().detach(),
            kl_per_dimension_term("z"): kl_prior.mean().detach() / self.latent_dim,
            **{f"kl[{m}]": kl.mean().detach() for m, kl in kl_unimodal.items()},
            "neg_elbo": (-recon + cfg.beta * kl_prior).mean().detach(),
            "annealing": torch.tensor(anneal),
        }
        return LossOutput(loss=per_sample.mean(), terms=terms, batch_size=batch.batch_size)
