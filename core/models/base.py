"""The API every multimodal VAE shares, and the plumbing behind it.

Shapes (the same for every model):

* ``encode(inputs, cond_mod, N)`` -> ``z`` of shape ``(B, D)`` when ``N == 1`` and ``(N, B, D)`` when
  ``N > 1`` (sample-major), or ``(N * B, D)`` with ``flatten=True``.
* ``decode(embedding)`` -> per modality, the mean of p(x_m | z) with shape ``(*lead, *input_dims[m])``
  where ``lead`` are the leading dimensions of ``z``.
* ``predict(inputs, cond_mod, gen_mod, N)`` = ``decode(encode(...))``: ``(B, *shape)`` or
  ``(N, B, *shape)``.
* ``forward(inputs, progress)`` -> :class:`LossOutput` (the loss and its named terms).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

import core
from core.atomic import atomic_save_tensors, atomic_write_json, load_tensors
from core.data.dataset import DatasetOutput, MultimodalBaseDataset
from core.models._shared.annealing import TrainingProgress
from core.models._shared.gaussian import rsample
from core.models._shared.likelihoods import (
    SCALED_DISTRIBUTIONS,
    analytic_log_scale,
    mean_of,
    reconstruction_log_likelihood,
    soft_floor,
)
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models.config import BaseMultiVAEConfig, ConfigError, config_from_dict, config_to_dict
from core.nn.base import as_gaussian, as_reconstruction, evaluation_mode
from core.nn.default_architectures import default_decoder, default_encoder

__all__ = ["MultimodalVAE", "TrainingStage", "IncompleteDataError", "save_bundle", "load_bundle", "check_bundle_compatible"]

BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_CONFIG = "model_config.json"
BUNDLE_FORMAT = 1


class IncompleteDataError(ValueError):
    """Raised when a model that needs every modality receives a sample with one missing."""


@dataclass(frozen=True)
class TrainingStage:
    """A phase of multi-stage training starting at ``first_epoch`` (1-based).

    At a stage boundary the trainer reloads the best weights of the previous stage and creates a
    fresh optimizer and scheduler (JNF: joint VAE first, then the unimodal flows).
    """

    name: str
    first_epoch: int


class MultimodalVAE(nn.Module):
    """Base class: modality bookkeeping, default architectures, batches, decode/predict, saving.

    Subclasses set ``name``, ``config_class``, ``supports_incomplete_data`` and a one-line
    ``summary``, and implement ``encode`` and ``forward``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[BaseMultiVAEConfig]] = BaseMultiVAEConfig
    supports_incomplete_data: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    def __init__(
        self,
        model_config: BaseMultiVAEConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model_config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(model_config).__name__}."
            )
        custom = [name for name, value in (("encoders", encoders), ("decoders", decoders)) if value is not None]
        self.model_config = replace(
            model_config, custom_architectures=sorted(set(model_config.custom_architectures) | set(custom))
        )
        self.modalities = self._resolve_modality_names(encoders, decoders)
        self.latent_dim = model_config.latent_dim
        self.encoders = self._modules_or_default("encoders", encoders, self.build_default_encoder)
        self.decoders = self._modules_or_default("decoders", decoders, self.build_default_decoder)
        self._build_decoder_scales()

    def _build_decoder_scales(self) -> None:
        """One log-scale per normal/laplace modality when the scale is calibrated (``decoder_scale``).

        ``learned``: a parameter. ``analytic``: a buffer holding a running mean of the batch optimum, so
        that evaluation (validation loss, likelihood estimates) does not depend on the batch it sees.
        """
        self.decoder_log_scales: nn.ParameterDict | None = None
        mode = self.model_config.decoder_scale
        scaled = [m for m in self.modalities if self.model_config.decoder_distribution(m) in SCALED_DISTRIBUTIONS]
        if mode == "fixed" or not scaled:
            return
        self.decoder_log_scales = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(()), requires_grad=mode == "learned") for m in scaled}
        )

    def decoder_log_scale(self, modality: str) -> torch.Tensor | None:
        """The current log-scale of a calibrated decoder (None for a fixed scale)."""
        if self.decoder_log_scales is None or modality not in self.decoder_log_scales:
            return None
        log_scale = self.decoder_log_scales[modality]
        return soft_floor(log_scale) if self.model_config.decoder_scale == "learned" else log_scale.detach()

    def _calibrated_params(self, batch: DatasetOutput, modality: str, x_hat: torch.Tensor) -> dict[str, Any]:
        """``decoder_dist_params`` of ``modality`` with the calibrated scale in place of the fixed one."""
        cfg = self.model_config
        params: dict[str, Any] = cfg.decoder_params(modality)
        if self.decoder_log_scales is None or modality not in self.decoder_log_scales:
            return params
        if cfg.decoder_scale == "analytic" and self.training:
            log_scale = analytic_log_scale(
                cfg.decoder_distribution(modality),
                batch.data[modality],
                x_hat,
                batch.masks[modality],
                batch.observation_masks.get(modality),
            )
            with torch.no_grad():  # running mean for evaluation; 0.9 forgets the first epochs quickly
                self.decoder_log_scales[modality].lerp_(log_scale.detach(), 0.1)
        else:
            log_scale = self.decoder_log_scale(modality)
        params["scale"] = log_scale.exp()
        return params

    # ------------------------------------------------------------------ construction helpers
    def build_default_encoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        """The encoder built when none is given: q(z | x_m) over ``latent_dim``. Models override it."""
        return default_encoder(shape, self.latent_dim)

    def build_default_decoder(self, modality: str, shape: tuple[int, ...]) -> nn.Module:
        """The decoder built when none is given: p(x_m | z) from ``latent_dim``. Models override it."""
        return default_decoder(self.latent_dim, shape)

    def record_custom_architectures(self, **modules: Any) -> None:
        """Add to ``custom_architectures`` the names of the modules the user passed (not None)."""
        given = {name for name, value in modules.items() if value is not None}
        if given:
            names = sorted(set(self.model_config.custom_architectures) | given)
            self.model_config = replace(self.model_config, custom_architectures=names)

    def _resolve_modality_names(self, *module_dicts: Mapping[str, nn.Module] | None) -> list[str]:
        names = self.model_config.modalities
        for modules in module_dicts:
            if modules is None:
                continue
            if not names:
                names = list(modules)
            elif set(modules) != set(names):
                raise ConfigError(f"Modules are given for {sorted(modules)} but the modalities are {sorted(names)}.")
        if not names:
            raise ConfigError("Give input_dims in the config (or pass encoders and decoders) so the modalities are known.")
        if len(names) != self.model_config.n_modalities:
            raise ConfigError(f"n_modalities is {self.model_config.n_modalities} but {len(names)} modalities are given: {names}.")
        return list(names)

    def _modules_or_default(self, what: str, modules: Mapping[str, nn.Module] | None, build: Any) -> nn.ModuleDict:
        if modules is not None:
            for m, module in modules.items():
                if not isinstance(module, nn.Module):
                    raise ConfigError(f"{what}['{m}'] must be a torch.nn.Module, got {type(module).__name__}.")
            return nn.ModuleDict({m: modules[m] for m in self.modalities})
        dims = self.model_config.input_dims
        if dims is None:
            raise ConfigError(f"No {what} given and no input_dims in the config to build default ones.")
        return nn.ModuleDict({m: build(m, dims[m]) for m in self.modalities})

    # ------------------------------------------------------------------ training hooks
    @property
    def stages(self) -> list[TrainingStage]:
        """Training stages; one unless the model is trained in phases."""
        return [TrainingStage("train", 1)]

    def stage_at(self, epoch: int) -> TrainingStage:
        """The stage that 1-based ``epoch`` belongs to."""
        current = self.stages[0]
        for stage in self.stages:
            if epoch >= stage.first_epoch:
                current = stage
        return current

    def parameters_for_stage(self, stage: TrainingStage) -> list[nn.Parameter]:
        """Parameters the optimizer updates during ``stage`` (all of them unless the model is staged)."""
        return list(self.parameters())

    def enter_stage(self, stage: TrainingStage) -> None:
        """Called by the trainer when ``stage`` starts (and on resume); staged models freeze parts here."""

    @property
    def start_keep_best_epoch(self) -> int:
        """Until this epoch the trainer always keeps the latest weights (KL annealing would bias the choice)."""
        return 0

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ batch plumbing
    def prepare_batch(self, inputs: DatasetOutput | MultimodalBaseDataset | Mapping[str, Any]) -> DatasetOutput:
        """A batch on the model's device with masks for every modality; checks names and shapes."""
        if isinstance(inputs, MultimodalBaseDataset):
            batch = inputs.as_batch()
        elif isinstance(inputs, Mapping) and "data" in inputs:
            batch = DatasetOutput(inputs)
        else:
            raise TypeError("Pass a batch (DatasetOutput with 'data' and 'masks') or a MultimodalBaseDataset.")
        data = batch["data"]
        missing = [m for m in self.modalities if m not in data]
        if missing:
            raise ValueError(f"The batch lacks modalities {missing}; the model expects {self.modalities}.")
        n = next(iter(data.values())).shape[0]
        dims = self.model_config.input_dims or {}
        for m in self.modalities:
            if m in dims and tuple(data[m].shape[1:]) != tuple(dims[m]):
                raise ValueError(
                    f"Modality '{m}' has per-sample shape {tuple(data[m].shape[1:])}, but the model was built for {tuple(dims[m])}."
                )
        masks = dict(batch.get("masks") or {})
        for m in self.modalities:
            if m not in masks:
                masks[m] = torch.ones(n, dtype=torch.bool)
        out = DatasetOutput(
            data={m: data[m] for m in self.modalities},
            masks={m: torch.as_tensor(masks[m]).bool() for m in self.modalities},
            labels=batch.get("labels"),
            ids=batch.get("ids"),
            observation_masks=dict(batch.get("observation_masks") or {}),
        )
        return out.to(self.device)

    def resolve_modalities(self, modalities: str | Sequence[str]) -> list[str]:
        """``'all'``, one name, or a list of names -> a validated list in the model's order."""
        if isinstance(modalities, str):
            modalities = self.modalities if modalities == "all" else [modalities]
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown:
            raise ValueError(f"Unknown modalities {unknown}; the model has {self.modalities}.")
        if not modalities:
            raise ValueError("Choose at least one modality.")
        return [m for m in self.modalities if m in modalities]

    def check_observed(self, batch: DatasetOutput, cond_mod: Sequence[str], ignore_incomplete: bool) -> None:
        """Refuse to condition on a modality a sample lacks, unless asked to use what is there."""
        if ignore_incomplete:
            observed_any = torch.stack([batch.masks[m] for m in cond_mod]).any(0)
            if self.supports_incomplete_data and bool(observed_any.all()):
                return
        for m in cond_mod:
            if not bool(batch.masks[m].all()):
                who = [batch.ids[i] for i in torch.nonzero(~batch.masks[m]).flatten().tolist()[:5]] if batch.ids else []
                raise IncompleteDataError(
                    f"Cannot condition on '{m}': it is missing for samples {who}. Condition on modalities those "
                    "samples have" + (", or pass ignore_incomplete=True." if self.supports_incomplete_data else ".")
                )

    def encoder_gaussian(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return as_gaussian(self.encoders[modality](x))

    def decoder_output(self, modality: str, z: torch.Tensor) -> torch.Tensor:
        """Decoder parameters for latents of shape ``(*lead, D)``; leading dims flattened for the module."""
        lead = z.shape[:-1]
        x_hat = as_reconstruction(self.decoders[modality](z.reshape(-1, z.shape[-1])))
        return x_hat.reshape(*lead, *x_hat.shape[1:])

    def reconstruction_log_likelihood(
        self, batch: DatasetOutput, modality: str, x_hat: torch.Tensor, rescale: bool = True
    ) -> torch.Tensor:
        """lambda_m * log p(x_m | z) per sample, zero where the modality is missing; ``(B,)`` or ``(N, B)``."""
        cfg = self.model_config
        log_p = reconstruction_log_likelihood(
            cfg.decoder_distribution(modality),
            batch.data[modality],
            x_hat,
            self._calibrated_params(batch, modality, x_hat),
            rescale=cfg.likelihood_rescale(modality) if rescale else 1.0,
            observed_voxels=batch.observation_masks.get(modality),
        )
        return torch.where(batch.masks[modality], log_p, torch.zeros((), dtype=log_p.dtype, device=log_p.device))

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
        raise NotImplementedError

    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, embedding: ModelOutput, modalities: str | Sequence[str] = "all", **kwargs: Any) -> ModelOutput:
        """Mean of p(x_m | z) for each requested modality (sigmoid of the logits for bernoulli)."""
        with evaluation_mode(self):
            z = embedding["z"]
            return ModelOutput(
                {
                    m: mean_of(self.model_config.decoder_distribution(m), self.decoder_output(m, z))
                    for m in self.resolve_modalities(modalities)
                }
            )

    @torch.no_grad()
    def predict(
        self,
        inputs: Any,
        cond_mod: str | Sequence[str] = "all",
        gen_mod: str | Sequence[str] = "all",
        N: int = 1,
        flatten: bool = False,
        **kwargs: Any,
    ) -> ModelOutput:
        """Cross-modal generation: encode from ``cond_mod`` and decode ``gen_mod``.

        Returns ``(B, *shape)`` per modality for ``N == 1``, ``(N, B, *shape)`` otherwise
        (``(N * B, *shape)`` with ``flatten``).
        """
        with evaluation_mode(self):
            embedding = self.encode(inputs, cond_mod=cond_mod, N=N, flatten=False, **kwargs)
            out = self.decode(embedding, gen_mod)
            if flatten and N > 1:
                out = ModelOutput({m: x.reshape(-1, *x.shape[2:]) for m, x in out.items()})
            return out

    @torch.no_grad()
    def generate_from_prior(self, n_samples: int = 1, **kwargs: Any) -> ModelOutput:
        """Latent codes z ~ p(z) = N(0, I), shape ``(n_samples, latent_dim)``, ready for ``decode``."""
        z = torch.randn(n_samples, self.latent_dim, device=self.device)
        return ModelOutput(z=z, one_latent_space=True)

    def compute_joint_nll(self, inputs: Any, K: int = 1000, batch_size_K: int = 100) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not estimate the joint likelihood.")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
        return save_bundle(self, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **modules: nn.Module) -> MultimodalVAE:
        model = load_bundle(path, **modules)
        if not isinstance(model, cls):
            raise ConfigError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}.")
        return model

    def extra_repr(self) -> str:
        return f"modalities={self.modalities}, latent_dim={self.latent_dim}"


