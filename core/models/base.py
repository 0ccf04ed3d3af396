"""The API every multimodal VAE shares, and the plumbing behind it.

Shapes (the same for every model):

* ``encode(inputs, cond_mod, N)`` -> ``z`` of shape ``(B, D)`` when ``N == 1`` and ``(N, B, D)`` when
  ``N > 1`` (sample-major), or ``(N * B, D)`` with ``flatten=True``.
* ``decode(embedding)`` -> per modality, the mean of p(x_m | z) with shape ``(*lead, *input_dims[m])``
  where ``lead`` are the leading dimensions of ``z``.
* ``predict(inputs, cond_mod, gen_mod, N)`` = ``decode(encode(...))``: ``(B, *shape)`` or
  ``(N, B, *shape)``.
* ``forward(inputs, progress)`` -> :class:`LossOutput` (the loss, its named terms and ``.metrics``).
  The documented call ``model(inputs, epoch=3, batch_ratio=0.5)`` is accepted too: ``epoch`` (1-based)
  and ``batch_ratio`` (the fraction of the epoch done) become the :class:`TrainingProgress` that the
  annealing reads. Every model's ``forward`` gets this, and its ``encode`` the refusal of unknown
  keyword arguments, from :meth:`MultimodalVAE.__init_subclass__`.

The config's hyper-parameters read as attributes of the model (``model.beta``, ``model.warmup``), and
are read-only there: a model is built from its config and does not drift from it.

A single unbatched sample (``dataset[i]``) is accepted wherever a batch is, as a batch of one.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import math
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
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

__all__ = [
    "MultimodalVAE",
    "TrainingStage",
    "IncompleteDataError",
    "ModalityError",
    "UnsupportedOperationError",
    "UnknownOptionError",
    "save_bundle",
    "load_bundle",
    "check_bundle_compatible",
]

BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_CONFIG = "model_config.json"
BUNDLE_FORMAT = 1


class IncompleteDataError(ValueError, AttributeError):
    """Raised when a model that needs every modality receives a sample with one missing.

    Also an ``AttributeError``, the type the documented library raises here, so code catching it works.
    """


class ModalityError(ConfigError, AttributeError):
    """A modality name the model does not have (or modules given for other modalities).

    Also an ``AttributeError``, the type the documented library raises for a wrong modality name.
    """


class UnsupportedOperationError(NotImplementedError, AttributeError):
    """The model does not offer this operation (a likelihood estimate, for one).

    Also an ``AttributeError``: in the documented library such a model has no such method.
    """


class UnknownOptionError(TypeError):
    """A keyword argument the method does not take; the message names the nearest valid one."""


def reject_unknown_options(where: str, given: Collection[str], valid: Collection[str]) -> None:
    """Raise :class:`UnknownOptionError` for the first name of ``given`` not in ``valid``."""
    for name in given:
        if name not in valid:
            hint = difflib.get_close_matches(name, list(valid), n=1)
            suggestion = f" Did you mean '{hint[0]}'?" if hint else f" Valid options: {', '.join(sorted(valid))}."
            raise UnknownOptionError(f"{where}() got an unknown keyword argument '{name}'.{suggestion}")


def named_parameters_of(method: Callable[..., Any]) -> set[str]:
    """The keyword names ``method`` takes explicitly (not its ``**kwargs``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(method).parameters.values() if p.kind in kinds} - {"self"}


def training_progress(
    progress: TrainingProgress | None, epoch: int | None = None, batch_ratio: float | None = None
) -> TrainingProgress | None:
    """The progress ``forward`` reads, from the project's ``progress`` or the documented ``epoch`` and
    ``batch_ratio`` (1-based epoch; the fraction of it done, 0 when not given, as in evaluation)."""
    if epoch is None and batch_ratio is None:
        return progress
    if progress is not None:
        raise TypeError("Pass either progress or epoch/batch_ratio to forward, not both.")
    if epoch is None:
        raise TypeError("batch_ratio needs epoch: the fraction is of that epoch.")
    if isinstance(epoch, bool) or int(epoch) != epoch or epoch < 1:
        raise ValueError(f"epoch must be a positive integer (the first epoch is 1); got {epoch!r}.")
    ratio = 0.0 if batch_ratio is None else float(batch_ratio)
    if not (0.0 <= ratio <= 1.0 and math.isfinite(ratio)):
        raise ValueError(f"batch_ratio is the fraction of the epoch done, in [0, 1]; got {batch_ratio!r}.")
    return TrainingProgress(int(epoch), ratio)


