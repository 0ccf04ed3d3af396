"""Where the files the package ships live: ``resources/`` beside ``core/`` (in a checkout and in an installed
wheel alike), or the folder ``MMVAE_RESOURCES`` names. It holds ``presets/``, ``styles/``, ``icons/`` and
``templates/`` (the demo phantom's anatomy)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resources_dir"]


def resources_dir() -> Path:
    """The folder holding ``presets/``, ``styles/``, ``icons/`` and ``templates/``."""
    env = os.environ.get("MMVAE_RESOURCES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "resources"
