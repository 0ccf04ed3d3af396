"""A tiny training run in its own process, for fault injection (tests/core/test_faults.py, benchmarks/reliability.py).

    python tests/fault_training.py RUN [--kill-after-step N] [--kill-in-write K] [--file-limit-after-write K BYTES]

It trains a small MVAE on vectors into ``RUN`` under the run lock, as ``mmvae train`` does, resuming when
``RUN`` holds a checkpoint (as ``mmvae resume`` does), with a checkpoint after every step (a tiny
``checkpoint_every_minutes``). Faults, counted in training steps of the whole run (a checkpoint write K
follows step K):

- ``--kill-after-step N``: SIGKILL itself right after step N, before its checkpoint;
- ``--kill-in-write K``: SIGKILL itself inside checkpoint write K, after the weights and before the
  optimizer state reach the staging folder;
- ``--file-limit-after-write K BYTES``: after write K, RLIMIT_FSIZE caps every file at BYTES (a full disk).

Errors are printed in one line, ``error: ...``, as the command line prints them. The helpers below run it
(:func:`run_in_subprocess`), train the uninterrupted reference (:func:`reference_run`) and compare.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core.training.checkpoint as checkpoint_module  # noqa: E402
from core.atomic import load_tensors  # noqa: E402
from core.data import IncompleteDataset, split_by_subject  # noqa: E402
from core.models import MVAE, MVAEConfig  # noqa: E402
from core.training import Callback, Trainer, TrainerConfig, latest_checkpoint  # noqa: E402
from core.workflows.runs import run_lock  # noqa: E402

INPUT_DIMS = {"a": (8,), "b": (8,)}
NUM_EPOCHS, STEPS_PER_EPOCH = 3, 4
SCRIPT = Path(__file__).resolve()

# The kill -9 moments: arguments of the faulty run, the step it dies in, whether it dies inside a checkpoint write.
KILLS = {
    "inside-the-first-checkpoint-write": (["--kill-in-write", "1"], 1, True),
    "mid-epoch": (["--kill-after-step", "7"], 7, False),
    "first-step-after-an-epoch-checkpoint": (["--kill-after-step", "5"], 5, False),
    "inside-an-end-of-epoch-checkpoint-write": (["--kill-in-write", "8"], 8, True),
}
# A full disk: after 5 checkpoints every file is capped at 1 kB, so checkpoint 6 (epoch-0001-step-00002) fails.
FULL_DISK = ["--file-limit-after-write", "5", "1024"]


def new_model() -> MVAE:
    torch.manual_seed(11)
    return MVAE(MVAEConfig(n_modalities=2, latent_dim=2, input_dims=INPUT_DIMS, warmup=1, k=1))


def tiny_splits() -> tuple[IncompleteDataset, IncompleteDataset]:
    g = torch.Generator().manual_seed(0)
    n = 24
    z = torch.randn(n, 2, generator=g)
    data = {m: z @ torch.randn(2, s[0], generator=g) + 0.05 * torch.randn(n, s[0], generator=g) for m, s in INPUT_DIMS.items()}
    masks = {"a": torch.ones(n, dtype=torch.bool), "b": torch.rand(n, generator=g) > 0.3}
    train, validation, _ = split_by_subject(IncompleteDataset(data, masks, ids=[f"s{i}" for i in range(n)]),
                                            (0.75, 0.25, 0.0), seed=0)
    return train, validation


def trainer_config() -> TrainerConfig:
    """18 training subjects in batches of 5: 4 steps an epoch, a checkpoint after each."""
    return TrainerConfig(num_epochs=NUM_EPOCHS, batch_size=5, learning_rate=3e-3, seed=3, checkpoint_every_minutes=1e-9)


class _Faults(Callback):
    def __init__(self, kill_after_step: int | None, file_limit: tuple[int, int] | None) -> None:
        self.kill_after_step, self.file_limit, self.steps, self.writes = kill_after_step, file_limit, 0, 0

    def on_batch_end(self, trainer: Trainer, progress: object) -> None:
        if progress.phase == "train":
            self.steps = (progress.epoch - 1) * progress.num_batches + progress.batch
            if self.steps == self.kill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint(self, trainer: Trainer, path: str) -> None:
        self.writes += 1
        if self.file_limit is not None and self.writes == self.file_limit[0]:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_limit[1], resource.RLIM_INFINITY))


def _kill_in_write(k: int) -> None:
    real_save_state, calls = checkpoint_module.save_state, {"optimizer": 0}

    def save_state(state: object, folder: Path, name: str) -> None:
        if name == "optimizer":
            calls["optimizer"] += 1
            if calls["optimizer"] == k:
                os.kill(os.getpid(), signal.SIGKILL)
        real_save_state(state, folder, name)

    checkpoint_module.save_state = save_state


def train_or_resume(run: Path, kill_after_step: int | None = None, kill_in_write: int | None = None,
                    file_limit_after_write: tuple[int, int] | None = None) -> int:
    """Train into ``run``, or resume it from its newest checkpoint; the exit status of the command line."""
    if kill_in_write:
        _kill_in_write(kill_in_write)
    train, validation = tiny_splits()
    try:
        with run_lock(run, "train"):
            resume = latest_checkpoint(run) is not None
            faults = _Faults(kill_after_step, file_limit_after_write)
            trainer = Trainer(new_model(), train, validation, trainer_config(), [faults], run)
            result = trainer.train(resume_from=run if resume else None)
    except (OSError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{result.status}: {result.epochs_completed} epochs")
    return 0


def run_in_subprocess(run: Path, *args: str, read_only: bool = False) -> subprocess.CompletedProcess:
    """This script on ``run`` in a fresh process; ``read_only`` makes ``run`` read-only for it (root writes
    through permissions, so as root it is mounted read-only in a private mount namespace instead)."""
    command = [sys.executable, str(SCRIPT), str(run), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if read_only and os.geteuid() == 0:
        command = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(run), *command]
    if not read_only or os.geteuid() == 0:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    modes = {p: p.stat().st_mode for p in [run, *run.rglob("*")]}
    try:
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def reference_run(folder: Path) -> Path:
    """The uninterrupted run, without the time-based checkpoints (they must not change the result)."""
    config = dataclasses.replace(trainer_config(), checkpoint_every_minutes=None)
    result = Trainer(new_model(), *tiny_splits(), config, run_dir=folder).train()
    assert result.status == "completed", result.message
    return folder


def checkpoint_step(run: Path) -> int:
    """Training steps of the run the newest checkpoint holds (0 without one)."""
    last = latest_checkpoint(run)
    if last is None:
        return 0
    state = json.loads((last / "trainer_state.json").read_text(encoding="utf-8"))
    return state["epoch"] * STEPS_PER_EPOCH + state["step_in_epoch"]


def _losses(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def same_result(run: Path, reference: Path) -> bool:
    """Bit-identical final weights and the same loss history as the reference run."""
    ours = load_tensors(run / "final_model" / "model.safetensors")
    theirs = load_tensors(reference / "final_model" / "model.safetensors")
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours) \
        and _losses(run) == _losses(reference)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--kill-after-step", type=int)
    parser.add_argument("--kill-in-write", type=int)
    parser.add_argument("--file-limit-after-write", type=int, nargs=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    return train_or_resume(args.run, args.kill_after_step, args.kill_in_write, args.file_limit_after_write)


if __name__ == "__main__":
    sys.exit(main())
