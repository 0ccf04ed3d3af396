"""Model configurations: typed, validated, serialisable, and the source of the GUI's forms.

Every config is a pydantic dataclass with ``extra='forbid'``: a misspelt key is an error that names
it (and suggests the closest valid key) instead of being silently ignored. Fields carry a description
(shown as tooltip) and ``json_schema_extra={"advanced": True}`` marks those the GUI tucks away. The
machinery (errors, parsing, schemas) lives in :mod:`core.config` and is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Self

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from core.config import (
    CONFIG_DICT,
    ConfigError,
    advanced,
    config_from_dict,
    config_schema,
    config_to_dict,
    format_problems,
)
from core.models._shared.likelihoods import DecoderDistribution, DecoderScale

__all__ = [
    "MODEL_CONFIG_DICT",
    "BaseMultiVAEConfig",
    "ConfigError",
    "format_problems",
    "config_to_dict",
    "config_from_dict",
    "config_schema",
    "advanced",
]

#: The models' name for :data:`core.config.CONFIG_DICT` (the machinery lives in ``core.config``).
MODEL_CONFIG_DICT = CONFIG_DICT


@dataclass(config=MODEL_CONFIG_DICT)
class BaseMultiVAEConfig:
    """Fields shared by every multimodal VAE (MultiVae's ``BaseMultiVAEConfig``)."""

    n_modalities: int = Field(ge=1, description="The number of modalities.")
    latent_dim: int = Field(10, ge=1, le=4096, description="Dimension of the (shared) latent space.")
    input_dims: dict[str, tuple[int, ...]] | None = Field(
        None, description="Modality names and per-sample input shapes, e.g. {'T1': (1, 32, 32, 32)}."
    )
    uses_likelihood_rescaling: bool = Field(
        False, **advanced("Rescale each modality's likelihood to mitigate modality collapse (Javaloy et al. 2022).")
    )
    rescale_factors: dict[str, float] | None = Field(
        None,
        **advanced(
            "Per-modality reconstruction weights. If None while rescaling is on, max_size / size of each modality."
        ),
    )
    decoders_dist: dict[str, DecoderDistribution] | None = Field(
        None, **advanced("Output distribution per modality: normal, laplace, bernoulli (logits) or categorical.")
    )
    decoder_dist_params: dict[str, dict[str, float]] | None = Field(
        None, **advanced("Parameters of the output distributions, e.g. {'T1': {'scale': 0.75}}.")
    )
    decoder_scale: DecoderScale = Field(
        "fixed",
        **advanced(
            "Scale of normal/laplace decoders: 'fixed' (decoder_dist_params, 1 by default), 'learned' (one per "
            "modality, trained) or 'analytic' (the batch optimum, sigma-VAE). Calibrated scales sharpen synthesis."
        ),
    )
    custom_architectures: list[str] = Field(
        default_factory=list, **advanced("Names of the modules supplied by the user rather than built by default.")
    )

    @model_validator(mode="after")
    def _check_modalities(self) -> BaseMultiVAEConfig:
        names = list(self.input_dims or {})
        if self.input_dims is not None:
            if len(self.input_dims) != self.n_modalities:
                raise ValueError(
                    f"n_modalities is {self.n_modalities} but input_dims names {len(names)} modalities {names}."
                )
            for m, shape in self.input_dims.items():
                if not shape or any(s < 1 for s in shape):
                    raise ValueError(f"input_dims['{m}'] = {shape} is not a valid shape (positive sizes).")
        for key in ("rescale_factors", "decoders_dist", "decoder_dist_params"):
            value = getattr(self, key)
            if value and names:
                unknown = sorted(set(value) - set(names))
                if unknown:
                    raise ValueError(f"{key} names unknown modalities {unknown}; the modalities are {names}.")
        for m, factor in (self.rescale_factors or {}).items():
            if not (factor > 0 and math.isfinite(factor)):
                raise ValueError(f"rescale_factors['{m}'] = {factor}; it must be a positive number.")
        for m, params in (self.decoder_dist_params or {}).items():
            for p, value in params.items():
                if p != "scale":
                    raise ValueError(f"decoder_dist_params['{m}'] has unknown parameter '{p}'; only 'scale' exists.")
                if not value > 0:
                    raise ValueError(f"decoder_dist_params['{m}']['scale'] = {value}; a scale must be positive.")
        return self

    @property
    def modalities(self) -> list[str]:
        return list(self.input_dims or {})

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (the documented ``to_dict``); :meth:`from_dict` reads it back."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """The config from a plain mapping (``to_dict``'s, YAML, JSON), validated: a wrong key or value is
        a :class:`ConfigError` naming it."""
        return config_from_dict(cls, values)

    def decoder_distribution(self, modality: str) -> str:
        return (self.decoders_dist or {}).get(modality, "normal")

    def decoder_params(self, modality: str) -> dict[str, float]:
        return dict((self.decoder_dist_params or {}).get(modality, {}))

    def likelihood_rescale(self, modality: str) -> float:
        """lambda_m: 1 without rescaling; the given factor; or max_k |x_k| / |x_m| from input_dims."""
        if not self.uses_likelihood_rescaling:
            return 1.0
        if self.rescale_factors is not None:
            return float(self.rescale_factors.get(modality, 1.0))
        if self.input_dims is None:  # the data fill input_dims; a config checked before them may lack it
            raise ConfigError("uses_likelihood_rescaling needs input_dims (to compute default factors) or rescale_factors.")
        sizes = {m: math.prod(s) for m, s in self.input_dims.items()}
        return max(sizes.values()) / sizes[modality]

