r"""CRMVAE: the MVTCAE posterior with unimodal reconstruction terms (Suzuki & Matsuo, 2023).

The joint posterior is the product of the unimodal Gaussian experts without the prior expert,
q(z | X) \propto \prod_m q_m(z | x_m). Each modality is reconstructed both from the joint posterior and
from its own unimodal posterior, and the joint posterior is pulled towards the prior and towards every
unimodal posterior. The objective (to maximise, per sample), with pi = 1 / (M + 1):

    L(X) = pi \sum_m ( E_{q(z|X)} [\lambda_m \log p(x_m | z)] + E_{q_m(z|x_m)} [\lambda_m \log p(x_m | z)] )
           - \beta pi ( KL(q(z|X) || p(z)) + \sum_m KL(q(z|X) || q_m(z|x_m)) )

with one reparameterised sample per posterior, averaged over the batch (``beta`` = 2.5, the published
code's default, weighs every KL term). The published code divides the reconstruction terms by
2(M + 1) instead of M + 1, halving their weight against the KL; the paper's weights are used here.
The published code also sums over the batch where this one averages, as every model here does.

Incomplete data: each sample's objective is that of its observed modalities (M is the number it has,
so pi = 1 / (M_i + 1)); only observed experts enter the product and only observed modalities are
reconstructed and pulled towards. A sample with no observed modality has no posterior and is left out.

Inference for a subset S: q(z | x_S) \propto \prod_{m in S} q_m(z | x_m).

References:
    Suzuki & Matsuo, "Mitigating the Limitations of Multimodal VAEs with Coordination-Based Approach",
    2023. https://openreview.net/forum?id=Rn8u4MYgeNJ
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from core.models._shared.annealing import TrainingProgress
from core.models._shared.free_bits import kl_per_dimension_term
from core.models._shared.gaussian import kl_normal, kl_standard_normal, rsample
from core.models._shared.outputs import LossOutput
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig
from core.models.mvtcae import PriorFreeProductVAE
from core.models.registry import register_model

__all__ = ["CRMVAEConfig", "CRMVAE"]


@dataclass(config=MODEL_CONFIG_DICT)
class CRMVAEConfig(BaseMultiVAEConfig):
    """Config of :class:`CRMVAE` (MultiVae's ``CRMVAEConfig``)."""

    beta: float = Field(2.5, ge=0, description="Weight of all the KL terms.")


@register_model
class CRMVAE(PriorFreeProductVAE):
    """Product of experts without the prior, joint and unimodal reconstructions; trains on incomplete data."""

    name = "CRMVAE"
    config_class = CRMVAEConfig
    supports_incomplete_data = True
    summary = "Product of experts without the prior; joint and unimodal reconstructions (CRMVAE); learns from incomplete data."
    ddp_find_unused_parameters = False  # every encoder and decoder takes part in every step

    def __init__(
        self,
        model_config: CRMVAEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders)

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The negative CRMVAE objective of the module docstring, averaged over the batch.

        Terms: ``recon`` (-sum_m lambda_m log p(x_m|z), z ~ q(z|X)), ``recon_unimodal`` (the same with
        z ~ q_m(z|x_m)), ``kl_prior`` and ``kl[m]`` = KL(q(z|X) || q_m(z|x_m)) over the samples that observe m.
        """
        batch = self.observed_samples(self.prepare_batch(inputs))
        experts = self.experts(batch)
        mu, logvar = self.product_posterior(batch, self.modalities, experts)
        z = rsample(mu, logvar)
        observed = {m: batch.masks[m].to(mu.dtype) for m in self.modalities}
        pi = 1 / (sum(observed.values()) + 1)  # per sample: 1 / (M_i + 1)
        recon_joint = self.joint_log_likelihood(batch, z, rescale=True)
        recon_unimodal = sum(
            self.reconstruction_log_likelihood(batch, m, self.decoder_output(m, rsample(*experts[m]))) for m in self.modalities
        )
        kl_prior = kl_standard_normal(mu, logvar)
        kl_unimodal = {m: observed[m] * kl_normal(mu, logvar, *experts[m]) for m in self.modalities}
        per_sample = -pi * (recon_joint + recon_unimodal) + self.model_config.beta * pi * (kl_prior + sum(kl_unimodal.values()))
        terms = {
            "recon": -recon_joint.mean().detach(),
            "recon_unimodal": -recon_unimodal.mean().detach(),
            "kl_prior": kl_prior.mean().detach(),
            kl_per_dimension_term("z"): kl_prior.mean().detach() / self.latent_dim,
            **{f"kl[{m}]": (kl.sum() / observed[m].sum().clamp_min(1)).detach() for m, kl in kl_unimodal.items()},
        }
        return LossOutput(loss=per_sample.mean(), terms=terms, batch_size=batch.batch_size)
