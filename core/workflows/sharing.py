"""Share a trained model: a run's bundle as a folder a model hub accepts, with a model card.

The library paper promises model sharing. A shared folder is the run's bundle (``model.safetensors`` and
``model_config.json``: weights and a validated JSON config, no pickle) plus what a reader of the hub page
needs to judge it:

* ``README.md``, the model card: a YAML front matter (``library_name``, ``tags``) that hubs read, then the
  model and its configuration, the data it was trained on (modalities, per-sample shapes, subjects per
  split, the preprocessing that a user must repeat) and the synthesis-quality verdict per modality, when
  the run has one (the Synthesize page or ``mmvae evaluate`` computes it), in the same plain words the
  workbench uses;
* ``run_config.yaml``: the run's resolved configuration, so imputation on another cohort reuses its grid;
* ``synthesis_verdicts.json`` when the run has verdicts.

The folder loads back with :func:`core.models.load`, which refuses a bundle whose format, software version
or model name this code does not know. Nothing is uploaded: publishing the folder is the user's step (for
example ``huggingface-cli upload``), so the workbench never needs the network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from core.models.base import BUNDLE_CONFIG, BUNDLE_WEIGHTS, check_bundle_compatible, read_bundle_config
from core.workflows.synthesis import VERDICT_CACHE as VERDICTS
from core.workflows.synthesis import stored_verdicts

__all__ = ["SharingError", "MODEL_CARD", "export_shared_model", "model_card"]

MODEL_CARD = "README.md"
RUN_CONFIG = "run_config.yaml"


class SharingError(ValueError):
    """A run that cannot be shared as asked; the message names the file and the fix."""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    lines = ["| setting | value |", "| --- | --- |"]
    lines += [f"| `{key}` | `{json.dumps(value, sort_keys=True)}` |" for key, value in rows]
    return lines


def model_card(bundle: Mapping[str, Any], run_config: Mapping[str, Any], split: Mapping[str, list[str]],
               status: Mapping[str, Any], verdicts: Mapping[str, Mapping[str, Any]] | None) -> str:
    """The README of a shared model (module docstring) from a run's files, already read."""
    name, config = str(bundle["model"]), dict(bundle["config"])
    input_dims = config.get("input_dims") or {}
    modalities = list(input_dims) if isinstance(input_dims, dict) else []
    front = {"library_name": "mmvae-workbench", "tags": ["multimodal-vae", "medical-imaging", "missing-modality-imputation", name.lower()]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {run_config.get('name', name)}: {name}", ""]
    lines += [
        f"A {name} multimodal variational autoencoder trained with mmvae-workbench {bundle.get('software_version', '?')}. "
        "It synthesizes the modalities a subject lacks from the ones it has.",
        "",
        "Load it with `core.models.load(folder)` (weights in safetensors, the configuration in JSON; no pickle).",
        "",
        "## Synthesis quality",
        "",
    ]
    if verdicts:
        lines += ["Leave-one-out on the run's held-out subjects, against the training subjects' mean image:", ""]
        lines += [f"- **{m}**: {v.get('text', v.get('short', '?'))}" for m, v in sorted(verdicts.items())]
    else:
        lines += ["Not measured: open the run on the workbench's Synthesize page (or run `mmvae evaluate`) before "
                  "sharing, so that readers know whether its synthesized volumes beat the mean image."]
    lines += ["", "## Data", ""]
    data = run_config.get("data") or {}
    lines.append(f"- Source: `{data.get('source', '?')}`")
    for m in modalities:
        lines.append(f"- {m}: per-sample shape {tuple(input_dims[m])}")
    if split:
        lines.append("- Subjects: " + ", ".join(f"{len(ids)} {part}" for part, ids in split.items()))
    if run_config.get("preprocessing"):
        lines += ["- Preprocessing (repeat it on new data; `run_config.yaml` holds it resolved):", "", "```yaml",
                  yaml.safe_dump(run_config["preprocessing"], sort_keys=True).strip(), "```"]
    lines += ["", "## Training", ""]
    lines.append(f"- Status: {status.get('status', '?')}, {status.get('epochs_completed', '?')} of {status.get('num_epochs', '?')} epochs")
    if status.get("best_validation_loss") is not None:
        lines.append(f"- Best validation loss: {status['best_validation_loss']:.6g}")
    lines += ["", "## Model configuration", ""]
    lines += _table(sorted((k, v) for k, v in config.items() if k != "input_dims"))
    return "\n".join(lines) + "\n"


def export_shared_model(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``run_dir``'s final model as a shareable folder ``out_dir`` (module docstring); returns it.

    ``out_dir`` must not exist yet (nothing is overwritten); the folder is assembled beside it and renamed,
    so a failure leaves nothing half-written.
    """
    run, out = Path(run_dir), Path(out_dir)
    bundle_dir = run / "final_model"
    if not (bundle_dir / BUNDLE_CONFIG).is_file():
        raise SharingError(f"{run} has no final model ({bundle_dir / BUNDLE_CONFIG} is missing); finish or resume the run first.")
    bundle = read_bundle_config(bundle_dir)
    check_bundle_compatible(bundle, bundle_dir)
    if not (bundle_dir / BUNDLE_WEIGHTS).is_file():
        raise SharingError(f"{bundle_dir / BUNDLE_WEIGHTS} is missing; the run's final model is incomplete.")
    if out.exists():
        raise SharingError(f"{out} already exists; choose a new folder for the shared model (nothing is overwritten).")
    if not out.parent.is_dir():
        raise SharingError(f"{out.parent} does not exist; create it or choose another place for the shared model.")
    run_config = _read_yaml(run / "config.yaml")
    current = stored_verdicts(run)  # only verdicts measured on this final model, never a stale cache
    verdicts = {m: v.to_dict() for m, v in current.items()} if current else None
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in (BUNDLE_CONFIG, BUNDLE_WEIGHTS):
            shutil.copy2(bundle_dir / name, staging / name)
        if (run / "config.yaml").is_file():
            shutil.copy2(run / "config.yaml", staging / RUN_CONFIG)
        if verdicts:
            (staging / VERDICTS).write_text(json.dumps(verdicts, indent=2, sort_keys=True), encoding="utf-8")
        card = model_card(bundle, run_config, _read_json(run / "split.json"), _read_json(run / "status.json"), verdicts)
        (staging / MODEL_CARD).write_text(card, encoding="utf-8")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out

