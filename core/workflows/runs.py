"""Runs: one YAML describes data, model and training; one folder holds everything a run produced.

The YAML (what ``mmvae train`` takes and the GUI saves)::

    name: demo-mvae
    data:
      source: demo                 # or a folder, BIDS dataset, manifest.csv or .h5 cache
      demo: {n_subjects: 48, shape: [32, 32, 32]}
      modalities: [T1, T2]         # optional: a subset of the cohort's modalities
      split: {fractions: [0.7, 0.15, 0.15], seed: 0}
    model:
      name: MVAE                   # any name in core.models.available()
      latent_dim: 16               # the model's config; n_modalities and input_dims come from the data
    training:
      num_epochs: 10               # core.training.TrainerConfig

The run folder: ``config.yaml`` (fully resolved), ``command.txt`` (the command line that reproduces it
headless), ``split.json`` (subject ids per split), ``environment.json``, plus what the trainer writes
(``metrics.csv``, ``status.json``, ``checkpoints/``, ``final_model/``).

One writer at a time: :func:`run_lock` holds an exclusive OS lock on ``<run>/.mmvae.lock`` for the whole of
a train or resume (CLI and GUI alike), and ``<run>/lock.json`` names the owner (host, pid, command), so a
second writer is refused with a message naming it. The lock dies with its process, which is how a run left
"running" by a kill -9 is recognised as interrupted (and resumable) rather than running forever. Stale
staging folders and temporary files of a killed checkpoint write are removed when a writer starts.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shlex
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from filelock import FileLock, Timeout

import core
from core.atomic import atomic_write_text
from core.config import config_from_dict, config_to_dict
from core.data.dataset import MultimodalBaseDataset, split_by_subject
from core.data.sources import DataConfig, LoadedData, load_data, resolved_preprocessing
from core.models.base import MultimodalVAE
from core.run_config import RunConfig, load_run_config, parse_run_config, run_config_to_dict
from core.training.callbacks import Callback
from core.training.checkpoint import latest_checkpoint
from core.training.config import TrainerConfig
from core.training.control import TrainingControl
from core.training.distributed import barrier, current_context
from core.training.divergence import DivergenceCheck
from core.training.monitoring import monitoring_callbacks
from core.training.trainer import Trainer, TrainingResult

__all__ = [
    "RunConfig",
    "RunSummary",
    "load_run_config",
    "parse_run_config",
    "run_config_to_dict",
    "build_model",
    "split_dataset",
    "train_run",
    "load_run_data",
    "resume_run",
    "list_runs",
    "read_run_summary",
    "default_run_dir",
    "run_lock",
    "run_owner",
    "RunBusyError",
]

_LOCK_NAME, _OWNER_NAME = ".mmvae.lock", "lock.json"


class RunBusyError(RuntimeError):
    """Another process (or window) is writing this run folder."""


def _lock_of(run_dir: Path) -> FileLock:
    return FileLock(run_dir / _LOCK_NAME, thread_local=False)


@contextmanager
def run_lock(run_dir: str | Path, purpose: str) -> Iterator[None]:
    """Hold the run folder's exclusive lock while writing it; refuse at once if someone else holds it."""
    run_dir = Path(run_dir)
    lock = _lock_of(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK):  # read-only permissions or mount (root is refused on a mount too)
            raise PermissionError(errno.EACCES, "read-only")
        lock.acquire(timeout=0)
    except Timeout:
        owner = _read_owner(run_dir)
        who = (f"{owner.get('purpose', 'a writer')} by pid {owner.get('pid', '?')} on {owner.get('host', '?')} since "
               f"{owner.get('started', '?')} ({owner.get('command', '')})" if owner else "another process")
        raise RunBusyError(f"{run_dir} is in use: {who}. Fix: wait for it to finish or stop it, or choose another "
                           "folder.") from None
    except OSError as error:
        if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise PermissionError(error.errno, f"{run_dir} is read-only: {purpose} needs to write into it. Fix: make the "
                              "folder writable, or copy the run to a writable folder and use the copy") from None
    try:
        atomic_write_text(run_dir / _OWNER_NAME, json.dumps({
            "purpose": purpose, "pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(shlex.quote(a) for a in sys.argv), "started": datetime.now(timezone.utc).isoformat(),
        }, indent=2) + "\n")
        _clean_stale_files(run_dir)
        yield
    finally:
        (run_dir / _OWNER_NAME).unlink(missing_ok=True)
        lock.release()


