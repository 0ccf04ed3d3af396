"""The model registry: models register themselves where they are defined, and the command line and
the GUI build them by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.models.config import ConfigError, config_from_dict

if TYPE_CHECKING:
    from core.models.base import MultimodalVAE

__all__ = ["register_model", "available", "get_model_class", "build_model"]

_REGISTRY: dict[str, type[MultimodalVAE]] = {}


def register_model(cls: type[MultimodalVAE]) -> type[MultimodalVAE]:
    """Class decorator adding a model under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"A model named '{cls.name}' is already registered.")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of every registered model."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[MultimodalVAE]:
    try:
        return _REGISTRY[name]
    except KeyError:
        lowered = {k.lower(): k for k in _REGISTRY}
        if name.lower() in lowered:
            return _REGISTRY[lowered[name.lower()]]
        raise ConfigError(f"Unknown model '{name}'. Available models: {', '.join(available())}.") from None


def build_model(name: str, config: Any, **modules: Any) -> MultimodalVAE:
    """Build a registered model from its config (a config instance or a plain mapping) and optional modules."""
    cls = get_model_class(name)
    if isinstance(config, Mapping):
        config = config_from_dict(cls.config_class, config)
    return cls(config, **modules)