def sample_latent(mu: torch.Tensor, logvar: torch.Tensor, N: int, return_mean: bool, flatten: bool) -> torch.Tensor:
    """N reparameterised samples in the shared shape convention (see module docstring)."""
    z = rsample(mu, logvar, N, return_mean)
    if flatten and N > 1:
        z = z.reshape(-1, *z.shape[2:])
    return z


def save_bundle(model: MultimodalVAE, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``model_config.json`` into the folder ``path``; no pickle anywhere."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(model.state_dict(), folder / BUNDLE_WEIGHTS, {"model": model.name})
    atomic_write_json(
        folder / BUNDLE_CONFIG,
        {
            "format": BUNDLE_FORMAT,
            "model": model.name,
            "config": config_to_dict(model.model_config),
            "software_version": core.__version__,
            "metadata": dict(metadata or {}),
        },
        sort_keys=True,
    )
    return folder


def read_bundle_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    folder = Path(path)
    config_path = folder / BUNDLE_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a model bundle: {BUNDLE_CONFIG} is missing.")
    try:
        payload = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path} is not valid JSON ({exc}); the bundle is damaged.") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise ConfigError(f"{config_path} lacks the 'model' and 'config' entries of a model bundle.")
    return payload


def _version(text: Any) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in str(text).split("+")[0].split("."))
    except ValueError:
        return None