def _writer_lock(run_dir: Path, purpose: str) -> Any:
    """The run lock on rank 0 (the only process that writes the folder); nothing on the other ranks."""
    return run_lock(run_dir, purpose) if current_context().is_main else nullcontext()


def _read_owner(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / _OWNER_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


def run_owner(run_dir: str | Path) -> dict[str, Any] | None:
    """Who writes ``run_dir`` now (its lock.json), or None when no live process holds the lock."""
    run_dir = Path(run_dir)
    if not (run_dir / _LOCK_NAME).exists():
        return None
    lock = _lock_of(run_dir)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return _read_owner(run_dir) or {"purpose": "unknown"}
    except OSError:  # a read-only folder: nobody can be writing it
        return None
    lock.release()
    return None


def _clean_stale_files(run_dir: Path) -> None:
    """Staging folders and partial files a killed writer left (only called while holding the lock). A folder
    a kill caught while swapped aside (``.epoch-0003.old``, its replacement not yet in place) is put back."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for stale in folder.iterdir():
            swapped_out = folder / stale.name[1:].removesuffix(".old")
            if stale.name.startswith(".") and stale.name.endswith(".old") and not swapped_out.exists():
                os.replace(stale, swapped_out)
            elif stale.name.startswith(".") and (stale.name.endswith((".staging", ".old")) or ".partial" in stale.name):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)


def load_run_data(config: RunConfig) -> LoadedData:
    """The run's data, prepared once; under torchrun rank 0 prepares it first (it may write the demo cohort
    or a cache)."""
    context = current_context()
    if not context.enabled:
        return load_data(config.data)
    if context.is_main:
        loaded = load_data(config.data)
        barrier(context)
        return loaded
    barrier(context)
    return load_data(config.data)


def build_model(config: RunConfig, dataset: MultimodalBaseDataset) -> MultimodalVAE:
    """The model the config asks for, sized from the data (n_modalities, input_dims)."""
    model_config = config.model.bind(dataset.modalities, dataset.input_dims)
    torch.manual_seed(config.training.seed)
    return config.model.model_class(model_config)


def split_dataset(config: RunConfig, dataset: MultimodalBaseDataset) -> tuple[MultimodalBaseDataset, ...]:
    split = config.data.split
    return split_by_subject(dataset, split.fractions, seed=split.seed)


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    """``<root>/<name>-<date>-<time>``: where a run named ``name`` goes when no folder is given."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{name}-{stamp}"


def _environment() -> dict[str, Any]:
    return {
        "software_version": core.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "created": datetime.now(timezone.utc).isoformat(),
    }


