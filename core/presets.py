"""Ready-made model and training settings, shipped as ``resources/presets/<model>.yaml``.

The workbench's Model page, the command line and the benchmarks read the same files, so the settings a
benchmark measured are the ones a user applies with one click. ``MMVAE_RESOURCES`` points at another
``resources/`` folder for an installed copy.
"""

from __future__ import annotations

import yaml

from core.resources import resources_dir

__all__ = ["SYNTHESIS_PRESET", "Preset", "resources_dir", "load_presets", "synthesis_preset", "recommended_start"]

SYNTHESIS_PRESET = "Synthesis"


class Preset(dict):
    """One preset: ``name``, ``description``, ``model`` (parameters) and ``training`` (TrainerConfig values)."""

    @property
    def name(self) -> str:
        return str(self.get("name", "?"))


def load_presets(model_name: str) -> list[Preset]:
    """The presets of ``model_name`` from ``resources/presets/<model>.yaml`` (none if there is no file).

    Raises ValueError naming the file when it is not a list of presets, so a broken file is reported
    instead of silently ignored.
    """
    path = resources_dir() / "presets" / f"{model_name}.yaml"
    if not path.is_file():
        return []
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"Preset file {path} is not valid YAML: {error}") from None
    items = payload.get("presets") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"Preset file {path} must hold a 'presets:' list of name/model/training entries.")
    presets = []
    for item in items:
        if not isinstance(item, dict) or "name" not in item:
            raise ValueError(f"Preset file {path}: every preset needs a name; got {item!r}.")
        presets.append(
            Preset(
                name=str(item["name"]),
                description=str(item.get("description", "")),
                model=dict(item.get("model") or {}),
                training=dict(item.get("training") or {}),
            )
        )
    return presets


def synthesis_preset(model_name: str) -> Preset | None:
    """The preset tuned for cross-modal synthesis (what the synthesis benchmark measures), if any."""
    return next((p for p in load_presets(model_name) if p.name == SYNTHESIS_PRESET), None)


def recommended_start() -> tuple[str, str] | None:
    """The (model, preset) the workbench selects first: the winner of ``benchmarks/synthesis_quality.py``
    on the demo, recorded with its evidence in ``resources/presets/recommended.yaml``; None without the file.

    Raises ValueError naming the file when it is malformed, so a broken file is reported.
    """
    path = resources_dir() / "presets" / "recommended.yaml"
    if not path.is_file():
        return None
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
        raise ValueError(f"{path} must name the recommended 'model:' (and its 'preset:').")
    return payload["model"], str(payload.get("preset", SYNTHESIS_PRESET))
