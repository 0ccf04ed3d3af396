"""Fault injection: kill -9 at several moments (one inside a checkpoint write), a full disk, a read-only run
folder; then resume. At most the work since the last checkpoint is lost, and the result is bit-identical
to an uninterrupted run's. The faulty runs live in their own process (tests/fault_training.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
from pathlib import Path

import pytest
from bad_inputs import digest
from fault_training import (
    FULL_DISK,
    KILLS,
    checkpoint_step,
    new_model,
    reference_run,
    run_in_subprocess,
    same_result,
    tiny_splits,
    train_or_resume,
    trainer_config,
)

from core.training import Callback, Trainer, latest_checkpoint
from core.workflows.runs import run_owner


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_torch_thread) -> Path:
    folder = reference_run(tmp_path_factory.mktemp("reference"))
    assert [p.name for p in (folder / "checkpoints").glob("*-step-*")] == []
    return folder


def test_time_based_checkpoints_within_an_epoch_resume_bit_exact(tmp_path, reference, one_torch_thread):
    """A tiny interval saves after every step; a run resumed from a mid-epoch checkpoint is the same run."""

    class CountCheckpoints(Callback):
        def __init__(self) -> None:
            self.names: list[str] = []

        def on_checkpoint(self, trainer, path: str) -> None:
            self.names.append(Path(path).name)

    counter = CountCheckpoints()
    config = dataclasses.replace(trainer_config(), num_epochs=1)
    Trainer(new_model(), *tiny_splits(), config, [counter], tmp_path).train()
    assert counter.names == ["epoch-0000-step-00001", "epoch-0000-step-00002", "epoch-0000-step-00003", "epoch-0001"]
    assert latest_checkpoint(tmp_path).name == "epoch-0001"
    shutil.rmtree(tmp_path / "checkpoints" / "epoch-0001")  # as if the run had died just before the epoch's end
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "epoch-0000-step-00003"
    shutil.rmtree(tmp_path / "final_model")
    assert train_or_resume(tmp_path) == 0
    assert same_result(tmp_path, reference)


@pytest.mark.parametrize("moment", list(KILLS))
def test_kill_minus_9_then_resume_loses_only_the_last_step_and_ends_bit_exact(tmp_path, reference, one_torch_thread,
                                                                              moment):
    args, dies_in_step, in_write = KILLS[moment]
    run = tmp_path / "run"
    killed = run_in_subprocess(run, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((run / "status.json").read_text(encoding="utf-8"))["status"] == "running"
    assert run_owner(run) is None, "the dead owner's lock is free"
    # A checkpoint follows every step: only the step the kill hit is lost.
    assert checkpoint_step(run) == dies_in_step - 1
    staging = list((run / "checkpoints").glob(".*.staging"))
    assert bool(staging) == in_write, staging
    assert train_or_resume(run) == 0
    assert not list((run / "checkpoints").glob(".*.staging")), "stale staging is cleaned on resume"
    assert same_result(run, reference)


def test_full_disk_is_one_line_keeps_the_last_checkpoint_and_frees_the_staging(tmp_path, reference, one_torch_thread):
    run = tmp_path / "run"
    full = run_in_subprocess(run, *FULL_DISK)  # RLIMIT_FSIZE: checkpoint 6 cannot be written
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
    assert same_result(run, reference)


def test_a_read_only_run_folder_is_refused_in_one_line(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = digest(run)
    result = run_in_subprocess(run, read_only=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{run} is read-only" in lines[0] and "Fix: make the folder writable" in lines[0]
    assert digest(run) == before


def test_a_checkpoint_a_kill_caught_swapped_aside_is_put_back_when_a_writer_starts(tmp_path, reference):
    """replace_directory moves an existing checkpoint aside, then the new one in: a kill between the two
    renames leaves only ``.<name>.old``, which the next writer restores (and drops when both exist)."""
    from core.workflows.runs import run_lock

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    checkpoints = run / "checkpoints"
    newest = latest_checkpoint(run)
    older = sorted(p for p in checkpoints.glob("epoch-*") if p != newest)[0]
    newest.rename(checkpoints / f".{newest.name}.old")
    shutil.copytree(older, checkpoints / f".{older.name}.old")
    assert latest_checkpoint(run) == older
    with run_lock(run, "resume"):
        assert latest_checkpoint(run) == newest and (newest / "trainer_state.json").is_file()
        assert not list(checkpoints.glob(".*")), "the superseded copy is dropped"
