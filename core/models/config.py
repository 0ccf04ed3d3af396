"""Model configurations: typed, validated, serialisable, and the source of the GUI's forms.

Every config is a pydantic dataclass with ``extra='forbid'``: a misspelt key is an error that names
it (and suggests the closest valid key) instead of being silently ignored. Fields carry a description
(shown as tooltip) and ``json_schema_extra={"advanced": True}`` marks those the GUI tucks away.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

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

MODEL_CONFIG_DICT = ConfigDict(extra="forbid", validate_assignment=True)
ConfigT = TypeVar("ConfigT")


def advanced(description: str) -> dict[str, Any]:
    """Field keywords marking an option as advanced in the generated forms."""
    return {"description": description, "json_schema_extra": {"advanced": True}}


class ConfigError(ValueError):
    """An invalid configuration; the message names the key, the value and what is allowed.

    ``problems`` lists every ``(dotted key, what is wrong)`` found, so that a caller validating several
    sections can report them all at once (:func:`format_problems`).
    """

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [("", message)]

    def prefixed(self, section: str) -> list[tuple[str, str]]:
        """The problems with their keys under ``section`` (``latent_dimm`` -> ``model.latent_dimm``)."""
        return [(f"{section}.{key}" if key else section, text) for key, text in self.problems]


def format_problems(problems: Sequence[tuple[str, str]], where: str = "the configuration") -> str:
    """All problems at once, one line each, led by its dotted key."""
    lines = [f"  {key}: {text}" if key else f"  {text}" for key, text in problems]
    return f"{len(problems)} problem(s) in {where}:\n" + "\n".join(lines)


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
        if self.uses_likelihood_rescaling and self.rescale_factors is None and self.input_dims is None:
            raise ValueError("uses_likelihood_rescaling needs input_dims (to compute default factors) or rescale_factors.")
        return self

    @property
    def modalities(self) -> list[str]:
        return list(self.input_dims or {})

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
        sizes = {m: math.prod(s) for m, s in (self.input_dims or {}).items()}
        return max(sizes.values()) / sizes[modality]


def _field_names(cls: type) -> list[str]:
    if hasattr(cls, "model_fields"):  # pydantic BaseModel
        return list(cls.model_fields)
    return [f.name for f in fields(cls)]


def _validation_problems(cls: type, error: ValidationError) -> list[tuple[str, str, str]]:
    """``(key, what is wrong, the sentence naming the key)`` for every error pydantic found, not the first."""
    names = _field_names(cls)
    problems = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "__root__")
        if item.get("type") in ("unexpected_keyword_argument", "extra_forbidden"):
            hint = difflib.get_close_matches(loc, names, n=1)
            suggestion = f" Did you mean '{hint[0]}'?" if hint else f" Valid keys: {', '.join(names)}."
            text = f"is not a parameter of {cls.__name__}.{suggestion}"
            problems.append((loc, text, f"'{loc}' {text}"))
        elif item.get("type") in ("missing_argument", "missing"):
            text = f"is required by {cls.__name__}."
            problems.append((loc, text, f"'{loc}' {text}"))
        else:
            msg = item.get("msg", "").removeprefix("Value error, ")
            text = f"{msg} (got {item.get('input')!r})" if loc else msg
            problems.append((loc, text, f"'{loc}': {text}" if loc else text))
    return problems


def config_from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """Build ``cls`` from a plain mapping (YAML/JSON), with errors that name the offending key."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{cls.__name__} expects a mapping of parameters, got {type(values).__name__}.")
    try:
        return cls(**dict(values))
    except ValidationError as error:
        problems = _validation_problems(cls, error)
        message = f"Invalid {cls.__name__}: " + "; ".join(line for _, _, line in problems)
        raise ConfigError(message, [(loc, text) for loc, text, _ in problems]) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return TypeAdapter(type(config)).dump_python(config, mode="json")


def config_schema(cls: type) -> dict[str, Any]:
    """JSON schema of a config class: types, defaults, ranges, descriptions, advanced flags."""
    return TypeAdapter(cls).json_schema()
