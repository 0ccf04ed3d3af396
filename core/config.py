"""Configuration machinery every layer shares: strict pydantic settings, problems with their paths.

A config class is a pydantic dataclass (or ``BaseModel``) with :data:`CONFIG_DICT`: a misspelt key is an error
that names it and suggests the closest valid key, instead of being silently ignored. Fields carry a description
(the GUI's tooltip); :func:`advanced` marks those the generated forms tuck away.

Errors are :class:`ConfigProblem` objects (the dotted path of the field, what is wrong, the closest valid key),
collected into one :class:`ConfigError`, so a caller reports every problem at once and the GUI marks the field
from its path. This module is the bottom layer: it imports nothing from ``core``.

>>> from pydantic import Field
>>> from pydantic.dataclasses import dataclass
>>> @dataclass(config=CONFIG_DICT)
... class Example:
...     latent_dim: int = Field(10, ge=1)
>>> try:
...     config_from_dict(Example, {"latent_dimm": 3})
... except ConfigError as error:
...     print(error.problems[0])
latent_dimm: is not a parameter of Example. Did you mean 'latent_dim'?
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError, create_model

__all__ = [
    "CONFIG_DICT",
    "ConfigProblem",
    "ConfigError",
    "advanced",
    "format_problems",
    "config_from_dict",
    "config_to_dict",
    "config_schema",
    "field_problems",
    "fields_named_in",
]

#: Unknown keys are errors; assigning a bad value to a built config is refused too.
CONFIG_DICT = ConfigDict(extra="forbid", validate_assignment=True)
ConfigT = TypeVar("ConfigT")


def advanced(description: str) -> dict[str, Any]:
    """Field keywords marking an option as advanced in the generated forms."""
    return {"description": description, "json_schema_extra": {"advanced": True}}


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a configuration: where (``model.latent_dimm``; empty for the whole), what, and the
    closest valid key when the key itself is unknown."""

    path: str
    message: str
    suggestion: str | None = None

    @property
    def text(self) -> str:
        """The message with its suggestion (``is not a parameter of X. Did you mean 'y'?``)."""
        return self.message + (f" Did you mean '{self.suggestion}'?" if self.suggestion else "")

    @property
    def key(self) -> str:
        """The last part of the path: the field a form shows (``model.k`` -> ``k``)."""
        return self.path.rsplit(".", 1)[-1]

    def under(self, section: str) -> ConfigProblem:
        """The same problem seen from the enclosing section (``latent_dimm`` -> ``model.latent_dimm``)."""
        return replace(self, path=f"{section}.{self.path}" if self.path else section)

    def __str__(self) -> str:
        return f"{self.path}: {self.text}" if self.path else self.text