def check_bundle_compatible(payload: Mapping[str, Any], folder: str | os.PathLike[str]) -> None:
    """Refuse a bundle this code does not know: another format, a newer or unreadable software version,
    or a model name that is not registered (a bundle shared from a later release, or tampered with)."""
    from core.models.registry import available

    where = Path(folder) / BUNDLE_CONFIG
    if payload.get("format", BUNDLE_FORMAT) != BUNDLE_FORMAT:
        raise ConfigError(f"{where} has bundle format {payload.get('format')!r}; this software reads format {BUNDLE_FORMAT}. "
                          "Load it with the mmvae-workbench release that wrote it.")
    written, ours = _version(payload.get("software_version", core.__version__)), _version(core.__version__)
    if written is None or (ours is not None and written > ours):
        raise ConfigError(f"{where} was written by mmvae-workbench {payload.get('software_version')!r}, which this "
                          f"version ({core.__version__}) does not know; upgrade mmvae-workbench to load it.")
    if payload["model"] not in available():
        raise ConfigError(f"{where} holds an unknown model {payload['model']!r}; this version knows {', '.join(available())}.")


def load_bundle(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", **modules: nn.Module) -> MultimodalVAE:
    """Rebuild a model from a bundle folder: config validated, weights from safetensors, no trainer state."""
    from core.models.registry import get_model_class

    folder = Path(path)
    payload = read_bundle_config(folder)
    check_bundle_compatible(payload, folder)
    cls = get_model_class(payload["model"])
    config = config_from_dict(cls.config_class, payload["config"])
    needed = [name for name in config.custom_architectures if name not in modules]
    if needed:
        raise ConfigError(
            f"This {cls.__name__} was trained with user-supplied {needed}; pass the same modules: load(path, {needed[0]}=...)."
        )
    model = cls(config, **modules)
    weights_path = folder / BUNDLE_WEIGHTS
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} is missing; the bundle is incomplete.")
    state = load_tensors(weights_path, device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"Weights in {weights_path} do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    return model.to(map_location)
