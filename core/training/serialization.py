"""Checkpoint state without pickle: tensors go to safetensors, everything else to JSON, atomically.

``split_tensors`` replaces every tensor in a nested structure (an optimizer state dict, RNG states)
by a ``{"__tensor__": key}`` placeholder and collects the tensors; ``merge_tensors`` undoes it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from core.atomic import atomic_write_text, load_tensors

__all__ = ["split_tensors", "merge_tensors", "save_state", "load_state", "atomic_write_text", "replace_directory"]


def split_tensors(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(value, Mapping):
            return {"__dict__": [[walk(k, f"{key}.k{i}") if isinstance(k, torch.Tensor) else k, walk(v, f"{key}.{i}")]
                                 for i, (k, v) in enumerate(value.items())]}
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, f"{key}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(value)]
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        raise TypeError(f"Cannot serialise {type(value).__name__} at '{key}' without pickle.")

    return walk(obj, prefix or "root"), tensors


def merge_tensors(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(merge_tensors(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {(tuple(k) if isinstance(k, list) else k): merge_tensors(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [merge_tensors(v, tensors) for v in obj]
    return obj


def save_state(state: Any, folder: Path, name: str) -> None:
    """``name.json`` (structure) + ``name.safetensors`` (tensors) inside ``folder``."""
    structure, tensors = split_tensors(state)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(structure))


def load_state(folder: Path, name: str) -> Any:
    structure = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    tensors = load_tensors(folder / f"{name}.safetensors")
    return merge_tensors(structure, tensors)


def replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written ``staging`` folder to ``target``; an existing target is swapped out first."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
