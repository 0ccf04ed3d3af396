"""What the trainer keeps in its run folder, and how it reads it back on resume.

Every write is atomic: a checkpoint is written to a staging folder and renamed into place, then
``checkpoints/latest`` is replaced, so a kill or a full disk at any moment leaves the previous complete
checkpoint. ``final_model/`` is replaced the same way. ``metrics.csv`` and ``status.json`` are replaced whole.
:class:`RunFolderPersistence` is the part of :class:`~core.training.Trainer` that does this; it reads the
trainer's state and writes nothing else.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from core.atomic import atomic_save_tensors, disk_full_in_one_line, load_tensors
from core.models.base import save_bundle
from core.training.callbacks import EpochRecord
from core.training.distributed import DistributedContext, all_gather_objects, barrier
from core.training.health import TrainingWarning
from core.training.serialization import atomic_write_text, load_state, replace_directory, save_state

if TYPE_CHECKING:
    from core.training.trainer import Trainer

__all__ = ["RunFolderPersistence", "MeanAccumulator", "Status", "latest_checkpoint", "read_metrics_csv", "rng_state",
           "restore_rng", "seed_everything", "RANK_SEED_STRIDE"]

Status = Literal["running", "completed", "early_stopped", "stopped", "cancelled", "failed"]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    folder = Path(run_dir) / "checkpoints"
    pointer = folder / "latest"
    if pointer.is_file():
        candidate = folder / pointer.read_text(encoding="utf-8").strip()
        if (candidate / "trainer_state.json").is_file():
            return candidate
    complete = sorted(p for p in folder.glob("epoch-*") if (p / "trainer_state.json").is_file())
    return complete[-1] if complete else None


RANK_SEED_STRIDE = 1_000_003


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].astype(np.int64).tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class MeanAccumulator:
    """Sample-weighted means of named metrics over an epoch."""

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0) -> None:
        self.sums = dict(sums or {})
        self.count = count

    def add(self, metrics: dict[str, float], n: int) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * n
        self.count += n

    def means(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

    def reduced(self, context: DistributedContext) -> MeanAccumulator:
        """Sums and counts of every rank added up (itself when not distributed)."""
        if not context.enabled:
            return self
        total = MeanAccumulator()
        for sums, count in all_gather_objects(context, (self.sums, self.count)):
            for key, value in sums.items():
                total.sums[key] = total.sums.get(key, 0.0) + value
            total.count += count
        return total


def read_metrics_csv(path: str | Path, missing: float | None = None) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.csv`` (one per epoch, as :meth:`EpochRecord.flat` wrote them).

    Numbers are floats and ``epoch`` an int; ``stage`` stays text; an empty cell (a term that epoch did
    not have) becomes ``missing``. Rows without a finite epoch (a torn or hand-edited file) are skipped.
    """
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key is None:  # more cells than the header names
                    continue
                if key == "stage":
                    row[key] = value
                elif value in ("", None):
                    row[key] = missing
                else:
                    try:
                        row[key] = float(value)
                    except ValueError:
                        row[key] = value
            epoch = row.get("epoch")
            if isinstance(epoch, float) and math.isfinite(epoch):
                row["epoch"] = int(epoch)
                rows.append(row)
    return rows