class ConfigError(ValueError):
    """An invalid configuration; ``problems`` lists every :class:`ConfigProblem` found, not only the first."""

    def __init__(self, message: str, problems: Sequence[ConfigProblem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [ConfigProblem("", message)]

    @classmethod
    def of(cls, problems: Sequence[ConfigProblem], where: str = "the configuration") -> ConfigError:
        """One error reporting all ``problems``, one line each."""
        return cls(format_problems(problems, where), problems)

    def prefixed(self, section: str) -> list[ConfigProblem]:
        """The problems with their paths under ``section``."""
        return [problem.under(section) for problem in self.problems]


def format_problems(problems: Sequence[ConfigProblem], where: str = "the configuration") -> str:
    """All problems at once, one line each, led by its dotted path."""
    return f"{len(problems)} problem(s) in {where}:\n" + "\n".join(f"  {problem}" for problem in problems)


def _field_names(cls: type) -> list[str]:
    return list(_declared(cls)) or [f.name for f in fields(cls)]


def fields_named_in(message: str, keys: Iterable[str]) -> list[str]:
    """The field names a message mentions (``'latent_dim'``, ``k = 3 but``, ``rescale_factors['T1']``)."""
    found = []
    for key in keys:
        pattern = rf"(?:'{re.escape(key)}'|\b{re.escape(key)}\b(?=\s*(?:=|\[|:|\s+is|\s+must|\s+but|\s+names)))"
        if re.search(pattern, message):
            found.append(key)
    return found


def _declared(cls: type) -> dict[str, Any]:
    """Field name -> pydantic ``FieldInfo`` of a config class ({} for anything else)."""
    return dict(getattr(cls, "model_fields", None) or getattr(cls, "__pydantic_fields__", None) or {})


def _section_class(cls: type, loc: Sequence[Any]) -> type:
    """The config class that holds the key at ``loc`` (``preprocessing.target_shap`` -> PreprocessingConfig)."""
    for part in loc[:-1]:
        annotation = getattr(_declared(cls).get(part), "annotation", None)
        if not (isinstance(annotation, type) and _declared(annotation)):
            break
        cls = annotation
    return cls


def _problems(cls: type, error: ValidationError, names: Sequence[str]) -> list[ConfigProblem]:
    """A :class:`ConfigProblem` for every error pydantic found. A check across fields has no location in
    pydantic; its path is the first field its message names, so the GUI can still mark that field."""
    problems = []
    for item in error.errors():
        loc = [p for p in item.get("loc", ()) if p != "__root__"]
        path = ".".join(str(p) for p in loc)
        kind = item.get("type")
        if kind in ("unexpected_keyword_argument", "extra_forbidden"):
            owner = _section_class(cls, loc)
            valid = list(names) if owner is cls else list(_declared(owner))
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            message = f"is not a parameter of {owner.__name__}." + ("" if hint else f" Valid keys: {', '.join(valid)}.")
            problems.append(ConfigProblem(path, message, hint[0] if hint else None))
        elif kind in ("missing_argument", "missing"):
            problems.append(ConfigProblem(path, f"is required by {cls.__name__}."))
        else:
            message = item.get("msg", "").removeprefix("Value error, ")
            if path:
                problems.append(ConfigProblem(path, f"{message} (got {item.get('input')!r})"))
            else:
                named = fields_named_in(message, names)
                problems.append(ConfigProblem(named[0] if named else "", message))
    return problems


def _sentence(problem: ConfigProblem) -> str:
    """``'latent_dimm' is not a parameter of …`` for an unknown or missing key, ``'beta': …`` otherwise."""
    if problem.message.startswith(("is not a parameter of ", "is required by ")):
        return f"'{problem.path}' {problem.text}"
    return f"'{problem.path}': {problem.text}" if problem.path else problem.text


def config_from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """Build ``cls`` from a plain mapping (YAML/JSON); a :class:`ConfigError` lists every problem."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{cls.__name__} expects a mapping of parameters, got {type(values).__name__}.")
    try:
        return cls(**dict(values))
    except ValidationError as error:
        problems = _problems(cls, error, _field_names(cls))
        raise ConfigError(f"Invalid {cls.__name__}: " + "; ".join(_sentence(p) for p in problems), problems) from None


def field_problems(cls: type, values: Mapping[str, Any], exclude: Collection[str] = ()) -> list[ConfigProblem]:
    """Check each of ``values`` against its field of ``cls`` (type, range, unknown key), leaving out the
    ``exclude`` fields and the checks across fields: what can be known before the excluded fields are.

    A model's ``n_modalities`` and ``input_dims`` come from the data; this checks the rest of a model section
    before the data are loaded, without inventing values for them.
    """
    if not isinstance(values, Mapping):
        return [ConfigProblem("", f"{cls.__name__} expects a mapping of parameters, got {type(values).__name__}.")]
    kept = {name: (info.annotation, info) for name, info in _declared(cls).items() if name not in exclude}
    partial = create_model(cls.__name__, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **kept)
    try:
        partial(**dict(values))
    except ValidationError as error:
        return _problems(cls, error, _field_names(cls))
    return []


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return TypeAdapter(type(config)).dump_python(config, mode="json")


def config_schema(cls: type) -> dict[str, Any]:
    """JSON schema of a config class: types, defaults, ranges, descriptions, advanced flags."""
    return TypeAdapter(cls).json_schema()