def _accepting_documented_progress(forward: Callable[..., LossOutput]) -> Callable[..., LossOutput]:
    """``forward(inputs, progress)`` that also takes the documented ``epoch=`` and ``batch_ratio=``."""

    @functools.wraps(forward)
    def wrapper(
        self: MultimodalVAE,
        inputs: Any,
        progress: TrainingProgress | None = None,
        *,
        epoch: int | None = None,
        batch_ratio: float | None = None,
        **kwargs: Any,
    ) -> LossOutput:
        reject_unknown_options(f"{type(self).__name__}.forward", kwargs, ("progress", "epoch", "batch_ratio"))
        return forward(self, inputs, training_progress(progress, epoch, batch_ratio))

    return wrapper


def _rejecting_unknown_options(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` refusing keyword arguments it does not name, instead of swallowing them in ``**kwargs``."""
    valid = named_parameters_of(method)

    @functools.wraps(method)
    def wrapper(self: MultimodalVAE, *args: Any, **kwargs: Any) -> Any:
        reject_unknown_options(f"{type(self).__name__}.{method.__name__}", kwargs, valid)
        return method(self, *args, **kwargs)

    return wrapper


def is_mapping_like(value: Any) -> bool:
    """A ``dict``, any ``Mapping``, or a container with the same access that is not one (``nn.ModuleDict``)."""
    return isinstance(value, Mapping) or all(callable(getattr(value, a, None)) for a in ("keys", "items", "__getitem__"))


@functools.cache
def hyperparameter_names(config_class: type) -> frozenset[str]:
    """The fields of a config class, which the model exposes as read-only attributes."""
    return frozenset(f.name for f in fields(config_class))


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
    ``summary``, and implement ``encode`` and ``forward(inputs, progress)``; the documented calling
    conventions are added to them here (see the module docstring).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[BaseMultiVAEConfig]] = BaseMultiVAEConfig
    supports_incomplete_data: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give each model's own ``forward`` the documented ``epoch``/``batch_ratio`` arguments and its own
        ``encode`` the refusal of unknown options, written once here rather than in every model."""
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = _accepting_documented_progress(cls.__dict__["forward"])
        if "encode" in cls.__dict__:
            cls.encode = _rejecting_unknown_options(cls.__dict__["encode"])

    def __getattr__(self, name: str) -> Any:
        """Submodules and parameters first (``nn.Module``), then the config's hyper-parameters."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            config = self.__dict__.get("model_config")
            if config is not None and name in hyperparameter_names(type(config)):
                return getattr(config, name)
            raise

    def __setattr__(self, name: str, value: Any) -> None:
        config = self.__dict__.get("model_config")
        if config is not None and name in hyperparameter_names(type(config)):
            raise AttributeError(
                f"{type(self).__name__}.{name} is a hyper-parameter of its config and read-only on the model; "
                f"build a new model from a config with the value you want."
            )
        super().__setattr__(name, value)

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

    @property
    def decoders_frozen(self) -> bool:
        """Whether this stage of training keeps the decoders fixed; an analytic scale then keeps its running value."""
        return False

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
        if cfg.decoder_scale == "analytic" and self.training and not self.decoders_frozen:
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
                raise ModalityError(f"Modules are given for {sorted(modules)} but the modalities are {sorted(names)}.")
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
        missing = [m for m in self.modalities if m not in batch["data"]]
        if missing:
            raise ModalityError(f"The batch lacks modalities {missing}; the model expects {self.modalities}.")
        if self._is_single_sample(batch):
            batch = _as_batch_of_one(batch)
        data = batch["data"]
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

    def _is_single_sample(self, batch: Mapping[str, Any]) -> bool:
        """Whether ``batch`` is one unbatched sample (``dataset[i]``): 0-d masks, or data of exactly the
        per-sample shapes of ``input_dims``."""
        masks = [batch["masks"][m] for m in self.modalities if m in (batch.get("masks") or {})]
        if masks:
            return all(torch.as_tensor(mask).dim() == 0 for mask in masks)
        dims = self.model_config.input_dims
        return dims is not None and all(tuple(batch["data"][m].shape) == tuple(dims[m]) for m in self.modalities)

    def resolve_modalities(self, modalities: str | Sequence[str]) -> list[str]:
        """``'all'``, one name, or a list of names -> a validated list in the model's order."""
        if isinstance(modalities, str):
            modalities = self.modalities if modalities == "all" else [modalities]
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown:
            raise ModalityError(f"Unknown modalities {unknown}; the model has {self.modalities}.")
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

    def joint_log_likelihood(self, batch: DatasetOutput, z: torch.Tensor, rescale: bool = False) -> torch.Tensor:
        r"""\sum_m log p(x_m | z) over the observed modalities; ``z`` ``(k, B, D)`` gives ``(k, B)``.

        Unweighted by default (what likelihood estimates read); ``rescale`` applies each modality's
        lambda_m, as the training objectives do."""
        return sum(self.reconstruction_log_likelihood(batch, m, self.decoder_output(m, z), rescale) for m in self.modalities)

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
        """The loss on a batch; also callable as ``model(inputs, epoch=e, batch_ratio=r)``."""
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
    def cannot_generate(self, cond_mod: str | Sequence[str], gen_mod: str | Sequence[str]) -> str | None:
        """Why :meth:`predict` cannot generate ``gen_mod`` from ``cond_mod``, in words for a user; None when it can.

        Every joint model generates any modality from any non-empty subset; a model whose generation is
        tied to fixed modalities (a CVAE) overrides this, so callers (imputation, the Synthesize page,
        benchmarks) ask the model instead of catching its errors. Unknown names raise as everywhere.
        """
        self.resolve_modalities(cond_mod)
        self.resolve_modalities(gen_mod)
        return None

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
        (``(N * B, *shape)`` with ``flatten``). Other keyword arguments go to :meth:`encode`; names that
        neither takes are refused with the nearest valid one.
        """
        reject_unknown_options(
            f"{type(self).__name__}.predict", kwargs, named_parameters_of(self.predict) | named_parameters_of(self.encode)
        )
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
        """-sum_i log p(X_i), estimated by importance sampling (models with a likelihood override it)."""
        raise UnsupportedOperationError(f"{type(self).__name__} does not estimate the joint likelihood.")

    @property
    def has_likelihood(self) -> bool:
        """Whether the model estimates likelihoods (it overrides :meth:`compute_joint_nll`)."""
        return type(self).compute_joint_nll is not MultimodalVAE.compute_joint_nll

    def decoder_parameters(self, embedding: ModelOutput, modality: str) -> torch.Tensor:
        """The parameters of p(x_m | z) for an ``encode`` output (mean, or logits for bernoulli); what
        :meth:`decode` turns into means. Models whose decoders read more than ``z`` override it."""
        return self.decoder_output(modality, embedding["z"])

    @torch.no_grad()
    def compute_cond_nll(
        self, inputs: Any, subset: str | Sequence[str], pred_mods: str | Sequence[str], k_iwae: int = 1000
    ) -> dict[str, torch.Tensor]:
        r"""-log p(x_pred | x_S) per predicted modality, averaged over the samples (the documented recipe).

        log p(x_m | x_S) ~ logsumexp_k log p(x_m | z_k) - log K with z_k ~ q(z | x_S): a plain Monte-Carlo
        estimate (not importance weighted), without likelihood rescaling, as in the documented library.
        Samples missing a predicted modality are left out of its mean.

        Args:
            inputs: a batch or a dataset; every sample must have the modalities of ``subset``.
            subset: the conditioning modalities S (``'all'``, a name or a list).
            pred_mods: the modalities whose conditional likelihood is estimated.
            k_iwae: the number K of latent samples per data point.

        Returns:
            modality -> scalar tensor, the negative conditional log-likelihood averaged over the samples.
        """
        if not self.has_likelihood:
            raise UnsupportedOperationError(f"{type(self).__name__} does not estimate likelihoods.")
        if int(k_iwae) != k_iwae or k_iwae < 1:
            raise ValueError(f"k_iwae must be a positive integer; got {k_iwae}.")
        batch = self.prepare_batch(inputs)
        cond, targets = self.resolve_modalities(subset), self.resolve_modalities(pred_mods)
        with evaluation_mode(self):
            log_p: dict[str, list[torch.Tensor]] = {m: [] for m in targets}
            for _ in range(int(k_iwae)):
                embedding = self.encode(batch, cond_mod=cond)
                for m in targets:
                    x_hat = self.decoder_parameters(embedding, m)
                    log_p[m].append(self.reconstruction_log_likelihood(batch, m, x_hat, rescale=False))
            out = {}
            for m, values in log_p.items():
                per_sample = torch.logsumexp(torch.stack(values), dim=0) - math.log(k_iwae)
                observed = batch.masks[m]
                out[m] = -(per_sample * observed).sum() / observed.sum().clamp_min(1)
            return out

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


def _as_batch_of_one(sample: Mapping[str, Any]) -> DatasetOutput:
    """An unbatched sample (``dataset[i]``) as a batch of one: a leading dimension on every tensor."""

    def with_batch_dim(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.unsqueeze(0)
        if isinstance(value, Mapping):
            return {k: with_batch_dim(v) for k, v in value.items()}
        return value

    ids = sample.get("ids")
    return DatasetOutput(
        data=with_batch_dim(sample["data"]),
        masks=with_batch_dim(sample.get("masks") or {}),
        labels=with_batch_dim(sample.get("labels")),
        ids=[ids] if isinstance(ids, str) else ids,
        observation_masks=with_batch_dim(sample.get("observation_masks") or {}),
    )


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
