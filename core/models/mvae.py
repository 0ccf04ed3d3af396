r"""MVAE: product-of-experts multimodal VAE with sub-sampled ELBOs (Wu & Goodman, 2018).

The joint posterior of any subset S of modalities is a product of Gaussian experts with the prior:

    q(z | x_S) \propto p(z) \prod_{m \in S} q_m(z | x_m)

and each ELBO reconstructs the modalities of its own subset:

    ELBO_S(X) = E_{q(z|x_S)} [ \sum_{m \in S} \lambda_m \log p(x_m | z) ] - \beta_t KL(q(z|x_S) || p(z))

The objective sums ELBO_S over the joint set, every single modality (``use_subsampling``) and ``k``
random subsets of size 2..M-1 (training only, M > 2). On incomplete data only the observed experts
enter each product and only observed modalities are reconstructed; a subset is averaged over the
samples that observe at least one of its modalities.

References:
    Wu & Goodman, "Multimodal Generative Models for Scalable Weakly-Supervised Learning", NeurIPS 2018.
    https://arxiv.org/abs/1802.05335
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from torch import nn

from core.data.dataset import DatasetOutput
from core.models._shared.annealing import TrainingProgress, linear_warmup_per_step
from core.models._shared.free_bits import kl_per_dimension_term
from core.models._shared.gaussian import kl_standard_normal
from core.models._shared.importance import importance_sampled_nll
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.poe import product_of_experts
from core.models._shared.subsets import experts_of_subsets, random_subsets, subset_name
from core.models.base import MultimodalVAE, sample_latent
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, advanced
from core.models.registry import register_model

__all__ = ["MVAEConfig", "MVAE"]


@dataclass(config=MODEL_CONFIG_DICT)
class MVAEConfig(BaseMultiVAEConfig):
    """Config of :class:`MVAE` (seed: ``multivae.models.MVAEConfig``)."""

    use_subsampling: bool = Field(
        True, description="Add the unimodal ELBOs and k random subset ELBOs to the joint ELBO."
    )
    k: int = Field(0, ge=0, **advanced("Number of random subsets (size 2..M-1) per batch; only used when M > 2."))
    warmup: int = Field(10, ge=0, description="Epochs over which the KL weight rises linearly from 0 to beta.")
    beta: float = Field(1.0, ge=0, description="Weight of the KL divergence.")

    @model_validator(mode="after")
    def _check_k(self) -> MVAEConfig:
        m = self.n_modalities
        n_middle = 2**m - 2 - m if m > 2 else 0
        if self.k > n_middle and m > 2:
            raise ValueError(f"k = {self.k} but only {n_middle} subsets of size 2..{m - 1} exist for {m} modalities.")
        return self


@register_model
class MVAE(MultimodalVAE):
    """The multimodal VAE with a product-of-experts posterior; trains on incomplete data."""

    name = "MVAE"
    config_class = MVAEConfig
    supports_incomplete_data = True
    summary = "Product of experts with the prior expert; sub-sampled ELBOs; learns from incomplete data."
    ddp_find_unused_parameters = False  # every encoder and decoder takes part in every step

    def __init__(
        self,
        model_config: MVAEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders)

    @property
    def k(self) -> int:
        """Random subsets per step: the config's ``k``, or 0 with two modalities (no subset of size 2..M-1)."""
        return self.model_config.k if len(self.modalities) > 2 else 0

    @property
    def start_keep_best_epoch(self) -> int:
        return self.model_config.warmup + 1

    # ------------------------------------------------------------------ inference
    def compute_mu_log_var_subset(
        self, inputs: Any, subset: Sequence[str], experts: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | x_S): PoE of the observed experts of ``subset`` and the prior."""
        batch = inputs if isinstance(inputs, DatasetOutput) else self.prepare_batch(inputs)
        if experts is None:
            experts = {m: self.encoder_gaussian(m, batch.data[m]) for m in subset}
        mus = torch.stack([experts[m][0] for m in subset])
        logvars = torch.stack([experts[m][1] for m in subset])
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
        """z ~ q(z | x_cond): ``(B, D)`` for N = 1, ``(N, B, D)`` otherwise (``(N*B, D)`` if flatten)."""
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        mu, logvar = self.compute_mu_log_var_subset(batch, cond)
        return ModelOutput(z=sample_latent(mu, logvar, N, return_mean, flatten), one_latent_space=True)

    # ------------------------------------------------------------------ objective
    def subsets_for_step(self) -> list[tuple[str, ...]]:
        """The joint set, the singletons and (training only) k random subsets."""
        subsets = [tuple(self.modalities)]
        if self.model_config.use_subsampling:
            subsets += [(m,) for m in self.modalities if len(self.modalities) > 1]
            if self.training and self.k > 0:
                # Drawn from torch's RNG so that checkpoints (which save it) make resumes exact.
                generator = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
                subsets += random_subsets(self.modalities, self.k, generator)
        return subsets

    def subset_posteriors(
        self, experts: Mapping[str, tuple[torch.Tensor, torch.Tensor]], keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x_S) of every subset in one product of experts: ``(S, B, *D)`` means and log-variances.

        ``keep`` (``(M, S, B)``, :func:`experts_of_subsets`) masks out the experts that are not in a subset
        or not observed, which leaves that subset's product unchanged, so one batched call replaces one
        call per subset."""
        n_modalities, n_subsets, n = keep.shape

        def for_every_subset(i: int) -> torch.Tensor:  # (M, S * B, *D): each expert repeated per subset
            params = torch.stack([experts[m][i] for m in self.modalities])  # (M, B, *D)
            repeated = params.unsqueeze(1).expand(-1, n_subsets, *params.shape[1:])
            return repeated.reshape(n_modalities, n_subsets * n, *params.shape[2:])

        mu, logvar = product_of_experts(for_every_subset(0), for_every_subset(1), keep.reshape(n_modalities, -1), with_prior=True)
        return mu.reshape(n_subsets, n, *mu.shape[1:]), logvar.reshape(n_subsets, n, *logvar.shape[1:])

    def decode_subsets(self, z: torch.Tensor, subsets: Sequence[Sequence[str]]) -> dict[str, dict[int, torch.Tensor]]:
        """modality -> subset index -> decoder output, for the modalities of each subset.

        Each decoder runs once on the latents of every subset that holds its modality (fewer, larger
        passes; the per-step cost of small networks is mostly per call). A decoder with batch
        normalisation runs once per subset instead, so its batch statistics stay those of one subset."""
        # Looked up every step (a few dozen modules), so a decoder swapped in later is seen.
        normalise_over_batch = any(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in self.decoders.modules())
        out: dict[str, dict[int, torch.Tensor]] = {}
        for m in self.modalities:
            rows = [s for s, subset in enumerate(subsets) if m in subset]
            if not rows:
                continue
            if normalise_over_batch:
                out[m] = {s: self.decoder_output(m, z[s]) for s in rows}
            else:
                x_hat = self.decoder_output(m, z[rows])
                out[m] = dict(zip(rows, x_hat.unbind(0), strict=True))
        return out

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        batch = self.prepare_batch(inputs)
        beta = linear_warmup_per_step(progress, self.model_config.warmup, self.model_config.beta)
        subsets = self.subsets_for_step()
        experts = {m: self.encoder_gaussian(m, batch.data[m]) for m in self.modalities}
        keep = experts_of_subsets(self.modalities, subsets, batch.masks)  # (M, S, B)
        mu, logvar = self.subset_posteriors(experts, keep)
        # One draw for every subset: the same distribution as one draw per subset, though not always the
        # same numbers (that depends on how torch's sampler splits the batch), so seeded runs differ.
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        x_hats = self.decode_subsets(z, subsets)
        # Likelihoods per subset and modality, in the order of the unbatched objective (a calibrated
        # scale is fitted to each subset's reconstruction, and its running mean updated in that order).
        recon = torch.stack(
            [sum(self.reconstruction_log_likelihood(batch, m, x_hats[m][s]) for m in subset) for s, subset in enumerate(subsets)]
        )  # (S, B)
        kl = kl_standard_normal(mu, logvar)  # (S, B)
        covered = keep.any(0)  # (S, B): the samples that observe at least one of the subset's modalities
        n_covered = covered.sum(1)
        # A subset no sample covers has weight 0 everywhere: it adds nothing to the loss or its gradient.
        weight = covered.float() / n_covered.clamp(min=1).unsqueeze(1)
        neg_recon = -(recon * weight).sum(1)
        kl_mean = (kl * weight).sum(1)
        subset_loss = neg_recon + beta * kl_mean  # (S,)
        loss = subset_loss.sum()

        is_covered = (n_covered > 0).tolist()  # one host read per step, for the terms only
        n_joint_and_singletons = 1 + (len(self.modalities) if self.model_config.use_subsampling and len(self.modalities) > 1 else 0)
        terms: dict[str, torch.Tensor] = {}
        if is_covered[0]:  # the joint posterior: is the latent used at all?
            terms[kl_per_dimension_term("z")] = kl_mean[0].detach() / self.latent_dim
        for index, subset in enumerate(subsets[:n_joint_and_singletons]):
            if is_covered[index]:
                terms[f"elbo[{subset_name(subset)}]"] = subset_loss[index].detach()
        if self.training and self.k > 0:
            terms["elbo[random subsets]"] = subset_loss[n_joint_and_singletons:].detach().sum()
        terms.update(recon=neg_recon.detach().sum(), kl=kl_mean.detach().sum(), beta=torch.tensor(beta))
        return LossOutput(loss=loss, terms=terms, batch_size=batch.batch_size)

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        """-sum_i log p(X_i) by importance sampling with q(z | X_i) as proposal (rescaling not applied).

        For an incomplete sample the estimate is of the marginal likelihood of its observed modalities.
        """
        batch = self.prepare_batch(inputs)
        mu, logvar = self.compute_mu_log_var_subset(batch, self.modalities)
        return importance_sampled_nll(mu, logvar, lambda z: self.joint_log_likelihood(batch, z), K, batch_size_K)
