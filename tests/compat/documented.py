"""Code written the way the documented API (the seed documents) shows it: the modules users bring, and a
small model of every registered kind to run it on (shared by the compat tests, imported by name)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.data import MultimodalBaseDataset
from core.models import ModelOutput, available, get_model_class
from core.nn import BaseDecoder, BaseEncoder

INPUT_DIMS = {"a": (6,), "b": (1, 8, 8)}
LATENT_DIM = 3


class DocumentedEncoder(BaseEncoder):
    """An encoder as the documentation writes one: flattens its batch, returns embedding and log_covariance."""

    def __init__(self, input_dim: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.input_size = math.prod(input_dim)
        self.hidden = nn.Linear(self.input_size, 16)
        self.embedding = nn.Linear(16, latent_dim)
        self.log_covariance = nn.Linear(16, latent_dim)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = torch.relu(self.hidden(x.reshape(-1, self.input_size)))
        return ModelOutput(embedding=self.embedding(h), log_covariance=self.log_covariance(h))


class DocumentedDecoder(BaseDecoder):
    """A decoder as the documentation writes one: reads a (B, latent_dim) batch, returns reconstruction."""

    def __init__(self, latent_dim: int, output_dim: tuple[int, ...]) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.layers = nn.Sequential(nn.Linear(latent_dim, 16), nn.ReLU(), nn.Linear(16, math.prod(output_dim)))

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=self.layers(z).reshape(z.shape[0], *self.output_dim))


def config_of(name: str, **overrides):
    cls = get_model_class(name)
    return cls.config_class(n_modalities=len(INPUT_DIMS), latent_dim=LATENT_DIM, input_dims=INPUT_DIMS, **overrides)


def small_model(name: str, **modules):
    return get_model_class(name)(config_of(name), **modules)


def dataset(n: int = 4, seed: int = 0) -> MultimodalBaseDataset:
    generator = torch.Generator().manual_seed(seed)
    return MultimodalBaseDataset({m: torch.rand(n, *shape, generator=generator) for m, shape in INPUT_DIMS.items()})


def takes_plain_modules(name: str) -> bool:
    """Whether the model's encoders give q(z | x_m) over latent_dim and its decoders read latent_dim alone
    (models with private or hierarchical latents take other modules, tested in their own files)."""
    model = small_model(name)
    with torch.no_grad():
        try:
            out = model.encoders["a"](torch.zeros(2, *INPUT_DIMS["a"]))
            model.decoders["a"](torch.zeros(2, LATENT_DIM))
        except (RuntimeError, TypeError):  # a decoder reading more than z, or no per-modality networks (CVAE)
            return False
    return isinstance(out, dict) and set(out) == {"embedding", "log_covariance"} and out["embedding"].shape == (2, LATENT_DIM)


PLAIN_MODELS = [name for name in available() if takes_plain_modules(name)]


def seeded(seed: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) right after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return fn(*args, **kwargs)
