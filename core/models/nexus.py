r"""Nexus: a two-level hierarchy of modality-specific latents z_m and a shared latent z_sigma
(Vasco et al., 2022), with forced perceptual dropout.

Generative chain: z_sigma ~ N(0, I) -> z_m = t_m(z_sigma) (top decoder mean) -> x_m ~ p(x_m | z_m).

Inference: each modality has its own VAE q(z_m | x_m); the (stop-gradient) codes zbar_m = sg(z_m) are
turned into messages h_m = g_m(zbar_m), averaged over the modalities at hand, hbar = mean_m h_m, and
the nexus node gives q(z_sigma | hbar).

The loss is the sum of the bottom loss (M unimodal ELBOs)

    l_bottom = \sum_m [ \beta_m a_e KL(q(z_m|x_m) || N(0,I)) - \lambda_m E_{q(z_m|x_m)} log p(x_m | z_m) ]

and the top loss

    l_top = \beta a_e KL(q(z_sigma|hbar) || N(0,I)) - \sum_m \gamma_m E_{q(z_sigma|hbar)} log N(zbar_m; t_m(z_sigma), s_m^2)

with a_e = min(e / W, 1) (per epoch, W = ``warmup``), one reparameterised sample per latent, and the
loss averaged over the batch. s_m = 1, or for the modalities in ``adapt_top_decoder_variance`` the
sigma-VAE optimal scale s_m^2 = mean over the batch and dimensions of (zbar_m - t_m(z_sigma))^2. The
stop-gradient makes the two levels two VAEs trained side by side, as in the original code.

Forced perceptual dropout (training only): with probability ``dropout_rate`` a sample keeps only a
uniformly drawn number n in {1, ..., k-1} of its k available messages (a random choice of them); every
observed z_m is still reconstructed by the top decoders, which forces cross-modal inference.

Partially observed data: a missing modality has no bottom term and no top reconstruction term, and its
message is left out of the mean (dropout acts on the observed messages only). A sample with no observed
modality has no message at all: it has no top term either (no z_sigma is inferred for it), so it adds
nothing to the loss instead of a 0/0 NaN.

References:
    Vasco, Yin, Melo & Paiva, "Leveraging hierarchy in multimodal generative models for effective
    cross-modality inference", Neural Networks 146 (2022). https://doi.org/10.1016/j.neunet.2021.11.019
    Rybkin, Daniilidis & Levine, "Simple and Effective VAE Training with Calibrated Decoders" (sigma-VAE),
    ICML 2021. https://arxiv.org/abs/2006.13202
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from torch import nn

from core.models._shared.annealing import TrainingProgress, linear_warmup_per_epoch
from core.models._shared.free_bits import kl_per_dimension_term
from core.models._shared.gaussian import kl_standard_normal, log_normal, rsample
from core.models._shared.likelihoods import mean_of
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models.base import ModalityError, MultimodalVAE
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, ConfigError, advanced
from core.models.registry import register_model
from core.nn.base import as_embedding, as_gaussian, as_reconstruction, evaluation_mode
from core.nn.default_architectures import MLPDecoder, MLPEncoder, default_decoder, default_encoder, mlp

__all__ = ["NexusConfig", "Nexus"]

MIN_TOP_VARIANCE = 1e-6


@dataclass(config=MODEL_CONFIG_DICT)
class NexusConfig(BaseMultiVAEConfig):
    """Config of :class:`Nexus` (MultiVae's ``NexusConfig``)."""

    modalities_specific_dim: dict[str, int] | None = Field(
        None, description="Size of each modality's own latent z_m (bottom level); None or a missing key: latent_dim."
    )
    bottom_betas: dict[str, float] | None = Field(
        None, **advanced("Weight beta_m of each bottom KL divergence; None or a missing key: 1.")
    )
    dropout_rate: float = Field(
        0.0, ge=0, le=1, description="Probability that a training sample drops some of its messages (forced perceptual dropout)."
    )
    msg_dim: int = Field(10, ge=1, description="Size of the message each modality sends to the shared latent.")
    aggregator: Literal["mean"] = Field("mean", **advanced("How messages are combined; only 'mean'."))
    top_beta: float = Field(1.0, ge=0, description="Weight of the KL divergence of the shared latent z_sigma.")
    gammas: dict[str, float] | None = Field(
        None, **advanced("Weight gamma_m of each top reconstruction of z_m; None or a missing key: 1.")
    )
    warmup: int = Field(20, ge=0, description="Epochs over which the KL weights rise linearly (1/warmup at epoch 1).")
    adapt_top_decoder_variance: list[str] | None = Field(
        None, **advanced("Modalities whose top decoder uses the sigma-VAE optimal variance instead of 1.")
    )

    @model_validator(mode="after")
    def _check_nexus_fields(self) -> NexusConfig:
        check_modality_keys(self, self.modalities)
        for key, minimum in (("modalities_specific_dim", 1), ("bottom_betas", 0), ("gammas", 0)):
            for m, value in (getattr(self, key) or {}).items():
                if not (value >= minimum and math.isfinite(value)):
                    raise ValueError(f"{key}['{m}'] = {value}; it must be a number >= {minimum}.")
        return self


def check_modality_keys(config: NexusConfig, modalities: Sequence[str]) -> None:
    """Raise if a per-modality field of ``config`` names a modality not in ``modalities`` (when known)."""
    if not modalities:
        return
    for key in ("modalities_specific_dim", "bottom_betas", "gammas", "adapt_top_decoder_variance"):
        unknown = sorted(set(getattr(config, key) or []) - set(modalities))
        if unknown:
            raise ValueError(f"{key} names unknown modalities {unknown}; the modalities are {list(modalities)}.")


@register_model
class Nexus(MultimodalVAE):
    """Nexus: modality-specific latents under a shared one, messages averaged over what is observed.

    Args:
        model_config: a :class:`NexusConfig`.
        encoders: modality -> bottom encoder q(z_m | x_m), a Gaussian over ``modalities_specific_dim[m]``.
        decoders: modality -> bottom decoder p(x_m | z_m).
        top_encoders: modality -> message encoder z_m -> h_m of size ``msg_dim`` (a tensor, or a Gaussian
            output of which the mean is used). Default: MLP d_m -> 512 -> 512 -> msg_dim.
        joint_encoder: the nexus node hbar -> q(z_sigma | hbar), a Gaussian over ``latent_dim``.
            Default: MLP msg_dim -> 512 -> 512 -> (mean, log-variance).
        top_decoders: modality -> t_m, z_sigma -> mean of z_m (a tensor or a decoder output). Default: MLP
            latent_dim -> 512 -> 512 -> d_m with a linear output: it predicts unbounded latent codes.
    """

    name = "Nexus"
    config_class = NexusConfig
    supports_incomplete_data = True
    summary = "Modality-specific latents under a shared nexus latent; forced perceptual dropout; learns from incomplete data."

    def __init__(
        self,
        model_config: NexusConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
        top_encoders: Mapping[str, nn.Module] | None = None,
        joint_encoder: nn.Module | None = None,
        top_decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders)
        self.record_custom_architectures(top_encoders=top_encoders, joint_encoder=joint_encoder, top_decoders=top_decoders)
        cfg = self.model_config
        try:
            check_modality_keys(cfg, self.modalities)
        except ValueError as exc:
            raise ModalityError(str(exc)) from None
        self.bottom_dims = {m: self._bottom_dim(m) for m in self.modalities}
        self.top_encoders = self._per_modality(
            "top_encoders", top_encoders, lambda m: mlp([self.bottom_dims[m], 512, 512, cfg.msg_dim])
        )
        self.top_decoders = self._per_modality(
            "top_decoders", top_decoders, lambda m: MLPDecoder(self.latent_dim, (self.bottom_dims[m],))
        )
        if joint_encoder is None:
            joint_encoder = MLPEncoder((cfg.msg_dim,), self.latent_dim)
        elif not isinstance(joint_encoder, nn.Module):
            raise ConfigError(f"joint_encoder must be a torch.nn.Module, got {type(joint_encoder).__name__}.")
        self.joint_encoder = joint_encoder
        if encoders is not None and cfg.input_dims is not None:
            self._check_bottom_dims()

    # ------------------------------------------------------------------ construction helpers
    def _bottom_dim(self, modality: str) -> int:
        return int((self.model_config.modalities_specific_dim or {}).get(modality, self.model_config.latent_dim))

    def build_default_encoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return default_encoder(shape, self._bottom_dim(modality))

    def build_default_decoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return default_decoder(self._bottom_dim(modality), shape)

    def _per_modality(self, what: str, modules: Mapping[str, nn.Module] | None, build: Any) -> nn.ModuleDict:
        if modules is None:
            return nn.ModuleDict({m: build(m) for m in self.modalities})
        if set(modules) != set(self.modalities):
            raise ModalityError(f"{what} are given for {sorted(modules)} but the modalities are {sorted(self.modalities)}.")
        for m, module in modules.items():
            if not isinstance(module, nn.Module):
                raise ConfigError(f"{what}['{m}'] must be a torch.nn.Module, got {type(module).__name__}.")
        return nn.ModuleDict({m: modules[m] for m in self.modalities})

    @torch.no_grad()
    def _check_bottom_dims(self) -> None:
        with evaluation_mode(self):
            for m, shape in (self.model_config.input_dims or {}).items():
                mu, _ = self.encoder_gaussian(m, torch.zeros(2, *shape))
                if mu.shape[-1] != self.bottom_dims[m]:
                    raise ConfigError(
                        f"encoders['{m}'] gives a latent of size {mu.shape[-1]} but modalities_specific_dim['{m}'] is "
                        f"{self.bottom_dims[m]}; set modalities_specific_dim to match your encoder."
                    )

    @property
    def start_keep_best_epoch(self) -> int:
        return self.model_config.warmup + 1

    # ------------------------------------------------------------------ building blocks
    def message(self, modality: str, z_m: torch.Tensor) -> torch.Tensor:
        """h_m = g_m(z_m) for ``z_m`` of shape ``(*, d_m)``; returns ``(*, msg_dim)``."""
        h = as_embedding(self.top_encoders[modality](z_m.reshape(-1, z_m.shape[-1])))
        return h.reshape(*z_m.shape[:-1], h.shape[-1])

    def joint_gaussian(self, hbar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z_sigma | hbar) for ``hbar`` of shape ``(*, msg_dim)``; each ``(*, D)``.

        The leading dimensions are flattened for the joint encoder, which, written in the documented
        style, reads a ``(B, msg_dim)`` batch (``x.reshape(-1, msg_dim)``).
        """
        mu, logvar = as_gaussian(self.joint_encoder(hbar.reshape(-1, hbar.shape[-1])))
        lead = hbar.shape[:-1]
        return mu.reshape(*lead, mu.shape[-1]), logvar.reshape(*lead, logvar.shape[-1])

    def top_decode(self, modality: str, z_sigma: torch.Tensor) -> torch.Tensor:
        """t_m(z_sigma), the mean of p(z_m | z_sigma), for ``z_sigma`` of shape ``(*, D)``; ``(*, d_m)``."""
        out = as_reconstruction(self.top_decoders[modality](z_sigma.reshape(-1, z_sigma.shape[-1])))
        return out.reshape(*z_sigma.shape[:-1], out.shape[-1])

    def aggregate(self, messages: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of the kept messages: ``messages`` ``(M, *lead, msg_dim)``, ``kept`` bool ``(M, *lead)``.

        Returns ``(hbar, has_message)``; a row without any kept message gets hbar = 0 and
        ``has_message`` False (its top terms must be skipped).
        """
        count = kept.sum(0)
        total = torch.where(kept.unsqueeze(-1), messages, torch.zeros((), dtype=messages.dtype, device=messages.device)).sum(0)
        return total / count.clamp_min(1).unsqueeze(-1).to(messages.dtype), count > 0

    def drop_messages(self, available: torch.Tensor) -> torch.Tensor:
        """Forced perceptual dropout on ``available`` (bool ``(M, B)``), in training mode only.

        With probability ``dropout_rate`` a sample with k >= 2 available messages keeps n of them,
        n uniform in {1, ..., k-1}, chosen uniformly at random. Returns the kept mask ``(M, B)``.
        """
        rate = self.model_config.dropout_rate
        if not self.training or rate == 0:
            return available
        n_modalities, batch = available.shape
        device = available.device
        n_available = available.sum(0)
        drops = (torch.rand(batch, device=device) < rate) & (n_available >= 2)
        n_keep = 1 + (torch.rand(batch, device=device) * (n_available - 1).clamp_min(0)).floor().long()
        scores = torch.where(available, torch.rand(n_modalities, batch, device=device), torch.full((), 2.0, device=device))
        rank = scores.argsort(0).argsort(0)  # random order of the available messages first
        return torch.where(drops.unsqueeze(0), available & (rank < n_keep.unsqueeze(0)), available)

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
        """z_sigma ~ q(z_sigma | hbar(x_cond)) and the bottom codes z_m of the conditioning modalities.

        Returns a ModelOutput with ``z`` (z_sigma: ``(B, D)`` for N = 1, ``(N, B, D)`` otherwise, or
        ``(N*B, D)`` with ``flatten``), ``modalities_z`` ({m: z_m} for m in ``cond_mod``, same leading
        shape) and ``one_latent_space=True``. Messages are averaged over the observed conditioning
        modalities (no dropout). With ``ignore_incomplete``, a sample lacking a conditioning modality m
        gets the top decoder's prediction t_m(z_sigma) as its z_m.

        Args:
            inputs: a batch or a dataset.
            cond_mod: ``'all'``, a modality name or a list of names.
            N: number of samples per data point.
            return_mean: use the means of q(z_m | x_m) and q(z_sigma | hbar) instead of samples.
            flatten: merge the sample and batch dimensions.
            ignore_incomplete: condition each sample on the conditioning modalities it has.
            **kwargs: accepted for a uniform API across models and ignored.
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        z_m = {m: rsample(*self.encoder_gaussian(m, batch.data[m]), n=N, return_mean=return_mean) for m in cond}
        messages = torch.stack([self.message(m, z_m[m]) for m in cond])  # (S, *lead, msg_dim)
        lead = messages.shape[1:-1]
        observed = torch.stack([batch.masks[m] for m in cond]).view(len(cond), *([1] * (len(lead) - 1)), -1)
        hbar, _ = self.aggregate(messages, observed.expand(len(cond), *lead))
        z_sigma = rsample(*self.joint_gaussian(hbar), return_mean=return_mean)
        modalities_z = {}
        for m in cond:
            seen = batch.masks[m].view(*([1] * (len(lead) - 1)), -1, 1)
            modalities_z[m] = z_m[m] if bool(batch.masks[m].all()) else torch.where(seen, z_m[m], self.top_decode(m, z_sigma))
        if flatten and N > 1:
            z_sigma = z_sigma.reshape(-1, z_sigma.shape[-1])
            modalities_z = {m: z.reshape(-1, z.shape[-1]) for m, z in modalities_z.items()}
        return ModelOutput(z=z_sigma, modalities_z=modalities_z, one_latent_space=True)

    @torch.no_grad()
    def decode(
        self,
        embedding: ModelOutput,
        modalities: str | Sequence[str] = "all",
        use_bottom_z_for_recon: bool = True,
        **kwargs: Any,
    ) -> ModelOutput:
        """Mean of p(x_m | z_m) for each requested modality.

        z_m is the bottom code from ``embedding.modalities_z`` when it has one for m (and
        ``use_bottom_z_for_recon``), otherwise the top decoder mean t_m(z_sigma) of ``embedding.z``
        (cross-modal generation, and generation from the prior).
        """
        with evaluation_mode(self):
            z_sigma = embedding["z"]
            bottom = embedding.get("modalities_z") or {}
            out = ModelOutput()
            for m in self.resolve_modalities(modalities):
                z_m = bottom[m] if use_bottom_z_for_recon and m in bottom else self.top_decode(m, z_sigma)
                out[m] = mean_of(self.model_config.decoder_distribution(m), self.decoder_output(m, z_m))
            return out

    # ------------------------------------------------------------------ objective
    def top_log_likelihood(
        self, modality: str, target: torch.Tensor, mean: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log N(zbar_m; t_m(z_sigma), s_m^2) per sample and the scale s_m.

        s_m = 1, or the sigma-VAE optimal scale computed over the samples where ``weight`` is True: for the
        modalities in ``adapt_top_decoder_variance``, and for all of them when ``decoder_scale`` is
        ``'analytic'`` (the calibration then holds at both levels; a unit scale lets z_sigma collapse).
        """
        squared = (target - mean).pow(2)
        adapted = self.model_config.decoder_scale == "analytic" or modality in (self.model_config.adapt_top_decoder_variance or [])
        if adapted and bool(weight.any()):
            variance = (squared.sum(-1) * weight).sum() / (weight.sum() * squared.shape[-1])
            logvar = variance.clamp_min(MIN_TOP_VARIANCE).log()
        else:
            logvar = torch.zeros((), dtype=mean.dtype, device=mean.device)
        return log_normal(target, mean, logvar.expand_as(mean)), (0.5 * logvar).exp()

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """l_bottom + l_top of the module docstring, averaged over the batch.

        Terms: ``recon[m]``, ``kl[m]`` (bottom), ``top_recon[m]``, ``top_kl``, ``bottom_loss``,
        ``top_loss``, ``annealing`` and, for adapted modalities, ``top_scale[m]``.
        """
        cfg = self.model_config
        batch = self.prepare_batch(inputs)
        anneal = linear_warmup_per_epoch(progress, cfg.warmup)
        observed = torch.stack([batch.masks[m] for m in self.modalities])  # (M, B)
        zero = torch.zeros((), device=observed.device)

        bottom = zero
        terms: dict[str, torch.Tensor] = {}
        z_bar = {}
        for m in self.modalities:
            mu, logvar = self.encoder_gaussian(m, batch.data[m])
            z = rsample(mu, logvar)
            recon = self.reconstruction_log_likelihood(batch, m, self.decoder_output(m, z))
            kl = torch.where(batch.masks[m], kl_standard_normal(mu, logvar), zero)
            beta_m = (cfg.bottom_betas or {}).get(m, 1.0)
            bottom = bottom - recon + beta_m * anneal * kl
            terms[f"recon[{m}]"] = -recon.mean().detach()
            terms[f"kl[{m}]"] = kl.mean().detach()
            n_observed = batch.masks[m].sum().clamp_min(1)
            terms[kl_per_dimension_term(f"z[{m}]")] = kl.sum().detach() / n_observed / mu.shape[-1]
            z_bar[m] = z.detach()  # stop-gradient: the top level does not train the bottom VAEs

        kept = self.drop_messages(observed)
        messages = torch.stack([self.message(m, z_bar[m]) for m in self.modalities])
        hbar, has_message = self.aggregate(messages, kept)
        mu_s, logvar_s = self.joint_gaussian(hbar)
        z_sigma = rsample(mu_s, logvar_s)
        top_kl = torch.where(has_message, kl_standard_normal(mu_s, logvar_s), zero)
        top = cfg.top_beta * anneal * top_kl
        for m in self.modalities:
            counted = batch.masks[m] & has_message
            log_p, scale = self.top_log_likelihood(m, z_bar[m], self.top_decode(m, z_sigma), counted)
            top_recon = torch.where(counted, -log_p, zero)
            top = top + (cfg.gammas or {}).get(m, 1.0) * top_recon
            terms[f"top_recon[{m}]"] = top_recon.mean().detach()
            if cfg.decoder_scale == "analytic" or m in (cfg.adapt_top_decoder_variance or []):
                terms[f"top_scale[{m}]"] = scale.detach()

        terms[kl_per_dimension_term("z_sigma")] = top_kl.sum().detach() / has_message.sum().clamp_min(1) / mu_s.shape[-1]
        terms.update(
            top_kl=top_kl.mean().detach(),
            bottom_loss=bottom.mean().detach(),
            top_loss=top.mean().detach(),
            annealing=torch.tensor(anneal),
        )
        return LossOutput(loss=(bottom + top).mean(), terms=terms, batch_size=batch.batch_size)
