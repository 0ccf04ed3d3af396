"""Encoder and decoder interfaces.

An encoder maps one modality ``x`` of shape ``(B, *shape)`` to the parameters of a diagonal Gaussian,
returned as an :class:`EncoderOutput` (``embedding`` = mean, ``log_covariance`` = log-variance, the
names MultiVae and pythae use, so user modules port over). A decoder maps latents of shape ``(*, D)``
(any number of leading dimensions) to ``reconstruction`` of shape ``(*, *shape)``, holding the
*parameters* of the output distribution: the mean for normal/laplace, logits for bernoulli.

User modules may subclass :class:`BaseEncoder`/:class:`BaseDecoder`, or be any ``nn.Module`` that
returns such an output, a ``(mean, logvar)`` tuple, or a dict with those keys; :func:`as_gaussian` and
:func:`as_reconstruction` accept all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from core.outputs import ModelOutput

__all__ = [
    "BaseEncoder",
    "BaseDecoder",
    "EncoderOutput",
    "DecoderOutput",
    "as_embedding",
    "as_gaussian",
    "as_reconstruction",
    "evaluation_mode",
]


class EncoderOutput(ModelOutput):
    """``embedding`` (mean) and ``log_covariance`` (log-variance) of q(z | x)."""


class DecoderOutput(ModelOutput):
    """``reconstruction``: the parameters of p(x | z) (mean, or logits for bernoulli)."""


class BaseEncoder(nn.Module):
    """Base class for encoders; ``forward(x)`` returns an :class:`EncoderOutput`."""


class BaseDecoder(nn.Module):
    """Base class for decoders; ``forward(z)`` returns a :class:`DecoderOutput`."""


def as_gaussian(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, logvar)`` from whatever an encoder returned."""
    if isinstance(output, Mapping):
        for mean_key, logvar_key in (("embedding", "log_covariance"), ("mu", "logvar"), ("mean", "log_var")):
            if mean_key in output and logvar_key in output:
                return output[mean_key], output[logvar_key]
        raise TypeError(f"Encoder output has keys {sorted(output)}; expected 'embedding' and 'log_covariance'.")
    if isinstance(output, (tuple, list)) and len(output) == 2:
        return output[0], output[1]
    raise TypeError(f"An encoder must return (mean, logvar) or an EncoderOutput; got {type(output).__name__}.")


def as_embedding(output: Any) -> torch.Tensor:
    """The features (or mean) a module returned: a tensor, an output with ``embedding`` alone (no
    ``log_covariance`` needed, as the documented first-layer encoders of MHVAE return), or the mean of
    any output :func:`as_gaussian` reads."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "embedding" in output:
        return output["embedding"]
    return as_gaussian(output)[0]


def as_reconstruction(output: Any) -> torch.Tensor:
    """The reconstruction tensor from whatever a decoder returned."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "reconstruction" in output:
        return output["reconstruction"]
    raise TypeError(f"A decoder must return a tensor or a DecoderOutput with 'reconstruction'; got {type(output).__name__}.")


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``module`` in eval mode (dropout off, norm statistics frozen), then restore the
    mode it had, even if the block raises: inference inside training must not leave a model in eval."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