class RunFolderPersistence:
    """Checkpoints, the final model, ``metrics.csv`` and ``status.json`` of a :class:`Trainer`'s run folder.

    Rank 0 writes; every rank takes part in the collectives (partial metrics, RNG states) first.
    """

    def _finalize_model(self: Trainer) -> None:
        """Write ``final_model/`` (best weights with keep_best) and leave the model holding them."""
        if self.config.keep_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if self.run_dir is not None and self.dist.is_main:
            staging = self.run_dir / ".final_model.staging"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                with disk_full_in_one_line(self.run_dir / "final_model"):
                    save_bundle(self.model, staging, {"best_epoch": self.best_epoch, "epochs": self.epoch})
                    replace_directory(staging, self.run_dir / "final_model")
            finally:  # a failed write gives its space back at once
                shutil.rmtree(staging, ignore_errors=True)
        barrier(self.dist)

    def save_checkpoint(self: Trainer, tag: str | None = None) -> Path | None:
        """Write everything needed to resume, atomically (staging folder, then rename); rank 0 writes."""
        if self.run_dir is None:
            return None
        # Collectives first, on every rank: the epoch's partial metrics and each rank's RNG state.
        partial = self._partial_train.reduced(self.dist)
        rng_states = all_gather_objects(self.dist, rng_state())
        name = tag or f"epoch-{self.epoch:04d}"
        target = self.run_dir / "checkpoints" / name
        if self.dist.is_main:
            self._write_checkpoint(name, partial, rng_states)
        barrier(self.dist)
        self._last_checkpoint_time = time.monotonic()
        return target

    def _write_checkpoint(self: Trainer, name: str, partial: MeanAccumulator, rng_states: list[dict[str, Any]]) -> None:
        folder = self.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        target = folder / name
        try:
            with disk_full_in_one_line(target):
                self._write_staged_checkpoint(staging, partial, rng_states)
                replace_directory(staging, target)
                atomic_write_text(folder / "latest", name + "\n")
        finally:  # a failed write (full disk) gives its space back at once; the previous checkpoint stays
            shutil.rmtree(staging, ignore_errors=True)
        self._prune_checkpoints(keep={name})
        self._emit("on_checkpoint", str(target))

    def _write_staged_checkpoint(self: Trainer, staging: Path, partial: MeanAccumulator, rng_states: list[dict[str, Any]]) -> None:
        save_bundle(self.model, staging)
        if self.best_state is not None:
            atomic_save_tensors(self.best_state, staging / "best.safetensors")
        save_state({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                    "scaler": self._scaler.state_dict() if self._scaler else None}, staging, "optimizer")
        save_state(rng_states[0], staging, "rng")
        for rank, state in enumerate(rng_states[1:], start=1):
            save_state(state, staging, f"rng-rank{rank}")
        trainer_state = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "stage": self.stage.name,
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
            "partial_train": {"sums": partial.sums, "count": partial.count},
            "world_size": self.dist.world_size,
            "history": [r.__dict__ for r in self.history],
            "warnings": [w.to_dict() for w in self.warnings],
            "collapse_check": self.collapse_check.state_dict(),
            "callbacks": [c.state_dict() for c in self.callbacks],
            "config_seed": self.config.seed,
            "saved_at": datetime.now(timezone.utc).isoformat(),
        }
        (staging / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))

    def _prune_checkpoints(self: Trainer, keep: set[str], n_keep: int = 2) -> None:
        folder = self.run_dir / "checkpoints"
        complete = sorted(p for p in folder.glob("epoch-*") if p.is_dir())
        for old in complete[:-n_keep]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self: Trainer, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, RNG and counters from a checkpoint (or a run folder)."""
        path = Path(path)
        if not (path / "trainer_state.json").is_file():
            found = latest_checkpoint(path)
            if found is None:
                raise FileNotFoundError(f"No complete checkpoint in {path}; nothing to resume.")
            path = found
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        weights = load_tensors(path / "model.safetensors", device=str(self.device))
        self.model.load_state_dict(weights)
        stages = {s.name: s for s in self.model.stages}
        if state["stage"] not in stages:
            raise ValueError(f"Checkpoint stage '{state['stage']}' is not a stage of {self.model.name}.")
        self.stage = stages[state["stage"]]
        self.model.enter_stage(self.stage)
        self._build_optimizer()
        optim_state = load_state(path, "optimizer")
        self.optimizer.load_state_dict(optim_state["optimizer"])
        if self.scheduler is not None and optim_state["scheduler"] is not None:
            self.scheduler.load_state_dict(optim_state["scheduler"])
        if self._scaler is not None and optim_state.get("scaler"):
            self._scaler.load_state_dict(optim_state["scaler"])
        best_path = path / "best.safetensors"
        self.best_state = load_tensors(best_path) if best_path.is_file() else None
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.best_loss = state["best_loss"] if state["best_loss"] is not None else math.inf
        self.best_epoch = state["best_epoch"]
        self.epochs_without_improvement = int(state["epochs_without_improvement"])
        # The saved partial sums are global: only rank 0 carries them on, so the reduction counts them once.
        if self.dist.is_main:
            self._partial_train = MeanAccumulator(state["partial_train"]["sums"], state["partial_train"]["count"])
        else:
            self._partial_train = MeanAccumulator()
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.warnings = [TrainingWarning(**w) for w in state.get("warnings", [])]
        self.collapse_check.load_state_dict(state.get("collapse_check", {}))
        for callback, cb_state in zip(self.callbacks, state.get("callbacks", []), strict=False):
            callback.load_state_dict(cb_state)
        own = "rng" if self.dist.rank == 0 else f"rng-rank{self.dist.rank}"
        if (path / f"{own}.json").is_file():
            restore_rng(load_state(path, own))
        else:  # resumed on more processes than were saved: a fresh, seeded stream for this rank
            seed_everything(self.config.seed + self.dist.rank * RANK_SEED_STRIDE + 7_919 * self.epoch)

    def _write_metrics(self: Trainer) -> None:
        if self.run_dir is None or not self.dist.is_main:
            return
        rows = [r.flat() for r in self.history]
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())

    def _write_status(self: Trainer, status: Status, message: str) -> None:
        if self.run_dir is None or not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "status": status,
            "message": message,
            "model": self.model.name,
            "epochs_completed": self.epoch,
            "num_epochs": self.config.num_epochs,
            "best_epoch": self.best_epoch,
            "best_validation_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "warnings": [w.to_dict() for w in self.warnings],
            "updated": datetime.now(timezone.utc).isoformat(),
        }
        atomic_write_text(self.run_dir / "status.json", json.dumps(payload, indent=2) + "\n")
