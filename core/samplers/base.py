"""Post-hoc latent samplers: a density fitted on the training latents, used instead of the prior.

A VAE's aggregate posterior rarely fills N(0, I), so decoding prior samples can give blurry or
implausible images. Fitting a richer density on the codes of the training subjects and sampling from
it usually generates better joint samples (Ghosh et al. 2020; MultiVae's samplers).

Every sampler is fitted on ``encode(train, cond_mod="all", N=1)`` (posterior *samples*, not means,
from every observed modality; models that need complete subjects use the complete ones), and
``sample(n)`` returns a :class:`~core.models.ModelOutput` shaped like ``generate_from_prior(n)``, so
``model.decode(sampler.sample(n))`` works for every model. Samplers are saved without pickle: the
parameters in ``sampler.safetensors``, the settings in ``sampler.json``; a run keeps them under
``<run>/samplers/<name>/``.

References:
    Ghosh, Sajjadi, Vergari, Black & Schoelkopf, "From Variational to Deterministic Autoencoders",
    ICLR 2020 (ex-post density estimation). https://arxiv.org/abs/1903.12436
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from core.atomic import atomic_save_tensors, atomic_write_json, load_tensors
from core.data.dataset import MultimodalBaseDataset, batches_of
from core.nn.base import evaluation_mode
from core.outputs import ModelOutput
from core.progress import CancelFn, ProgressFn, Steps
from core.seeding import seeded

__all__ = ["LatentSampler", "SamplerError", "encode_training_latents", "register_sampler", "load_sampler",
           "sampler_folder", "SAMPLER_FORMAT"]

SAMPLER_FORMAT = 1
_SAMPLERS: dict[str, type[LatentSampler]] = {}


class SamplerError(ValueError):
    """A sampler was used before fitting, fitted on nothing, or loaded from a damaged folder."""


def register_sampler(cls: type[LatentSampler]) -> type[LatentSampler]:
    _SAMPLERS[cls.name] = cls
    return cls


def sampler_folder(run_dir: str | os.PathLike[str], name: str) -> Path:
    """Where a run keeps its fitted sampler ``name``."""
    return Path(run_dir) / "samplers" / name


def encode_training_latents(
    model: Any,
    dataset: MultimodalBaseDataset,
    batch_size: int = 64,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> torch.Tensor:
    """Posterior samples ``(n, *latent_shape)`` of the training subjects from all their observed modalities."""
    incomplete_ok = getattr(model, "supports_incomplete_data", True)
    observed = torch.stack([dataset.masks[m] for m in model.modalities])
    index = torch.nonzero(observed.any(0) if incomplete_ok else observed.all(0)).flatten().tolist()
    if not index:
        raise SamplerError("No training subject can be encoded (the model needs complete subjects and none is complete).")
    steps = Steps((len(index) + batch_size - 1) // batch_size, progress, cancel, "encoding the training latents")
    chunks = []
    with evaluation_mode(model):
        with seeded(seed, model.device), torch.no_grad():
            for _, batch in batches_of(dataset, index, batch_size):
                steps.check()
                z = model.encode(batch, cond_mod="all", N=1, ignore_incomplete=incomplete_ok).z
                chunks.append(z.detach().cpu().double())
                steps.advance("encoding")
    return torch.cat(chunks)


class LatentSampler:
    """Common interface; subclasses implement ``fit_latents``, ``_sample``, ``state`` and ``from_state``."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self.latent_dim: int | None = None
        self.latent_shape: tuple[int, ...] | None = None  # per-sample shape of z (spatial for MHVAE's z_1)
        self.device = torch.device("cpu")
        self.seed = 0

    @property
    def is_fitted(self) -> bool:
        return self.latent_dim is not None

    def fit(
        self,
        model: Any,
        dataset: MultimodalBaseDataset,
        batch_size: int = 64,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> LatentSampler:
        """Encode the training subjects with ``model`` and fit the density to their latents.

        A model whose latent prior depends on conditioning data (a CVAE's p(z | c)) is refused: a density
        of z alone cannot be decoded without that data, so it would give no sample to look at.
        """
        if getattr(model, "conditions_on_fixed_modalities", False):
            raise SamplerError(
                f"A {type(model).__name__} has no unconditional latent space to sample: its prior p(z | c) depends on "
                f"{list(getattr(model, 'conditioning_modalities', []))}; generate with generate_from_prior(cond_mod_data, N) instead."
            )
        z = encode_training_latents(model, dataset, batch_size, self.seed, progress, cancel)
        self.fit_latents(z.reshape(len(z), -1), progress=progress, cancel=cancel)
        self.latent_shape = tuple(z.shape[1:])
        self.device = model.device
        return self

    def fit_latents(self, z: torch.Tensor, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> LatentSampler:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> LatentSampler:
        """Where ``sample`` puts its output (the model's device)."""
        self.device = torch.device(device)
        return self

    def sample(self, n: int, seed: int | None = None) -> ModelOutput:
        """``n`` latent codes ``(n, *latent_shape)``, ready for ``model.decode``; ``seed`` makes the draw reproducible."""
        if not self.is_fitted:
            raise SamplerError(f"{type(self).__name__} is not fitted; call fit(model, train_dataset) first.")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        if seed is None:
            z = self._sample(n)
        else:
            with seeded(seed):
                z = self._sample(n)
        z = z.reshape(n, *(self.latent_shape or (self.latent_dim,)))
        return ModelOutput(z=z.float().to(self.device), one_latent_space=True)

    def _sample(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ persistence (no pickle)
    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        raise NotImplementedError

    def save(self, folder: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
        """Write ``sampler.json`` and ``sampler.safetensors`` into ``folder``."""
        if not self.is_fitted:
            raise SamplerError("Only a fitted sampler can be saved.")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(self.state(), folder / "sampler.safetensors", {"sampler": self.name})
        atomic_write_json(
            folder / "sampler.json",
            {"format": SAMPLER_FORMAT, "sampler": self.name, "config": self.config(), "latent_dim": self.latent_dim,
             "latent_shape": list(self.latent_shape or (self.latent_dim,)), "metadata": dict(metadata or {})},
            sort_keys=True,
        )
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> LatentSampler:
        sampler = load_sampler(folder)
        if not isinstance(sampler, cls):
            raise SamplerError(f"{folder} holds a {type(sampler).__name__}, not a {cls.__name__}.")
        return sampler


def load_sampler(folder: str | os.PathLike[str]) -> LatentSampler:
    """Rebuild the sampler saved in ``folder`` (whichever kind it is)."""
    folder = Path(folder)
    info_path, weights_path = folder / "sampler.json", folder / "sampler.safetensors"
    if not info_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{folder} is not a saved sampler: sampler.json or sampler.safetensors is missing.")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SamplerError(f"{info_path} is not valid JSON ({error}).") from None
    kind = info.get("sampler")
    if kind not in _SAMPLERS:
        raise SamplerError(f"{info_path} names sampler '{kind}'; known samplers are {sorted(_SAMPLERS)}.")
    sampler = _SAMPLERS[kind](**info.get("config", {}))
    sampler.latent_dim = int(info["latent_dim"])
    sampler.latent_shape = tuple(int(s) for s in info.get("latent_shape", [sampler.latent_dim]))
    sampler.load_state(load_tensors(weights_path), info)
    return sampler
