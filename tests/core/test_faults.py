"""Fault injection: kill -9 at several moments (one inside a checkpoint write), a full disk, a read-only run
folder; then resume. At most the work since the last checkpoint is lost, and the result is bit-identical
to an uninterrupted run's. The faulty runs live in their own process (tests/fault_training.py)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fault_training import INPUT_DIMS, STEPS_PER_EPOCH, tiny_splits, train_or_resume, trainer_config

from core.atomic import load_tensors
from core.models import MVAE, MVAEConfig
from core.runs import run_owner
from core.training import Trainer, latest_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "fault_training.py"


def run_script(run: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*prefix, sys.executable, str(SCRIPT), str(run), *args], env=env, capture_output=True,
                          text=True, timeout=300)


def losses(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def assert_same_result(run: Path, reference: Path) -> None:
    ours, theirs = load_tensors(run / "final_model" / "model.safetensors"), load_tensors(reference / "final_model" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed weights differ from the uninterrupted run's"
    assert losses(run) == losses(reference)


def checkpoint_step(run: Path) -> int:
    """Training steps of the run the newest checkpoint holds (0 without one)."""
    last = latest_checkpoint(run)
    if last is None:
        return 0
    state = json.loads((last / "trainer_state.json").read_text(encoding="utf-8"))
    return state["epoch"] * STEPS_PER_EPOCH + state["step_in_epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_torch_thread) -> Path:
    """The uninterrupted run, without the time-based checkpoints (they must not change the result)."""
    folder = tmp_path_factory.mktemp("reference")
    train, validation = tiny_splits()
    torch.manual_seed(11)
    model = MVAE(MVAEConfig(n_modalities=2, latent_dim=2, input_dims=INPUT_DIMS, warmup=1, k=1))
    config = dataclasses.replace(trainer_config(), checkpoint_every_minutes=None)
    assert Trainer(model, train, validation, config, run_dir=folder).train().status == "completed"
    assert [p.name for p in (folder / "checkpoints").glob("*-step-*")] == []
    return folder


def test_time_based_checkpoints_within_an_epoch_resume_bit_exact(tmp_path, reference, one_torch_thread):
    """A tiny interval saves after every step; stopping the run mid-epoch and resuming there gives the same run."""
    from core.training import Callback

    class CountCheckpoints(Callback):
        def __init__(self) -> None:
            self.names: list[str] = []

        def on_checkpoint(self, trainer, path: str) -> None:
            self.names.append(Path(path).name)

    counter = CountCheckpoints()
    train, validation = tiny_splits()
    torch.manual_seed(11)
    model = MVAE(MVAEConfig(n_modalities=2, latent_dim=2, input_dims=INPUT_DIMS, warmup=1, k=1))
    config = dataclasses.replace(trainer_config(), num_epochs=1)
    Trainer(model, train, validation, config, [counter], tmp_path).train()
    assert counter.names == ["epoch-0000-step-00001", "epoch-0000-step-00002", "epoch-0000-step-00003", "epoch-0001"]
    assert latest_checkpoint(tmp_path).name == "epoch-0001"
    shutil.rmtree(tmp_path / "checkpoints" / "epoch-0001")  # as if the run had died just before the epoch's end
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "epoch-0000-step-00003"
    shutil.rmtree(tmp_path / "final_model")
    assert train_or_resume(tmp_path) == 0
    assert_same_result(tmp_path, reference)


# (arguments of the faulty run, the step it dies in, whether it dies inside a checkpoint write)
KILLS = {
    "inside-the-first-checkpoint-write": (["--kill-in-write", "1"], 1, True),
    "mid-epoch": (["--kill-after-step", "7"], 7, False),
    "first-step-after-an-epoch-checkpoint": (["--kill-after-step", "5"], 5, False),
    "inside-an-end-of-epoch-checkpoint-write": (["--kill-in-write", "8"], 8, True),
}


@pytest.mark.parametrize("moment", list(KILLS))
def test_kill_minus_9_then_resume_loses_only_the_last_step_and_ends_bit_exact(tmp_path, reference, one_torch_thread,
                                                                              moment):
    args, dies_in_step, in_write = KILLS[moment]
    run = tmp_path / "run"
    killed = run_script(run, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((run / "status.json").read_text(encoding="utf-8"))["status"] == "running"
    assert run_owner(run) is None, "the dead owner's lock is free"
    # A checkpoint follows every step: only the step the kill hit is lost.
    assert checkpoint_step(run) == dies_in_step - 1
    staging = list((run / "checkpoints").glob(".*.staging"))
    assert bool(staging) == in_write, staging
    assert train_or_resume(run) == 0
    assert not list((run / "checkpoints").glob(".*.staging")), "stale staging is cleaned on resume"
    assert_same_result(run, reference)


def test_full_disk_is_one_line_keeps_the_last_checkpoint_and_frees_the_staging(tmp_path, reference, one_torch_thread):
    run = tmp_path / "run"
    # After 5 checkpoints every file is capped at 1 kB (RLIMIT_FSIZE): the 6th checkpoint cannot be written.
    full = run_script(run, "--file-limit-after-write", "5", "1024")
    assert full.returncode == 1, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert "No space left to write" in lines[0] and "checkpoints/epoch-0001-step-00002" in lines[0]
    assert ".staging" not in lines[0] and "Fix: free disk space" in lines[0]
    assert not list((run / "checkpoints").glob(".*")), "the failed write's staging is removed at once"
    assert checkpoint_step(run) == 5, "the last good checkpoint is kept"
    status = json.loads((run / "status.json").read_text(encoding="utf-8"))
    assert status["status"] == "failed" and "No space left" in status["message"]
    assert train_or_resume(run) == 0  # space is back: the kept checkpoint carries the run on, bit-exact
    assert_same_result(run, reference)


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_read_only_run_folder_is_refused_in_one_line(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _digest(run)
    if os.geteuid() == 0:  # root writes through permissions: mount the folder read-only in a private namespace
        result = run_script(run, prefix=("unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(run)))
    else:
        modes = {p: p.stat().st_mode for p in [run, *run.rglob("*")]}
        for path in modes:
            path.chmod(modes[path] & ~0o222)
        try:
            result = run_script(run)
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{run} is read-only" in lines[0] and "Fix: make the folder writable" in lines[0]
    assert _digest(run) == before
