r"""TELBO: the triple ELBO, trained in two stages (Vedantam et al., 2018).

Generative model p(z) = N(0, I), p_theta(x_m | z) per modality; a joint encoder q(z | X) and one
unimodal encoder q_m(z | x_m) per modality. The triple ELBO sums a joint ELBO and one ELBO per
modality, each unimodal ELBO through the decoder of its own modality:

    ELBO_joint(X) = E_{q(z|X)} [ \sum_m \lambda_m \log p(x_m | z) ] - KL(q(z|X) || p(z))
    ELBO_m(x_m)   = E_{q_m(z|x_m)} [ \gamma_m \log p(x_m | z) ] - KL(q_m(z|x_m) || p(z))

As in the paper, training is split in two stages driven by W = ``warmup``, each with one
reparameterised sample, averaged over the batch:

* **stage "joint"**, epochs 1..W: the joint encoder and the decoders maximise ELBO_joint;
* **stage "unimodal"**, epochs W+1..: the joint encoder and the decoders are frozen (no gradient, and
  kept in eval mode) and each unimodal encoder maximises its ELBO_m through the frozen decoder.

The trainer builds a fresh optimizer at the stage boundary and reloads the best stage-1 weights.
``lambda_factors`` and ``gamma_factors`` default to the likelihood rescale factors, which are on by
default for TELBO (``uses_likelihood_rescaling=True``: max_k |x_k| / |x_m|).

Two fixes to the published code: its stage-2 KL reads the *joint* encoder's log-variance in place of
q_m's, so nothing stops the unimodal variances from collapsing (the paper's KL(q_m || p) is used here);
and its optimizer reset at epoch W falls one epoch before its stage change (here both happen at W+1).

Inference for a subset S: S = all modalities: the joint encoder; S = {m}: q_m(z | x_m);
1 < |S| < M: the paper's product of experts for partially observed inputs,
q(z | x_S) \propto p(z) \prod_{m in S} q_m(z | x_m) (the published code refuses these subsets).

Training needs complete samples in stage 1 (the joint encoder takes every modality): an incomplete batch
raises :class:`IncompleteDataError`. Stage 2 needs only each unimodal ELBO's own modality and accepts
incomplete batches.

References:
    Vedantam, Fischer, Huang & Murphy, "Generative Models of Visually Grounded Imagination", ICLR 2018.
    https://arxiv.org/abs/1705.10762
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
from core.models._shared.gaussian import kl_standard_normal, rsample
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.poe import product_of_experts
from core.models._shared.two_stage import JOINT_STAGE, JointThenUnimodalStages
from core.models.base import sample_latent
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, advanced
from core.models.jmvae import JointEncoderVAE
from core.models.registry import register_model

__all__ = ["TELBOConfig", "TELBO"]


@dataclass(config=MODEL_CONFIG_DICT)
class TELBOConfig(BaseMultiVAEConfig):
    """Config of :class:`TELBO` (MultiVae's ``TELBOConfig``)."""

    uses_likelihood_rescaling: bool = Field(
        True, **advanced("Default lambda and gamma factors: max_size / size of each modality (on for TELBO).")
    )
    warmup: int = Field(
        10,
        ge=1,
        description="Epochs of the first stage (joint encoder and decoders); the unimodal encoders train from epoch "
        "warmup + 1, so train for more than warmup epochs (about twice as many).",
    )
    lambda_factors: dict[str, float] | None = Field(
        None, **advanced("Reconstruction weights of the joint ELBO, {modality: weight}; empty: the rescale factors.")
    )
    gamma_factors: dict[str, float] | None = Field(
        None, **advanced("Reconstruction weights of the unimodal ELBOs, {modality: weight}; empty: the rescale factors.")
    )

    @model_validator(mode="after")
    def _check_factors(self) -> TELBOConfig:
        names = self.modalities
        for key in ("lambda_factors", "gamma_factors"):
            factors = getattr(self, key) or {}
            if any(not w > 0 for w in factors.values()):
                raise ValueError(f"{key} = {factors}; every weight must be positive.")
            if factors and names and set(factors) != set(names):
                raise ValueError(f"{key} names {sorted(factors)} but the modalities are {sorted(names)}; give one per modality.")
        return self

    def lambda_factor(self, modality: str) -> float:
        return float(self.lambda_factors[modality]) if self.lambda_factors else self.likelihood_rescale(modality)

    def gamma_factor(self, modality: str) -> float:
        return float(self.gamma_factors[modality]) if self.gamma_factors else self.likelihood_rescale(modality)


@register_model
class TELBO(JointThenUnimodalStages, JointEncoderVAE):
    """Joint encoder and decoders first, then unimodal encoders through the frozen decoders (triple ELBO)."""

    name = "TELBO"
    config_class = TELBOConfig
    supports_incomplete_data = False
    summary = "Triple ELBO in two stages: joint encoder and decoders, then unimodal encoders; needs complete data."

    def __init__(
        self,
        model_config: TELBOConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
        joint_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders, joint_encoder)

    # ------------------------------------------------------------------ stages
    def unimodal_modules(self) -> list[nn.Module]:
        return [self.encoders]

    # ------------------------------------------------------------------ inference
    def posterior_subset(self, batch: DatasetOutput, subset: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z | x_S): joint encoder, one unimodal encoder, or the product of experts with the prior."""
        if len(subset) == len(self.modalities):
            return self.joint_gaussian(batch)
        experts = [self.encoder_gaussian(m, batch.data[m]) for m in subset]
        if len(experts) == 1:
            return experts[0]
        return product_of_experts(torch.stack([mu for mu, _ in experts]), torch.stack([lv for _, lv in experts]))

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

        Every conditioning modality must be observed (``ignore_incomplete`` is kept for a uniform API).
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        mu, logvar = self.posterior_subset(batch, cond)
        return ModelOutput(z=sample_latent(mu, logvar, N, return_mean, flatten), one_latent_space=True)

    # ------------------------------------------------------------------ objective
    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The negative ELBO of the stage that ``progress.epoch`` falls in (the current stage without progress).

        Stage ``joint`` terms: ``recon``, ``kl_prior``. Stage ``unimodal`` terms: ``neg_elbo[m]``,
        ``recon[m]`` and ``kl[m]`` = KL(q_m(z|x_m) || p(z)) over the samples that observe m, and
        ``recon``/``kl_prior`` of the frozen joint VAE on the complete samples, for monitoring.
        """
        stage = self.stage_at(progress.epoch) if progress is not None else self.current_stage
        if stage.name != self._active_stage:
            self.enter_stage(stage)
        batch = self.prepare_batch(inputs)
        if stage.name == JOINT_STAGE:
            self.require_complete(batch)
            recon, kl_prior = self.joint_elbo_terms(batch)
            terms = self._joint_terms(recon, kl_prior)
            return LossOutput(loss=(-recon + kl_prior).mean(), terms=terms, batch_size=batch.batch_size)
        return self._unimodal_elbos_loss(batch)

    def joint_elbo_terms(self, batch: DatasetOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: sum_m lambda_m log p(x_m | z) with z ~ q(z | X), and KL(q(z|X) || p(z))."""
        mu, logvar = self.joint_gaussian(batch)
        z = rsample(mu, logvar)
        recon = sum(
            self.model_config.lambda_factor(m) * self.reconstruction_log_likelihood(batch, m, self.decoder_output(m, z), rescale=False)
            for m in self.modalities
        )
        return recon, kl_standard_normal(mu, logvar)

    def _joint_terms(self, recon: torch.Tensor, kl_prior: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "recon": -recon.mean().detach(),
            "kl_prior": kl_prior.mean().detach(),
            kl_per_dimension_term("z"): kl_prior.mean().detach() / self.latent_dim,
        }

    def _unimodal_elbos_loss(self, batch: DatasetOutput) -> LossOutput:
        per_sample = torch.zeros(batch.batch_size, device=self.device)
        terms: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            mu, logvar = self.encoder_gaussian(m, batch.data[m])
            z = rsample(mu, logvar)
            recon = self.model_config.gamma_factor(m) * self.reconstruction_log_likelihood(
                batch, m, self.decoder_output(m, z), rescale=False
            )
            kl = torch.where(batch.masks[m], kl_standard_normal(mu, logvar), 0.0)
            per_sample = per_sample - recon + kl
            n_observed = batch.masks[m].sum().clamp_min(1)
            terms.update({
                f"neg_elbo[{m}]": ((kl - recon).sum() / n_observed).detach(),
                f"recon[{m}]": (-recon.sum() / n_observed).detach(),
                f"kl[{m}]": (kl.sum() / n_observed).detach(),
            })  # fmt: skip
        complete = torch.stack([batch.masks[m] for m in self.modalities]).all(0)
        if bool(complete.any()):
            with torch.no_grad():  # the frozen joint VAE, monitored on the complete samples
                recon, kl_prior = self.joint_elbo_terms(batch)
            terms.update(self._joint_terms(recon[complete], kl_prior[complete]))
        return LossOutput(loss=per_sample.mean(), terms=terms, batch_size=batch.batch_size)
