"""The run configuration: one YAML, parsed once into a typed :class:`RunConfig`.

Its sections are typed where they are owned: ``data`` (:class:`~core.data.sources.DataConfig`, holding the typed
``demo`` :class:`~core.data.demo.DemoSpec` and ``preprocessing``
:class:`~core.data.preprocessing.config.PreprocessingConfig`), ``model`` (:class:`ModelSection`: a registered model's
name and settings), ``training`` (:class:`~core.training.TrainerConfig`) and ``monitoring``
(:class:`~core.training.monitoring.MonitoringConfig`). Every problem of every section is reported at once, each a
:class:`~core.config.ConfigProblem` with its dotted path (``model.latent_dimm``).

A model's ``n_modalities`` and ``input_dims`` come from the data. Parsing checks every other model setting field
by field; :meth:`ModelSection.bind` builds the model's config once the modalities (and, after loading, their
shapes) are known, with the checks that need them. Nothing is checked against invented values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.config import ConfigError, ConfigProblem, config_from_dict, config_to_dict, field_problems
from core.data.sources import DataConfig
from core.models.base import MultimodalVAE
from core.models.config import BaseMultiVAEConfig
from core.models.registry import get_model_class
from core.training.config import TrainerConfig
from core.training.monitoring import MonitoringConfig

__all__ = [
    "DATA_FILLED_KEYS",
    "ModelSection",
    "RunConfig",
    "parse_run_config",
    "load_run_config",
    "run_config_to_dict",
]

#: Model settings the data fill in; a run YAML must not set them.
DATA_FILLED_KEYS = ("n_modalities", "input_dims")
_SECTIONS = ("name", "data", "model", "training", "monitoring")
_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ModelSection:
    """A registered model and its settings as given (checked field by field; the data fill the rest)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def model_class(self) -> type[MultimodalVAE]:
        return get_model_class(self.name)

    def bind(self, modalities: Sequence[str], input_dims: Mapping[str, Sequence[int]] | None = None) -> BaseMultiVAEConfig:
        """The model's config with the data-filled fields: the modalities, and their input shapes once the data
        are prepared (None before). Raises a :class:`ConfigError` whose problems are under ``model.``."""
        values = {"n_modalities": len(modalities), "input_dims": None if input_dims is None else dict(input_dims),
                  **self.params}
        try:
            return config_from_dict(self.model_class.config_class, values)
        except ConfigError as error:
            raise ConfigError.of(error.prefixed("model"), "the model settings") from None


@dataclass
class RunConfig:
    """A validated run description: ``name`` and the typed sections (see the module docstring)."""

    name: str
    data: DataConfig
    model: ModelSection
    training: TrainerConfig
    monitoring: MonitoringConfig | None = None

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def model_params(self) -> dict[str, Any]:
        return self.model.params


def _section(values: Mapping[str, Any], key: str, problems: list[ConfigProblem], required: bool = True) -> dict[str, Any]:
    section = values.get(key)
    if section is None:
        if required:
            problems.append(ConfigProblem(key, f"is required: the run config needs a '{key}' section."))
        return {}
    if not isinstance(section, Mapping):
        problems.append(ConfigProblem(key, f"must be a mapping of settings, got {type(section).__name__}."))
        return {}
    return dict(section)


def _model_section(values: dict[str, Any], problems: list[ConfigProblem]) -> ModelSection | None:
    name = values.pop("name", None)
    if not name:
        problems.append(ConfigProblem("model.name", "is required (one of the registered models, e.g. MVAE)."))
        return None
    try:
        cls = get_model_class(str(name))
    except ConfigError as error:
        problems.extend(error.prefixed("model.name"))
        return None
    for key in DATA_FILLED_KEYS:
        if key in values:
            problems.append(ConfigProblem(f"model.{key}", "is set from the data; remove it from the config."))
    found = field_problems(cls.config_class, {k: v for k, v in values.items() if k not in DATA_FILLED_KEYS},
                           exclude=DATA_FILLED_KEYS)
    problems.extend(p.under("model") for p in found)
    return ModelSection(cls.name, {k: v for k, v in values.items() if k not in DATA_FILLED_KEYS}) if not found else None


def parse_run_config(values: Mapping[str, Any]) -> RunConfig:
    """Validate a run description; every problem is reported at once, each under its path (``model.warmpu``)."""
    if not isinstance(values, Mapping):
        raise ConfigError("A run config must be a YAML mapping with data, model and training sections.")
    problems: list[ConfigProblem] = []

    def checked(section: str, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except ConfigError as error:  # a section's own keys first, then those of its subsections
            problems.extend(sorted(error.prefixed(section), key=lambda p: p.path.count(".")))
            return None

    problems.extend(ConfigProblem(key, "is not a section of a run config (name, data, model, training, monitoring).")
                    for key in sorted(set(values) - set(_SECTIONS)))
    name = str(values.get("name") or "run")
    if not _NAME.fullmatch(name):
        problems.append(ConfigProblem("name", f"'{name}' may only contain letters, digits, '.', '_' and '-'."))
    data = checked("data", lambda: config_from_dict(DataConfig, _section(values, "data", problems)))
    model = _model_section(_section(values, "model", problems), problems)
    training = checked("training", lambda: config_from_dict(TrainerConfig, _section(values, "training", problems, False)))
    monitoring = checked("monitoring", lambda: config_from_dict(MonitoringConfig, values["monitoring"])
                         if values.get("monitoring") else None)
    if problems:
        raise ConfigError.of(problems, "the run config")
    return RunConfig(name=name, data=data, model=model, training=training, monitoring=monitoring)


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run YAML."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_run_config(values or {})


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The run YAML's content (what ``parse_run_config`` reads back to an equal config)."""
    values = {
        "name": config.name,
        "data": config_to_dict(config.data),
        "model": {"name": config.model.name, **config.model.params},
        "training": config_to_dict(config.training),
    }
    if config.monitoring is not None:
        values["monitoring"] = config_to_dict(config.monitoring)
    return values