def _write_run_files(run_dir: Path, config: RunConfig, loaded: LoadedData, parts: tuple[MultimodalBaseDataset, ...]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = run_config_to_dict(config)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    command = f"mmvae train {shlex.quote(str(run_dir / 'config.yaml'))} --out {shlex.quote(str(run_dir))}"
    atomic_write_text(
        run_dir / "command.txt",
        "# Reproduce this run headless (same data, same seed, same result):\n" + command + "\n"
        "# Resume it after a stop or a crash:\n" + f"mmvae resume {shlex.quote(str(run_dir))}\n",
    )
    names = ("train", "validation", "test")
    split = {names[i]: part.ids for i, part in enumerate(parts)}
    split["source"] = str(loaded.source)
    atomic_write_text(run_dir / "split.json", json.dumps(split, indent=1) + "\n")
    atomic_write_text(run_dir / "environment.json", json.dumps(_environment(), indent=2) + "\n")


def _subset_by_ids(dataset: MultimodalBaseDataset, ids: Iterable[str]) -> MultimodalBaseDataset:
    position = {subject: i for i, subject in enumerate(dataset.ids)}
    missing = [s for s in ids if s not in position]
    if missing:
        raise ValueError(f"Subjects {missing[:5]} of the run's split are no longer in the data; the data changed since the run started.")
    return dataset.subset([position[s] for s in ids])


def train_run(
    config: RunConfig,
    run_dir: str | Path,
    callbacks: Iterable[Callback] = (),
    control: TrainingControl | None = None,
    loaded: LoadedData | None = None,
) -> TrainingResult:
    """Load the data, build the model, write the run folder and train."""
    run_dir = Path(run_dir)
    with _writer_lock(run_dir, "train"):
        if latest_checkpoint(run_dir) is not None:
            raise FileExistsError(f"{run_dir} already holds a run; resume it (mmvae resume {run_dir}) or choose another folder.")
        loaded = loaded or load_run_data(config)
        resolved = config_from_dict(DataConfig, {**config_to_dict(config.data), "preprocessing": resolved_preprocessing(loaded)})
        config = replace(config, data=resolved)  # the caller's config stays as given
        parts = split_dataset(config, loaded.dataset)
        model = build_model(config, loaded.dataset)
        context = current_context()
        if context.is_main:
            _write_run_files(run_dir, config, loaded, parts)
        barrier(context)
        callbacks = [DivergenceCheck(), *callbacks, *monitoring_callbacks(config.monitoring)]  # first: its saved state keeps its place
        trainer = Trainer(model, parts[0], parts[1] if len(parts) > 1 else None, config.training, callbacks, run_dir, control)
        return trainer.train()


def resume_run(
    run_dir: str | Path,
    callbacks: Iterable[Callback] = (),
    control: TrainingControl | None = None,
    num_epochs: int | None = None,
    loaded: LoadedData | None = None,
) -> TrainingResult:
    """Continue a stopped, cancelled or crashed run from its latest checkpoint, on the same split."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml). Fix: pass the folder `mmvae train` wrote.")
    with _writer_lock(run_dir, "resume"):
        config = load_run_config(run_dir / "config.yaml")
        if num_epochs is not None:
            config = replace(config, training=config_from_dict(
                TrainerConfig, {**config_to_dict(config.training), "num_epochs": num_epochs}))
            if current_context().is_main:
                atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(run_config_to_dict(config), sort_keys=False))
        if latest_checkpoint(run_dir) is None:
            raise FileNotFoundError(f"{run_dir} has no complete checkpoint to resume from.")
        loaded = loaded or load_run_data(config)
        split = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))
        train = _subset_by_ids(loaded.dataset, split["train"])
        validation = _subset_by_ids(loaded.dataset, split["validation"]) if split.get("validation") else None
        model = build_model(config, loaded.dataset)
        callbacks = [DivergenceCheck(), *callbacks, *monitoring_callbacks(config.monitoring)]  # first: its saved state keeps its place
        trainer = Trainer(model, train, validation, config.training, callbacks, run_dir, control)
        return trainer.train(resume_from=run_dir)


@dataclass(frozen=True)
class RunSummary:
    """One line of the runs list."""

    path: Path
    name: str
    model: str
    status: str
    epochs_completed: int
    num_epochs: int
    best_validation_loss: float | None
    updated: str


def read_run_summary(run_dir: str | Path) -> RunSummary | None:
    run_dir = Path(run_dir)
    try:
        status = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    state = status.get("status", "unknown")
    if state == "running" and run_owner(run_dir) is None:  # the writer died without saying so (kill -9, power)
        state = "interrupted"
    return RunSummary(
        path=run_dir,
        name=str(config.get("name", run_dir.name)),
        model=str(status.get("model", config.get("model", {}).get("name", "?"))),
        status=state,
        epochs_completed=int(status.get("epochs_completed", 0)),
        num_epochs=int(status.get("num_epochs", 0)),
        best_validation_loss=status.get("best_validation_loss"),
        updated=status.get("updated", ""),
    )


def list_runs(root: str | Path) -> list[RunSummary]:
    """Every run folder under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    summaries = [s for p in root.iterdir() if p.is_dir() and (s := read_run_summary(p)) is not None]
    return sorted(summaries, key=lambda s: s.updated, reverse=True)
