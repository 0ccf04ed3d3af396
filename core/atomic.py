"""Atomic file writes: write beside the target under a temporary name, then rename onto it.

A crash, a cancel or a full disk never leaves a half-written checkpoint, config or export behind;
readers see the old file or the new one, nothing in between.

The path rules every writer shares live here too: :func:`check_safe_name` is the one rule for subject ids
and modality names (they become file and folder names), :func:`ensure_inside` refuses a path that resolves
outside its output folder, and :func:`load_tensors` reads weights from safetensors only (never pickle), with
a one-line error naming the file when it is anything else.
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_tensors",
    "load_tensors",
    "WeightsFileError",
    "UnsafePathError",
    "SAFE_NAME_RULE",
    "is_safe_name",
    "check_safe_name",
    "ensure_inside",
    "DiskFullError",
    "disk_full_in_one_line",
]

# Letters, digits and ". _ + -" (a space inside too), starting with a letter or digit: a name that is
# one path component on every file system, never '..', never absolute, never hidden.
_SAFE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._+-]{0,126}[A-Za-z0-9._+-])?")
SAFE_NAME_RULE = ("1-128 letters, digits, '.', '_', '+', '-' or inner spaces, starting with a letter or digit "
                  "(no '/', '\\', '..' or absolute paths)")


class UnsafePathError(ValueError):
    """A name or path would make a writer leave its output folder."""


class WeightsFileError(ValueError):
    """A weights file is not a readable safetensors file."""


class DiskFullError(OSError):
    """The disk (or the file size limit) ran out while writing; the previous files are kept."""


def is_safe_name(name: str) -> bool:
    return isinstance(name, str) and _SAFE_NAME.fullmatch(name) is not None and ".." not in name


def check_safe_name(kind: str, name: str) -> str:
    """``name`` if it follows :data:`SAFE_NAME_RULE`, else :class:`UnsafePathError` naming ``kind``."""
    if not is_safe_name(name):
        raise UnsafePathError(f"{kind} {name!r} is not a safe name. Fix: use {SAFE_NAME_RULE}.")
    return name


def ensure_inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` if it resolves (symlinks followed) inside ``root``; otherwise :class:`UnsafePathError`."""
    path, root = Path(path), Path(root)
    resolved, base = path.resolve(), root.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafePathError(f"Refusing to write {path}: it resolves to {resolved}, outside the output folder {root}.")
    return path


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _disk_full(error: OSError | SafetensorError, path: Path) -> DiskFullError | None:
    """The one-line error for a full disk (or file size limit); safetensors reports it as 'os error 28'."""
    code = error.errno if isinstance(error, OSError) else next(
        (c for c in _FULL if f"(os error {c})" in str(error)), None)
    if code in _FULL:
        return DiskFullError(code, f"No space left to write {path} ({os.strerror(code)}); the "
                             "previous files are kept. Fix: free disk space, then try again")
    return None


@contextmanager
def disk_full_in_one_line(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk met while writing ``path`` (a file, or a folder staged elsewhere) into :class:`DiskFullError`
    naming ``path``; the outermost writer names what the user asked for."""
    try:
        yield
    except (OSError, SafetensorError) as error:
        full = _disk_full(error, Path(path))
        if full is None:
            raise
        raise full from None

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")


def _suffix_of(path: Path) -> str:
    lowered = path.name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if lowered.endswith(suffix):
            return path.name[-len(suffix) :]
    return path.suffix


@contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers pick the right format); rename it
    onto ``path`` if the block succeeds, remove it if the block raises."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix_of(path)
    stem = path.name[: -len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.partial{suffix}")
    try:
        with disk_full_in_one_line(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, payload: Any, *, overwrite: bool = True, sort_keys: bool = False) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")
    return Path(path)


def atomic_save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """A safetensors file (tensors copied to contiguous CPU memory first), written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
    return Path(path)


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; any other file (a pickle, a truncated copy) is refused unread."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {path} does not exist. Fix: point to a run folder or model bundle.")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, ValueError, OSError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsFileError(f"{path} is not a safetensors weights file ({reason}). Fix: use the "
                               "model.safetensors a run wrote; pickled (.pt/.pth/.ckpt) weights are never loaded.") from None
