"""Dicts with attribute access, the shape of every structured result in core (batches, model outputs)."""

from __future__ import annotations

from typing import Any

__all__ = ["AttrDict", "ModelOutput"]


class AttrDict(dict):
    """A dict whose keys are also attributes: ``out.z`` and ``out["z"]`` are the same."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class ModelOutput(AttrDict):
    """Returned by ``encode``, ``decode``, ``predict``, generation and the encoders/decoders."""
