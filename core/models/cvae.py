r"""CVAE: a conditional VAE of one main modality given fixed conditioning modalities (Sohn et al., 2015).

Unlike the multimodal VAEs, a CVAE models a single modality x (``main_modality``) given the
conditioning modalities c (``conditioning_modalities``), which are always observed:

    p(x | c) = \int p_theta(x | z, c) p(z | c) dz,    q_phi(z | x, c),

with p(z | c) = N(0, I) by default, or a learned Gaussian prior network (``conditional_prior``, or a
``prior_network`` module). The objective (to minimise, per sample) is the negative conditional ELBO

    L(x, c) = -E_{q(z|x,c)} [ \log p(x | z, c) ] + \beta KL(q(z|x,c) || p(z|c)),

with one reparameterised sample, averaged over the batch (``beta`` = 1; ``decoder_dist`` = normal).

What it answers, in the shared API: ``encode``/``predict`` from the conditioning modalities draw z from
the prior p(z | c) and generate x (cross-modal synthesis of x from c); from all of them (x and c) they
use the posterior q(z | x, c) (reconstruction). Only x is generated (``gen_mod='all'`` means x); any
other conditioning set is refused with the sets it accepts. ``generate_from_prior`` needs the
conditioning data (``generate_from_prior(cond_mod_data, N)``): a CVAE has no unconditional model.

Training needs x and every conditioning modality for every sample (other modalities of the data are
ignored and may be missing): the maths conditions on c, so a sample without it cannot be used.

``main_modality`` defaults to the last modality of the data and ``conditioning_modalities`` to all the
others (the published code requires both); the model's config holds the resolved names
(``model.main_modality``, ``model.conditioning_modalities``).

References:
    Sohn, Lee & Yan, "Learning Structured Output Representation using Deep Conditional Generative
    Models", NeurIPS 2015.
    https://papers.nips.cc/paper/2015/hash/8d55a249e6baa5c06772297520da2051-Abstract.html
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from torch import nn

from core.data.dataset import DatasetOutput
from core.models._shared.annealing import TrainingProgress
from core.models._shared.gaussian import kl_normal, log_normal, rsample
from core.models._shared.importance import importance_sampled_log_px
from core.models._shared.likelihoods import DecoderDistribution, mean_of
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models.base import IncompleteDataError, MultimodalVAE
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, ConfigError
from core.models.registry import register_model
from core.nn.base import as_gaussian, as_reconstruction, evaluation_mode
from core.nn.conditional import ConditionalDecoder
from core.nn.default_architectures import default_encoder
from core.nn.joint import MultipleHeadJointEncoder

__all__ = ["CVAEConfig", "CVAE", "UnusedSlot"]

Gaussian = tuple[torch.Tensor, torch.Tensor]


@dataclass(config=MODEL_CONFIG_DICT)
class CVAEConfig(BaseMultiVAEConfig):
    """Config of :class:`CVAE` (MultiVae's ``CVAEConfig``)."""

    main_modality: str | None = Field(None, description="The modality the model generates; empty: the last one.")
    conditioning_modalities: list[str] | None = Field(
        None, description="The modalities it is conditioned on (always observed); empty: all but the main one."
    )
    beta: float = Field(1.0, ge=0, description="Weight of the KL divergence.")
    decoder_dist: DecoderDistribution = Field("normal", description="Output distribution of the main modality.")
    conditional_prior: bool = Field(
        False, description="Learn the prior p(z | c) from the conditioning modalities instead of N(0, I)."
    )

    @model_validator(mode="after")
    def _check_roles(self) -> CVAEConfig:
        if self.decoders_dist is not None:
            raise ValueError("A CVAE has one decoder: set decoder_dist (e.g. 'normal'), not decoders_dist.")
        names = self.modalities
        if not names:
            return self
        if self.main_modality is not None and self.main_modality not in names:
            raise ValueError(f"main_modality '{self.main_modality}' is not a modality; the modalities are {names}.")
        cond = self.conditioning_modalities
        if cond is not None:
            unknown = [m for m in cond if m not in names]
            if unknown:
                raise ValueError(f"conditioning_modalities names unknown modalities {unknown}; the modalities are {names}.")
            if not cond or len(set(cond)) != len(cond) or self.main() in cond:
                raise ValueError(
                    f"conditioning_modalities = {cond}: give one or more distinct modalities other than the main one "
                    f"('{self.main()}')."
                )
        elif len(names) < 2:
            raise ValueError(f"A CVAE needs a conditioning modality besides '{self.main()}'; the data has only {names}.")
        return self

    def main(self) -> str:
        """The main modality: ``main_modality`` or the last modality of ``input_dims``."""
        return self.main_modality or self.modalities[-1]

    def conditioning(self) -> list[str]:
        """The conditioning modalities: as given, or every modality but the main one, in the data's order."""
        if self.conditioning_modalities is not None:
            return list(self.conditioning_modalities)
        return [m for m in self.modalities if m != self.main()]

    def decoder_distribution(self, modality: str) -> str:
        return self.decoder_dist


class UnusedSlot(nn.Module):
    """A per-modality encoder/decoder slot of the shared API, empty in a CVAE: one joint encoder
    (``model.encoder``) and one conditional decoder (``model.decoder``) do the work."""

    def __init__(self, modality: str) -> None:
        super().__init__()
        self.modality = modality

    def forward(self, *args: Any) -> Any:
        raise TypeError(f"A CVAE has no per-modality network for '{self.modality}'; use model.encoder and model.decoder.")


@register_model
class CVAE(MultimodalVAE):
    """Conditional VAE of the main modality given the conditioning modalities.

    Args:
        model_config: a :class:`CVAEConfig` (``input_dims`` required).
        encoder: q(z | x, c): a module taking the dict of the main and conditioning modalities and
            returning a Gaussian over ``latent_dim``; default
            :class:`~core.nn.joint.MultipleHeadJointEncoder` over default encoders.
        decoder: p(x | z, c): ``decoder(z, cond)`` (see :mod:`core.nn.conditional`); default
            :class:`~core.nn.conditional.ConditionalDecoder`.
        prior_network: p(z | c): a module taking the dict of the conditioning modalities and returning a
            Gaussian; default N(0, I), or a joint encoder over them with ``conditional_prior``.
    """

    name = "CVAE"
    config_class = CVAEConfig
    supports_incomplete_data = False
    conditions_on_fixed_modalities = True  # predict answers cond_mod = its conditioning modalities (or all)
    summary = "Conditional VAE: generates the main modality from fixed conditioning modalities; needs them observed."
    ddp_find_unused_parameters = False  # the encoder, decoder and prior network all take part in every step

    def __init__(
        self,
        model_config: CVAEConfig,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        prior_network: nn.Module | None = None,
    ) -> None:
        if not isinstance(model_config, CVAEConfig) or model_config.input_dims is None:
            raise ConfigError("A CVAE needs a CVAEConfig with input_dims (the modalities and their shapes).")
        # The roles are resolved in the config, so model.main_modality and the saved bundle name them.
        super().__init__(
            replace(model_config, main_modality=model_config.main(), conditioning_modalities=model_config.conditioning())
        )
        self.record_custom_architectures(encoder=encoder, decoder=decoder, prior_network=prior_network)
        for label, module in (("encoder", encoder), ("decoder", decoder), ("prior_network", prior_network)):
            if module is not None and not isinstance(module, nn.Module):
                raise ConfigError(f"{label} must be a torch.nn.Module, got {type(module).__name__}.")
        cfg = self.model_config
        dims = cfg.input_dims or {}
        self.used_modalities = [self.main_modality, *self.conditioning_modalities]
        self.encoder = encoder or MultipleHeadJointEncoder(
            {m: default_encoder(dims[m], self.latent_dim) for m in self.used_modalities}, self.latent_dim
        )
        cond_dims = {m: dims[m] for m in self.conditioning_modalities}
        self.decoder = decoder or ConditionalDecoder(self.latent_dim, dims[self.main_modality], cond_dims)
        if prior_network is None and cfg.conditional_prior:
            prior_network = MultipleHeadJointEncoder(
                {m: default_encoder(dims[m], self.latent_dim) for m in self.conditioning_modalities}, self.latent_dim
            )
        self.prior_network = prior_network
        if self.decoder_log_scales is not None:  # only the main modality is decoded
            for m in [m for m in self.decoder_log_scales if m != self.main_modality]:
                del self.decoder_log_scales[m]

    def build_default_encoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return UnusedSlot(modality)

    def build_default_decoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return UnusedSlot(modality)

    # ------------------------------------------------------------------ the three networks
    def require_observed(self, batch: DatasetOutput) -> None:
        """Raise :class:`IncompleteDataError` if a sample lacks the main or a conditioning modality."""
        for m in self.used_modalities:
            if not bool(batch.masks[m].all()):
                missing = torch.nonzero(~batch.masks[m]).flatten().tolist()
                who = [batch.ids[i] for i in missing[:5]] if batch.ids else missing[:5]
                raise IncompleteDataError(
                    f"CVAE cannot train on samples without its main or conditioning modalities {self.used_modalities}: "
                    f"'{m}' is missing for {len(missing)} sample(s) (e.g. {who}). Keep the subjects that have them, "
                    "or use a model that learns from incomplete data (MVAE, MVTCAE, DMVAE, MHVAE, Nexus)."
                )

    def posterior(self, batch: DatasetOutput) -> Gaussian:
        """``(mu, logvar)`` of q(z | x, c), each ``(B, D)``."""
        return as_gaussian(self.encoder({m: batch.data[m] for m in self.used_modalities}))

    def prior(self, cond: Mapping[str, torch.Tensor]) -> Gaussian:
        """``(mu, logvar)`` of p(z | c), each ``(B, D)``: the prior network's, or N(0, I)."""
        if self.prior_network is not None:
            return as_gaussian(self.prior_network({m: cond[m] for m in self.conditioning_modalities}))
        zeros = torch.zeros(next(iter(cond.values())).shape[0], self.latent_dim, device=self.device)
        return zeros, zeros

    def decoder_main(self, z: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Parameters of p(x | z, c) for ``z`` of shape ``(*lead, D)`` and ``cond`` of shape ``(*lead, *shape)``."""
        lead = z.shape[:-1]
        flat = {m: cond[m].reshape(-1, *cond[m].shape[len(lead):]) for m in self.conditioning_modalities}
        x_hat = as_reconstruction(self.decoder(z.reshape(-1, z.shape[-1]), flat))
        return x_hat.reshape(*lead, *x_hat.shape[1:])

    # ------------------------------------------------------------------ the shared API
    def cannot_generate(self, cond_mod: str | Sequence[str], gen_mod: str | Sequence[str]) -> str | None:
        """A CVAE generates only its main modality, and only from (at least) its conditioning modalities."""
        cond = set(self.resolve_modalities(cond_mod))
        gen = [self.main_modality] if gen_mod == "all" else self.resolve_modalities(gen_mod)
        others = [m for m in gen if m != self.main_modality]
        if others:
            return f"A CVAE generates only '{self.main_modality}'; it has no decoder for {others}."
        lacking = sorted(set(self.conditioning_modalities) - cond)
        if lacking:
            return (
                f"A CVAE generates '{self.main_modality}' from its conditioning modalities {self.conditioning_modalities} "
                f"(cond_mod={self.conditioning_modalities}) or reconstructs it from them and itself (cond_mod='all'); "
                f"cond_mod={sorted(cond)} lacks {lacking}."
            )
        return None

    def _uses_posterior(self, cond_mod: str | Sequence[str]) -> bool:
        """True for x and c (posterior), False for c alone (prior); anything else is refused."""
        reason = self.cannot_generate(cond_mod, self.main_modality)
        if reason:
            raise ValueError(reason)
        return self.main_modality in self.resolve_modalities(cond_mod)

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
        """``z`` ~ q(z | x, c) when ``cond_mod`` holds the main modality, else z ~ p(z | c); and
        ``cond_mod_data`` (the conditioning data with z's leading dims) for ``decode``.

        ``z`` is ``(B, D)`` for N = 1, ``(N, B, D)`` otherwise (``(N*B, D)`` with ``flatten``).
        """
        use_posterior = self._uses_posterior(cond_mod)
        batch = self.prepare_batch(inputs)
        needed = self.used_modalities if use_posterior else self.conditioning_modalities
        self.check_observed(batch, needed, ignore_incomplete=False)
        cond = {m: batch.data[m] for m in self.conditioning_modalities}
        mu, logvar = self.posterior(batch) if use_posterior else self.prior(cond)
        return self._latent_output(mu, logvar, cond, N, return_mean, flatten)

    def _latent_output(
        self, mu: torch.Tensor, logvar: torch.Tensor, cond: Mapping[str, torch.Tensor], N: int, return_mean: bool, flatten: bool
    ) -> ModelOutput:
        z = rsample(mu, logvar, N, return_mean)
        if N > 1:
            cond = {m: x.unsqueeze(0).expand(N, *x.shape) for m, x in cond.items()}
            if flatten:
                z = z.reshape(-1, z.shape[-1])
                cond = {m: x.reshape(-1, *x.shape[2:]) for m, x in cond.items()}
        return ModelOutput(z=z, cond_mod_data=dict(cond), one_latent_space=True)

    def decoder_parameters(self, embedding: ModelOutput, modality: str) -> torch.Tensor:
        """Parameters of p(x | z, c): the decoder reads the conditioning data the embedding carries."""
        if modality != self.main_modality:
            raise ValueError(f"A CVAE generates only '{self.main_modality}'; it has no p({modality} | z).")
        return self.decoder_main(embedding["z"], embedding["cond_mod_data"])

    @torch.no_grad()
    def decode(self, embedding: ModelOutput, modalities: str | Sequence[str] = "all", **kwargs: Any) -> ModelOutput:
        """Mean of p(x | z, c) under the main modality's name (``modalities`` may only ask for it)."""
        asked = self.resolve_modalities(modalities) if modalities != "all" else [self.main_modality]
        if asked != [self.main_modality]:
            raise ValueError(f"A CVAE generates only '{self.main_modality}'; it cannot generate {asked}.")
        cond = embedding.get("cond_mod_data")
        if cond is None:
            raise ValueError(
                "A CVAE decodes z together with its conditioning data: pass an embedding from encode() or "
                "generate_from_prior(cond_mod_data), which carry 'cond_mod_data'."
            )
        with evaluation_mode(self):
            x_hat = self.decoder_main(embedding["z"], cond)
            return ModelOutput({self.main_modality: mean_of(self.model_config.decoder_dist, x_hat)})

    @torch.no_grad()
    def generate_from_prior(
        self, cond_mod_data: Mapping[str, torch.Tensor] | None = None, N: int = 1, flatten: bool = False, **kwargs: Any
    ) -> ModelOutput:
        """z ~ p(z | c) for the given conditioning data ``{modality: (B, *shape)}``: ``(B, D)`` for N = 1,
        ``(N, B, D)`` otherwise, with ``cond_mod_data`` for ``decode``."""
        if not isinstance(cond_mod_data, Mapping):
            raise ValueError(
                "A CVAE has no unconditional model: call generate_from_prior(cond_mod_data, N) with the conditioning "
                f"modalities {self.conditioning_modalities}, e.g. {{'{self.conditioning_modalities[0]}': tensor}}."
            )
        missing = [m for m in self.conditioning_modalities if m not in cond_mod_data]
        if missing:
            raise ValueError(f"cond_mod_data lacks the conditioning modalities {missing}.")
        with evaluation_mode(self):
            cond = {m: torch.as_tensor(cond_mod_data[m]).to(self.device) for m in self.conditioning_modalities}
            return self._latent_output(*self.prior(cond), cond, N, False, flatten)

    # ------------------------------------------------------------------ objective
    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The negative conditional ELBO of the module docstring, averaged over the batch.

        Terms: ``recon`` (-log p(x|z,c)) and ``kl_prior`` = KL(q(z|x,c) || p(z|c)); none is watched for
        posterior collapse (see the comment below).
        """
        batch = self.prepare_batch(inputs)
        self.require_observed(batch)
        cond = {m: batch.data[m] for m in self.conditioning_modalities}
        mu, logvar = self.posterior(batch)
        z = rsample(mu, logvar)
        recon = self.reconstruction_log_likelihood(batch, self.main_modality, self.decoder_main(z, cond))
        kl = kl_normal(mu, logvar, *self.prior(cond))
        # No kl_per_dim term: z holds only what c does not say about x, so a KL near 0 (c determines x)
        # is the right answer, not the posterior collapse the trainer's check warns about.
        terms = {"recon": -recon.mean().detach(), "kl_prior": kl.mean().detach()}
        return LossOutput(loss=(-recon + self.model_config.beta * kl).mean(), terms=terms, batch_size=batch.batch_size)

    @torch.no_grad()
    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        r"""-\sum_i log p(x_i | c_i), the likelihood a CVAE defines (of its main modality given the
        conditioning ones), by importance sampling with q(z | x, c) as proposal:

            log p(x | c) ~ logsumexp_k [log p(x | z_k, c) + log p(z_k | c) - log q(z_k | x, c)] - log K.
        """
        batch = self.prepare_batch(inputs)
        self.require_observed(batch)
        cond = {m: batch.data[m] for m in self.conditioning_modalities}
        mu, logvar = self.posterior(batch)
        prior_mu, prior_logvar = self.prior(cond)

        def log_weights(k: int) -> torch.Tensor:
            z = rsample(mu, logvar, k).reshape(k, *mu.shape)
            expanded = {m: x.unsqueeze(0).expand(k, *x.shape) for m, x in cond.items()}
            x_hat = self.decoder_main(z, expanded)
            log_px = self.reconstruction_log_likelihood(batch, self.main_modality, x_hat, rescale=False)
            return log_px + log_normal(z, prior_mu, prior_logvar) - log_normal(z, mu, logvar)

        return -importance_sampled_log_px(log_weights, K, batch_size_K).sum()
