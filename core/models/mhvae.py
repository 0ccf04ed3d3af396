r"""MHVAE: multimodal hierarchical VAE with a product of experts at every level (Dorent et al., 2023).

The latent variable is split into L = ``n_latent`` groups, z_1 (next to the data) ... z_L (deepest, a
vector of size ``latent_dim``); z_1..z_{L-1} may be feature maps. The generative model is

    p(z) = p(z_L) \prod_{l<L} p(z_l | z_{l+1}),    p(z_L) = N(0, I),    p(x_m | z_1) per modality,

with p(z_l | z_{l+1}) = N(PRIOR_l(h_l)) and h_l = TD_l(z_{l+1}) (top-down path). For a subset S of the
modalities the posterior is a product of experts with the prior at every level:

    q(z_L | x_S)          \propto p(z_L) \prod_{m in S} q_m(z_L | x_m)
    q(z_l | x_S, z_{l+1}) \propto p(z_l | z_{l+1}) \prod_{m in S} q_m(z_l | x_m, z_{l+1}),

q_m(z_L | x_m) from the bottom-up path of m and q_m(z_l | x_m, z_{l+1}) = N(POST_l^m([h_l, d_m^(l)])),
where d_m^(l) are the bottom-up features ("skips"). The objective averages the negative ELBO over
every non-empty subset S (each reconstructing all the modalities from z_1):

    L_S(X) = - E_q [ \sum_m \lambda_m log p(x_m | z_1) ] + \beta [ KL(q(z_L|x_S) || p(z_L))
             + \sum_{l<L} E_q KL(q(z_l | x_S, z_{l+1}) || p(z_l | z_{l+1})) ],
    L(X)   = mean over S of L_S(X),

with closed-form KLs at one reparameterised sample of the levels above, averaged over the batch
(MultiVae sums over the batch, which ties the learning rate to the batch size).

Partially observed data: only the observed modalities are experts and only they are reconstructed.
A subset S none of whose modalities is observed in a sample carries no information about it: its
posterior is the prior and L_S would be a prior-predictive term ("reconstruct the sample from a prior
draw") that the complete-data objective does not contain. Such (S, sample) pairs are skipped, so a
sample's loss is the mean of L_S over the subsets holding at least one of its modalities (on complete
data, all of them). A sample with no observed modality adds nothing. Subsets that differ only in
modalities a sample lacks give it the same posterior: each such group is one top-down pass, counted as
often as it occurs (:class:`ExpertSets`), which leaves the loss's expectation as it is.

Generation from the prior runs the prior chain z_L ~ N(0, I), z_l ~ p(z_l | z_{l+1}), and ``decode``
works on its output (the decoders read z_1). The paper's adversarial term is the option
``adversarial_weight`` (off by default, as in the published port): the loss then adds
``adversarial_weight`` x L_G per image modality from ``adversarial_start_epoch`` on, and trains one
least-squares PatchGAN per modality in the same step (:mod:`core.models._shared.adversarial`).

Beyond the published port, three options fight posterior collapse and cost, all off by default:
``warmup`` (the original code's linear KL warm-up), ``free_bits`` per latent dimension, and
``subsets_per_step`` (a random draw of the subsets each step, an unbiased estimate of their mean).

References:
    Dorent, Haouchine, Kögl, Joutard, Juvekar, Torio, Golby, Ourselin, Frisken, Vercauteren, Kapur &
    Wells, "Unified Brain MR-Ultrasound Synthesis using Multi-Modal Hierarchical Representations",
    MICCAI 2023. https://arxiv.org/abs/2309.08747
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from core.data.dataset import DatasetOutput
from core.models._shared.adversarial import PatchDiscriminator, least_squares_losses
from core.models._shared.annealing import TrainingProgress, linear_warmup_per_step
from core.models._shared.free_bits import free_bits_kl, kl_per_dimension_term
from core.models._shared.gaussian import kl_per_dimension, log_normal, rsample
from core.models._shared.importance import importance_sampled_log_px
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.poe import product_of_experts
from core.models._shared.subsets import all_subsets, experts_of_subsets
from core.models.base import ModalityError, MultimodalVAE, is_mapping_like
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig, ConfigError, advanced
from core.models.registry import register_model
from core.nn.base import as_embedding, as_gaussian, as_reconstruction, evaluation_mode
from core.nn.hierarchical import default_mhvae_blocks

__all__ = ["MHVAEConfig", "MHVAE"]

BLOCK_NAMES = ("bottom_up_blocks", "top_down_blocks", "posterior_blocks", "prior_blocks")


@dataclass(config=MODEL_CONFIG_DICT)
class MHVAEConfig(BaseMultiVAEConfig):
    """Config of :class:`MHVAE` (MultiVae's ``MHVAEConfig``); ``latent_dim`` is the size of z_L."""

    n_latent: int = Field(3, ge=2, le=16, description="Number of latent levels L (z_1 next to the data, z_L deepest).")
    beta: float = Field(1.0, ge=0, description="Weight of the KL divergences.")
    warmup: int = Field(
        0, ge=0, description="Epochs over which the KL weight rises linearly from 0 to beta (the original MHVAE code ramps it)."
    )
    free_bits: float = Field(
        0.0,
        ge=0,
        **advanced(
            "Free bits: nats per latent dimension (per channel and voxel of a spatial latent) below which a level's "
            "batch-mean KL is not penalised, so no level is pushed to its prior (IAF)."
        ),
    )
    subsets_per_step: int = Field(
        0,
        ge=0,
        **advanced(
            "Subsets whose ELBO each training step evaluates, drawn at random (an unbiased estimate of the subset "
            "average); 0 evaluates all 2^M - 1 of them. With 4 modalities, 3 makes a step about 5x cheaper."
        ),
    )
    adversarial_weight: float = Field(
        0.0,
        ge=0,
        description=(
            "Weight of the paper's adversarial term (a least-squares PatchGAN per image modality against the "
            "synthesized volumes); 0 switches it off, as in the published port."
        ),
    )
    adversarial_start_epoch: int = Field(
        10, ge=1, **advanced("Epoch from which the adversarial term and its discriminators train (after the KL warm-up).")
    )
    spatial_channels: int = Field(
        64, ge=4, le=512, **advanced("Feature channels of the default spatial blocks at level 1 (images and volumes).")
    )
    spatial_latent_channels: int = Field(
        8, ge=1, le=256, **advanced("Channels of the spatial latents z_1..z_{L-1} of the default blocks.")
    )
    spatial_downsampling: int | None = Field(
        None,
        ge=1,
        le=6,
        **advanced(
            "How many times the default blocks halve the data grid before z_1 (None: automatic). Fewer keeps z_1 "
            "finer, so small lesions survive, at a higher cost."
        ),
    )
    spatial_decoder_channels: int | None = Field(
        None,
        ge=1,
        le=256,
        **advanced(
            "Width of the default decoders' last stage (None: half of spatial_channels, at least 8, resized by nearest "
            "neighbour and convolved at the data grid). "
            "Set, the features are narrowed to this width on the coarse grid and resized linearly, and only the "
            "head convolves at the data grid: a CPU step of the Synthesis preset at 40^3 takes about 40 % less."
        ),
    )
    spatial_decoder_refine: bool = Field(
        False,
        **advanced(
            "With spatial_decoder_channels set, add the plain decoder's full-resolution stage beside the narrowed, "
            "linearly resized one, behind a learned gain that starts at 0, so the decoder can sharpen edges the "
            "resize blurs (about 1.5-1.7x the step time; benchmarks: sharper, and with spatial_latent_channels 16 the "
            "lesion is kept too, as in the Synthesis preset)."
        ),
    )


def _require_gaussian_block(block: nn.Module, what: str) -> None:
    """Refuse torch's own layers where a block must return a mean and a log-variance (an encoder).

    ``nn.Linear``, ``nn.Conv3d``, ``nn.Sequential`` of them and the like return one tensor; the documented
    contract asks for an encoder (``BaseEncoder``) giving ``embedding`` and ``log_covariance``. What a
    module of your own returns is checked by the construction's dry run.
    """
    if type(block).__module__.startswith("torch.nn"):
        raise ConfigError(
            f"{what} is a torch.nn.{type(block).__name__}, which returns one tensor; it must be an encoder "
            "returning the mean and log-variance (a BaseEncoder whose output has 'embedding' and 'log_covariance')."
        )


def _as_block_list(value: Any, what: str, n: int) -> list[nn.Module]:
    if isinstance(value, nn.Module) and not isinstance(value, (nn.ModuleList, nn.Sequential)):
        raise ConfigError(f"{what} must be a list of {n} modules, got a single {type(value).__name__}.")
    if not isinstance(value, (Sequence, nn.ModuleList)) or isinstance(value, str):
        raise ConfigError(f"{what} must be a list of {n} modules, got {type(value).__name__}.")
    blocks = list(value)
    if len(blocks) != n:
        raise ConfigError(f"{what} has {len(blocks)} blocks; with n_latent = {n + 1} it needs n_latent - 1 = {n}.")
    for i, block in enumerate(blocks):
        if not isinstance(block, nn.Module):
            raise ConfigError(f"{what}[{i}] must be a torch.nn.Module, got {type(block).__name__}.")
    return blocks


@register_model
class MHVAE(MultimodalVAE):
    """Multimodal hierarchical VAE; every block optional (defaults for vectors, images and volumes).

    Block indexing: for level l in 1..L-1, ``top_down_blocks[l-1]``, ``prior_blocks[l-1]`` and
    ``posterior_blocks[l-1]`` (or ``posterior_blocks[m][l-1]``) act at level l, and
    ``bottom_up_blocks[m][j-1]`` maps d_m^(j) to d_m^(j+1), the last one giving q_m(z_L | x_m).

    Args:
        model_config: an :class:`MHVAEConfig`.
        encoders: modality -> first feature extractor, x_m -> d_m^(1) (a tensor, or an encoder output whose
            ``embedding`` is used; it needs no ``log_covariance``).
        decoders: modality -> decoder p(x_m | z_1).
        bottom_up_blocks: modality -> list of L-1 modules (a dict or any mapping-like container such as
            ``nn.ModuleDict``); the first L-2 map d^(j) -> d^(j+1), the last is an encoder returning the
            mean and log-variance of z_L (shape ``(B, latent_dim)``). Modalities may share module objects.
        top_down_blocks: list of L-1 modules, ``top_down_blocks[l-1]``: z_{l+1} -> h_l, shared by all
            modalities. h_l must have the shape of every d_m^(l) except on dim 1.
        posterior_blocks: list of L-1 encoders (shared by the modalities) or modality -> list of L-1 (a
            mapping-like container); ``[h_l, d_m^(l)]`` (concatenated on dim 1) -> mean and log-variance of
            q_m(z_l | x_m, z_{l+1}).
        prior_blocks: list of L-1 encoders, h_l -> mean and log-variance of p(z_l | z_{l+1}).

    Any block left out is taken from :func:`core.nn.hierarchical.default_mhvae_blocks` (which needs
    ``input_dims``); blocks of your own must fit the shapes of the default ones they meet, which the
    construction checks with a dry run.
    """

    name = "MHVAE"
    config_class = MHVAEConfig
    supports_incomplete_data = True
    summary = "Hierarchical latents with a product of experts and the prior at every level; learns from incomplete data."

    def __init__(
        self,
        model_config: MHVAEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
        bottom_up_blocks: Mapping[str, Sequence[nn.Module]] | None = None,
        top_down_blocks: Sequence[nn.Module] | None = None,
        posterior_blocks: Sequence[nn.Module] | Mapping[str, Sequence[nn.Module]] | None = None,
        prior_blocks: Sequence[nn.Module] | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders)
        given = {
            "bottom_up_blocks": bottom_up_blocks,
            "top_down_blocks": top_down_blocks,
            "posterior_blocks": posterior_blocks,
            "prior_blocks": prior_blocks,
        }
        self.record_custom_architectures(**given)
        blocks = {name: value if value is not None else self._default_blocks(name) for name, value in given.items()}
        self._default_cache = None
        self.set_bottom_up_blocks(blocks["bottom_up_blocks"])
        self.set_top_down_blocks(blocks["top_down_blocks"])
        self.sanity_check_prior_blocks(blocks["prior_blocks"])
        self.prior_blocks = nn.ModuleList(blocks["prior_blocks"])
        self.check_and_set_posterior_blocks(blocks["posterior_blocks"])
        self.latent_shapes = self._dry_run()
        self.discriminators = self._build_discriminators()

    def _build_discriminators(self) -> nn.ModuleDict | None:
        """One PatchGAN per image or volume modality when ``adversarial_weight`` > 0 (none otherwise, so the
        weights of models without the term are unchanged)."""
        dims = self.model_config.input_dims or {}
        spatial = {m: s for m, s in dims.items() if len(s) in (3, 4)}
        if self.model_config.adversarial_weight <= 0:
            return None
        if not spatial:
            raise ConfigError("adversarial_weight needs image or volume modalities; these are all vectors.")
        return nn.ModuleDict({m: PatchDiscriminator(len(s) - 1, s[0], s[1:]) for m, s in spatial.items()})

    def adversarial_terms(
        self, batch: DatasetOutput, row_batch: DatasetOutput, synthesized: Mapping[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{m: (L_G, L_D)}`` for each modality with a discriminator (:mod:`core.models._shared.adversarial`).

        Real volumes are the observed samples of ``batch``; synthesized ones the decoded means of the rows of
        ``row_batch`` (one per distinct set of experts of a sample) whose sample observes the modality. Voxels
        outside a field of view are set to the background (0) in both, so the discriminator judges only what
        the data can show.
        """
        out = {}
        for m, discriminator in (self.discriminators or {}).items():
            observed, row_observed = batch.masks[m], row_batch.masks[m]
            real, fake = batch.data[m][observed], synthesized[m][row_observed]
            voxels, row_voxels = batch.observation_masks.get(m), row_batch.observation_masks.get(m)
            if voxels is not None and row_voxels is not None:
                real = torch.where(voxels[observed], real, torch.zeros((), dtype=real.dtype, device=real.device))
                fake = torch.where(row_voxels[row_observed], fake, torch.zeros((), dtype=fake.dtype, device=fake.device))
            out[m] = least_squares_losses(discriminator, real, fake)
        return out

    # ------------------------------------------------------------------ defaults and checks
    def _default_blocks(self, name: str) -> Any:
        if getattr(self, "_default_cache", None) is None:
            cfg = self.model_config
            if cfg.input_dims is None:
                raise ConfigError(
                    f"MHVAE builds default blocks from input_dims; give input_dims in the config or pass {name}."
                )
            if cfg.spatial_decoder_refine and cfg.spatial_decoder_channels is None:
                raise ConfigError(
                    "spatial_decoder_refine adds a path beside the narrowed decoder stage; set spatial_decoder_channels "
                    "too, or leave spatial_decoder_refine off (the plain decoder is already at full resolution)."
                )
            self._default_cache = default_mhvae_blocks(
                cfg.input_dims,
                cfg.latent_dim,
                cfg.n_latent,
                channels=cfg.spatial_channels,
                z_channels=cfg.spatial_latent_channels,
                downsampling=cfg.spatial_downsampling,
                decoder_channels=cfg.spatial_decoder_channels,
                decoder_refine=cfg.spatial_decoder_refine,
            )
        return self._default_cache[name]

    def build_default_encoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return self._default_blocks("encoders")[modality]

    def build_default_decoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        return self._default_blocks("decoders")[modality]

    def sanity_check_bottom_up(self, encoders: Mapping[str, nn.Module], bottom_up_blocks: Any) -> None:
        """Check that ``bottom_up_blocks`` gives n_latent - 1 modules for each modality of ``encoders``, the
        last an encoder of z_L (mapping-like containers such as ``nn.ModuleDict`` are accepted)."""
        if not is_mapping_like(bottom_up_blocks):
            raise ConfigError(
                f"bottom_up_blocks must be a dict modality -> list of {self.n_latent - 1} modules, "
                f"got {type(bottom_up_blocks).__name__}."
            )
        if set(bottom_up_blocks.keys()) != set(encoders.keys()):
            raise ModalityError(
                f"bottom_up_blocks are given for {sorted(bottom_up_blocks.keys())} but the modalities are {sorted(encoders.keys())}."
            )
        for m, blocks in bottom_up_blocks.items():
            last = _as_block_list(blocks, f"bottom_up_blocks['{m}']", self.n_latent - 1)[-1]
            _require_gaussian_block(last, f"bottom_up_blocks['{m}'][-1]")

    def sanity_check_top_down_blocks(self, top_down_blocks: Any) -> None:
        """Check that ``top_down_blocks`` is a list of n_latent - 1 modules."""
        _as_block_list(top_down_blocks, "top_down_blocks", self.n_latent - 1)

    def sanity_check_prior_blocks(self, prior_blocks: Any) -> None:
        """Check that ``prior_blocks`` is a list of n_latent - 1 encoders (mean and log-variance)."""
        for i, block in enumerate(_as_block_list(prior_blocks, "prior_blocks", self.n_latent - 1)):
            _require_gaussian_block(block, f"prior_blocks[{i}]")

    def check_and_set_posterior_blocks(self, posterior_blocks: Any) -> None:
        """Check ``posterior_blocks`` (a shared list, or a mapping-like container per modality, of n_latent - 1
        encoders returning a mean and a log-variance) and set it."""
        n = self.n_latent - 1
        if is_mapping_like(posterior_blocks):
            if set(posterior_blocks.keys()) != set(self.modalities):
                raise ModalityError(
                    f"posterior_blocks are given for {sorted(posterior_blocks.keys())} but the modalities are "
                    f"{sorted(self.modalities)}; pass a list to share the blocks between modalities."
                )
            per_modality = {m: _as_block_list(posterior_blocks[m], f"posterior_blocks['{m}']", n) for m in self.modalities}
            for m, blocks in per_modality.items():
                for i, block in enumerate(blocks):
                    _require_gaussian_block(block, f"posterior_blocks['{m}'][{i}]")
            self.share_posterior_blocks = False
            self.posterior_blocks = nn.ModuleDict({m: nn.ModuleList(blocks) for m, blocks in per_modality.items()})
        else:
            blocks = _as_block_list(posterior_blocks, "posterior_blocks", n)
            for i, block in enumerate(blocks):
                _require_gaussian_block(block, f"posterior_blocks[{i}]")
            self.share_posterior_blocks = True
            self.posterior_blocks = nn.ModuleList(blocks)

    def set_bottom_up_blocks(self, bottom_up_blocks: Mapping[str, Sequence[nn.Module]]) -> None:
        """Check and set ``bottom_up_blocks`` (modality -> n_latent - 1 modules)."""
        self.sanity_check_bottom_up(self.encoders, bottom_up_blocks)
        self.bottom_up_blocks = nn.ModuleDict({m: nn.ModuleList(list(bottom_up_blocks[m])) for m in self.modalities})

    def set_top_down_blocks(self, top_down_blocks: Sequence[nn.Module]) -> None:
        """Check and set ``top_down_blocks`` (n_latent - 1 modules shared by the modalities)."""
        self.sanity_check_top_down_blocks(top_down_blocks)
        self.top_down_blocks = nn.ModuleList(list(top_down_blocks))

    def posterior_block(self, modality: str, index: int) -> nn.Module:
        """The posterior block of level ``index + 1`` for ``modality``."""
        return self.posterior_blocks[index] if self.share_posterior_blocks else self.posterior_blocks[modality][index]

    @torch.no_grad()
    def _dry_run(self) -> list[tuple[int, ...]]:
        """Run every block on a dummy batch of 2 to check their shapes; returns the shape of each z_l."""
        with evaluation_mode(self):
            dims = self.model_config.input_dims
            skips: dict[str, list[torch.Tensor]] = {}
            if dims is not None:
                for m in self.modalities:
                    try:
                        params, skip = self._bottom_up(m, torch.zeros(2, *dims[m], device=self.device))
                    except Exception as exc:  # re-raised with the block's name
                        raise ConfigError(f"The bottom-up path of '{m}' (encoders, bottom_up_blocks) fails on its input shape "
                                          f"{tuple(dims[m])}: {exc}") from exc
                    if tuple(params[0].shape) != (2, self.latent_dim):
                        raise ConfigError(
                            f"bottom_up_blocks['{m}'][-1] returns a mean of shape {tuple(params[0].shape[1:])}; q(z_L | x) must be "
                            f"over latent_dim = {self.latent_dim}."
                        )
                    skips[m] = skip
            z = torch.zeros(2, self.latent_dim, device=self.device)
            shapes = [tuple(z.shape[1:])]
            for i in reversed(range(self.n_latent - 1)):
                level = i + 1
                try:
                    h = self.top_down_blocks[i](z)
                    p_mu, p_lv = as_gaussian(self.prior_blocks[i](h))
                except Exception as exc:
                    raise ConfigError(f"top_down_blocks[{i}] / prior_blocks[{i}] fail on z_{level + 1} of shape "
                                      f"{tuple(z.shape[1:])}: {exc}") from exc
                for m, skip in skips.items():
                    if h.shape[0] != skip[i].shape[0] or h.shape[2:] != skip[i].shape[2:]:
                        raise ConfigError(
                            f"top_down_blocks[{i}] gives h_{level} of shape {tuple(h.shape[1:])} but the bottom-up features "
                            f"d^({level}) of '{m}' have shape {tuple(skip[i].shape[1:])}; they are concatenated on dim 1 for "
                            "posterior_blocks, so all other dimensions must match."
                        )
                    try:
                        q_mu, _ = as_gaussian(self.posterior_block(m, i)(torch.cat([h, skip[i]], dim=1)))
                    except Exception as exc:
                        raise ConfigError(f"posterior_blocks at level {level} fail for '{m}' on [h_{level}, d^({level})]: {exc}") from exc
                    if q_mu.shape != p_mu.shape:
                        raise ConfigError(
                            f"At level {level} the posterior block of '{m}' gives shape {tuple(q_mu.shape[1:])} but prior_blocks[{i}] "
                            f"gives {tuple(p_mu.shape[1:])}; both describe z_{level}."
                        )
                z = p_mu
                shapes.append(tuple(z.shape[1:]))
            return shapes[::-1]

    @property
    def start_keep_best_epoch(self) -> int:
        return self.model_config.warmup + 1 if self.model_config.warmup else 0

    @property
    def z1_shape(self) -> tuple[int, ...]:
        """Per-sample shape of z_1, what ``encode`` returns as ``z`` and the decoders read."""
        return self.latent_shapes[0]

    # ------------------------------------------------------------------ bottom-up and top-down paths
    def _bottom_up(self, modality: str, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], list[torch.Tensor]]:
        d = as_embedding(self.encoders[modality](x))
        skips = [d]
        blocks = self.bottom_up_blocks[modality]
        for block in blocks[:-1]:
            d = block(d)
            skips.append(d)
        return as_gaussian(blocks[-1](d)), skips

    def modality_encode(self, data: Mapping[str, torch.Tensor]) -> tuple[dict[str, ModelOutput], dict[str, list[torch.Tensor]]]:
        """Encode each modality on its own along its bottom-up path.

        Args:
            data: modality -> ``(B, *shape)`` (any subset of the modalities).

        Returns:
            ``(z_Ls_params, skips)``: modality -> ModelOutput(embedding, log_covariance) of q_m(z_L | x_m),
            and modality -> list of the L-1 features d_m^(1), ..., d_m^(L-1).
        """
        params, skips = {}, {}
        for m, x in data.items():
            (mu, logvar), skips[m] = self._bottom_up(m, x)
            params[m] = ModelOutput(embedding=mu, log_covariance=logvar)
        return params, skips

    def top_down(
        self,
        z_deepest_params: Mapping[str, ModelOutput],
        skips: Mapping[str, Sequence[torch.Tensor]],
        present: torch.Tensor,
        return_mean: bool = False,
        log_weights: bool = False,
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor | None]:
        """Sample z_L, ..., z_1 from the posterior whose experts are the modalities of ``z_deepest_params``.

        Args:
            present: bool ``(E, B)``, one row per modality of ``z_deepest_params`` (in its order); False
                leaves that expert out for that sample (unobserved, or outside the subset).
            log_weights: also return log p(z) - log q(z | x) at the samples (importance weights).

        Returns:
            ``(z, kl, log_w)``: level -> sample, level -> KL per sample and latent dimension ``(B, D)`` (a
            spatial latent flattened), and ``(B,)`` or None.
        """
        names = list(z_deepest_params)
        level_top = self.n_latent
        mu, logvar = product_of_experts(
            torch.stack([z_deepest_params[m].embedding for m in names]),
            torch.stack([z_deepest_params[m].log_covariance for m in names]),
            present,
            with_prior=True,
        )
        z = rsample(mu, logvar, return_mean=return_mean)
        zs, kls = {level_top: z}, {level_top: kl_per_dimension(mu, logvar)}
        log_w = log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - log_normal(z, mu, logvar) if log_weights else None
        for i in reversed(range(self.n_latent - 1)):
            h = self.top_down_blocks[i](z)
            p_mu, p_lv = as_gaussian(self.prior_blocks[i](h))
            experts = [as_gaussian(self.posterior_block(m, i)(torch.cat([h, skips[m][i]], dim=1))) for m in names]
            q_mu, q_lv = product_of_experts(
                torch.stack([e[0] for e in experts]),
                torch.stack([e[1] for e in experts]),
                present,
                with_prior=True,
                prior_mu=p_mu,
                prior_logvar=p_lv,
            )
            event_dims = q_mu.dim() - 1
            z = rsample(q_mu, q_lv, return_mean=return_mean)
            zs[i + 1], kls[i + 1] = z, kl_per_dimension(q_mu, q_lv, p_mu, p_lv)
            if log_w is not None:
                log_w = log_w + log_normal(z, p_mu, p_lv, event_dims) - log_normal(z, q_mu, q_lv, event_dims)
        return zs, kls, log_w

    def subset_encode(
        self,
        z_deepest_params: Mapping[str, ModelOutput],
        skips: Mapping[str, Sequence[torch.Tensor]],
        subset: Sequence[str],
        inputs: Any,
        return_mean: bool = False,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Sample every latent level from q(z | x_S) and compute the KL divergence of each level.

        Args:
            z_deepest_params: modality -> mean and log-variance of q_m(z_L | x_m) (from :meth:`modality_encode`).
            skips: modality -> bottom-up features (from :meth:`modality_encode`).
            subset: the modalities S of the product of experts; unobserved ones (per the batch masks)
                are left out sample by sample.
            inputs: the batch (for its masks).
            return_mean: take the mean at every level instead of sampling.

        Returns:
            ``(z_dict, kl_dict)``: ``z_dict['z_l']`` the sample of level l, ``kl_dict['kl_l']`` its KL per
            sample, ``(B,)``.
        """
        batch = inputs if isinstance(inputs, DatasetOutput) else self.prepare_batch(inputs)
        subset = self.resolve_modalities(list(subset))
        present = torch.stack([batch.masks[m] for m in subset])
        zs, kls, _ = self.top_down({m: z_deepest_params[m] for m in subset}, skips, present, return_mean)
        return {f"z_{level}": z for level, z in zs.items()}, {f"kl_{level}": kl.sum(-1) for level, kl in kls.items()}

    def decoder_output(self, modality: str, z: torch.Tensor) -> torch.Tensor:
        """Decoder parameters for z_1 of shape ``(*lead, *z1_shape)``; leading dims flattened for the module."""
        event = len(self.z1_shape)
        lead = z.shape[: z.dim() - event]
        x_hat = as_reconstruction(self.decoders[modality](z.reshape(-1, *z.shape[z.dim() - event :])))
        return x_hat.reshape(*lead, *x_hat.shape[1:])

    # ------------------------------------------------------------------ the shared API
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
        """z_1 and every level sampled from q(z | x_cond).

        Returns a ModelOutput with ``z`` (z_1: ``(B, *z1_shape)`` for N = 1, ``(N, B, *z1_shape)``
        otherwise, ``(N*B, *z1_shape)`` with ``flatten``), ``all_z`` ({'z_l': ...} for every level, same
        leading shape) and ``one_latent_space=True``. z_1 is a vector ``(latent_dim,)`` for vector data
        and a feature map for images and volumes with the default blocks.

        Args:
            inputs: a batch or a dataset.
            cond_mod: ``'all'``, a modality name or a list of names.
            N: number of samples per data point.
            return_mean: take the mean at every level instead of sampling.
            flatten: merge the sample and batch dimensions.
            ignore_incomplete: condition each sample on the conditioning modalities it has.
            **kwargs: accepted for a uniform API across models and ignored.
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        params, skips = self.modality_encode({m: batch.data[m] for m in cond})
        params = {m: ModelOutput(embedding=_repeat(p.embedding, N), log_covariance=_repeat(p.log_covariance, N)) for m, p in params.items()}
        skips = {m: [_repeat(d, N) for d in ds] for m, ds in skips.items()}
        present = torch.stack([batch.masks[m] for m in cond]).repeat(1, N)
        zs, _, _ = self.top_down(params, skips, present, return_mean)
        all_z = {f"z_{level}": _unstack(z, N, flatten) for level, z in sorted(zs.items())}
        return ModelOutput(z=all_z["z_1"], all_z=all_z, one_latent_space=True)

    @torch.no_grad()
    def generate_from_prior(self, n_samples: int = 1, temperature: float = 1.0, **kwargs: Any) -> ModelOutput:
        """Run the prior chain z_L ~ N(0, I), z_l ~ p(z_l | z_{l+1}); returns ``z`` (z_1) and ``all_z``.

        ``temperature`` scales every standard deviation (the paper samples at 0.7). Shapes are
        ``(n_samples, *shape_l)``; ``decode`` reads ``z``.
        """
        with evaluation_mode(self):
            z = temperature * torch.randn(n_samples, self.latent_dim, device=self.device)
            all_z = {f"z_{self.n_latent}": z}
            for i in reversed(range(self.n_latent - 1)):
                mu, logvar = as_gaussian(self.prior_blocks[i](self.top_down_blocks[i](z)))
                z = mu + temperature * (0.5 * logvar).exp() * torch.randn_like(mu)
                all_z[f"z_{i + 1}"] = z
            return ModelOutput(z=z, all_z=dict(sorted(all_z.items())), one_latent_space=True)

    # ------------------------------------------------------------------ objective
    def subsets_for_step(self) -> list[tuple[str, ...]]:
        """Every non-empty subset, or (training with ``subsets_per_step``) that many drawn at random.

        Drawn from torch's RNG, which checkpoints save, so resumed runs draw the same subsets.
        """
        subsets = all_subsets(self.modalities)
        k = self.model_config.subsets_per_step
        if not self.training or k <= 0 or k >= len(subsets):
            return subsets
        picks = torch.randperm(len(subsets))[:k].sort().values.tolist()
        return [subsets[i] for i in picks]

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        r"""The subset-averaged negative ELBO of the module docstring, averaged over the batch.

        The distinct (experts, sample) pairs run in one stacked top-down pass. With ``warmup`` the KL weight is
        beta_t = beta min(1, t / warmup); with ``free_bits`` each dimension's KL is charged at least that
        many nats per dimension. Terms: ``recon[m]`` and ``kl_l`` (true KLs, means over the counted (subset, sample)
        pairs), ``kl_per_dim[z_l]`` (what the collapse check reads), ``beta`` and, when every subset
        ran, ``neg_elbo[joint]``.
        """
        cfg = self.model_config
        batch = self.prepare_batch(inputs)
        B = batch.batch_size
        beta = linear_warmup_per_step(progress, cfg.warmup, cfg.beta)
        subsets = self.subsets_for_step()
        n_sub = len(subsets)
        params, skips = self.modality_encode(batch.data)
        masks = torch.stack([batch.masks[m] for m in self.modalities])  # (M, B)
        pairs = ExpertSets.of(experts_of_subsets(self.modalities, subsets, batch.masks))  # the distinct (experts, sample) rows
        rows = pairs.sample
        stacked = {m: ModelOutput(embedding=p.embedding.index_select(0, rows), log_covariance=p.log_covariance.index_select(0, rows))
                   for m, p in params.items()}
        stacked_skips = {m: [d.index_select(0, rows) for d in ds] for m, ds in skips.items()}
        zs, kls, _ = self.top_down(stacked, stacked_skips, pairs.present)

        row_batch = _index_batch(batch, rows)
        decoded = {m: self.decoder_output(m, zs[1]) for m in self.modalities}  # (R, *shape)
        recon = {m: self.reconstruction_log_likelihood(row_batch, m, decoded[m]) for m in self.modalities}  # (R,)

        # A sample's loss is the mean over its counted subsets (a row stands for `multiplicity` of them); the
        # batch loss is the mean over samples.
        weight = pairs.multiplicity / pairs.counted_per_sample[rows].clamp_min(1) / B  # (R,)
        neg_recon = -(sum(recon.values()) * weight).sum()
        kl_objective = sum(free_bits_kl(k, weight, cfg.free_bits) for k in kls.values())
        loss = neg_recon + beta * kl_objective
        adversarial_on = (
            self.discriminators is not None and self.training and progress is not None and progress.epoch >= cfg.adversarial_start_epoch
        )
        adversarial = self.adversarial_terms(batch, row_batch, decoded) if adversarial_on else {}
        for generator_loss, discriminator_loss in adversarial.values():
            loss = loss + cfg.adversarial_weight * generator_loss + discriminator_loss

        counted = pairs.multiplicity.sum().clamp_min(1)
        terms = {f"recon[{m}]": -(r * pairs.multiplicity).sum().detach() / counted for m, r in recon.items()}
        for level, k in sorted(kls.items()):
            kl_mean = (k.sum(-1) * pairs.multiplicity).sum().detach() / counted
            terms[f"kl_{level}"] = kl_mean
            terms[kl_per_dimension_term(f"z_{level}")] = kl_mean / math.prod(zs[level].shape[1:])
        terms["beta"] = torch.tensor(beta)
        for m in self.discriminators or {}:  # zero before the term starts, so the columns are stable
            generator_loss, discriminator_loss = adversarial.get(m, (torch.zeros(()), torch.zeros(())))
            terms[f"adversarial_g[{m}]"] = generator_loss.detach()
            terms[f"adversarial_d[{m}]"] = discriminator_loss.detach()
        if n_sub == 2 ** len(self.modalities) - 1:  # every subset ran: the joint one's row is each sample's observed set
            observed = torch.nonzero(masks.any(0)).flatten()
            joint = pairs.row_of(masks[:, observed], observed)
            kl_joint = sum(k.sum(-1)[joint] for k in kls.values())
            neg_elbo = -sum(r[joint] for r in recon.values()) + cfg.beta * kl_joint
            terms["neg_elbo[joint]"] = neg_elbo.mean().detach() if len(observed) else torch.zeros(())
        return LossOutput(loss=loss, terms=terms, batch_size=B)

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        r"""-\sum_i log p(X_i) by importance sampling with the hierarchical posterior q(z | X) (no rescaling).

        log w = log p(z_L) + \sum_l log p(z_l | z_{l+1}) + \sum_m log p(x_m | z_1) - log q(z | X). For an
        incomplete sample this estimates the marginal likelihood of its observed modalities.
        """
        batch = self.prepare_batch(inputs)
        B = batch.batch_size
        params, skips = self.modality_encode(batch.data)
        masks = torch.stack([batch.masks[m] for m in self.modalities])

        def log_weights(k: int) -> torch.Tensor:
            rep = {m: ModelOutput(embedding=_repeat(p.embedding, k), log_covariance=_repeat(p.log_covariance, k))
                   for m, p in params.items()}
            rep_skips = {m: [_repeat(d, k) for d in ds] for m, ds in skips.items()}
            zs, _, log_w = self.top_down(rep, rep_skips, masks.repeat(1, k), log_weights=True)
            log_w = log_w.reshape(k, B)
            z1 = zs[1].reshape(k, B, *zs[1].shape[1:])
            for m in self.modalities:
                log_w = log_w + self.reconstruction_log_likelihood(batch, m, self.decoder_output(m, z1), rescale=False)
            return log_w

        return -importance_sampled_log_px(log_weights, K, batch_size_K).sum()


class ExpertSets(NamedTuple):
    """The distinct non-empty sets of experts of a step, one row per (set, sample).

    Subsets that differ only in modalities a sample lacks give that sample the same posterior: such
    (subset, sample) pairs are one row, counted ``multiplicity`` times, so the loss keeps its expectation
    with fewer top-down passes (with 30 % of each of 4 modalities missing, about half the pairs of an
    all-subset validation). Pairs with no expert at all are left out (see the module docstring).
    """

    sample: torch.Tensor  # (R,) long: the sample of each row
    present: torch.Tensor  # (M, R) bool: the experts of each row
    multiplicity: torch.Tensor  # (R,) float: how many of the step's subsets the row stands for
    counted_per_sample: torch.Tensor  # (B,) float: the counted subsets of each sample
    keys: torch.Tensor  # (R,) long, sorted: each row's experts as a bit mask and its sample, code * B + sample
    batch_size: int

    @classmethod
    def of(cls, present: torch.Tensor) -> ExpertSets:
        """From ``present`` ``(M, S, B)``: modality m is an expert of subset s for sample b."""
        M, _, B = present.shape
        codes = _expert_codes(present)  # (S, B)
        samples = torch.arange(B, device=present.device).expand_as(codes)
        keys, counts = torch.unique(codes * B + samples, return_counts=True)  # sorted
        keep = keys >= B  # code 0: no expert
        keys, counts = keys[keep], counts[keep]
        row_codes = keys // B
        return cls(
            sample=keys % B,
            present=((row_codes.unsqueeze(0) >> torch.arange(M, device=present.device).unsqueeze(1)) & 1).bool(),
            multiplicity=counts.to(torch.get_default_dtype()),
            counted_per_sample=(codes > 0).sum(0).to(torch.get_default_dtype()),
            keys=keys,
            batch_size=B,
        )

    def row_of(self, experts: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """The row of each of ``samples`` whose experts are ``experts`` ``(M, len(samples))`` (it must be a row)."""
        return torch.searchsorted(self.keys, _expert_codes(experts) * self.batch_size + samples)


def _expert_codes(present: torch.Tensor) -> torch.Tensor:
    """``present`` ``(M, ...)`` bool as one bit mask per position: bit m set when modality m is an expert."""
    bits = 2 ** torch.arange(present.shape[0], device=present.device)
    return (present.long() * bits.view(-1, *([1] * (present.dim() - 1)))).sum(0)


def _index_batch(batch: DatasetOutput, rows: torch.Tensor) -> DatasetOutput:
    """The batch's samples in the order of ``rows`` (data, masks and observation masks)."""
    return DatasetOutput(
        data={m: x.index_select(0, rows) for m, x in batch.data.items()},
        masks={m: x.index_select(0, rows) for m, x in batch.masks.items()},
        observation_masks={m: x.index_select(0, rows) for m, x in batch.observation_masks.items()},
        labels=None,
        ids=None,
    )


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` copies of a batch stacked sample-major along dim 0: row k * B + i holds sample i."""
    return x if n == 1 else x.repeat(n, *([1] * (x.dim() - 1)))


def _unstack(z: torch.Tensor, n: int, flatten: bool) -> torch.Tensor:
    """``(n * B, *shape)`` -> ``(B, *shape)`` for n = 1, ``(n, B, *shape)``, or unchanged with ``flatten``."""
    if n == 1 or flatten:
        return z
    return z.reshape(n, -1, *z.shape[1:])
