"""The Train, Model, Explore and Synthesize pages list the runs folder in a background task: the UI thread never reads a run's
files to list them, a newer listing wins over an older one still running, and the run the user chose stays chosen."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QApplication

import workbench.pages._runs as runs_module

TIMEOUT = 60_000



@pytest.fixture
def on_ui_thread(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For every listing of the runs folder, whether it ran on the UI thread."""
    calls: list[bool] = []
    original = runs_module.list_runs

    def recording(root: Any) -> Any:
        calls.append(threading.current_thread() is threading.main_thread())
        return original(root)

    monkeypatch.setattr(runs_module, "list_runs", recording)
    return calls


def test_runs_are_listed_off_the_ui_thread(make_window: Any, qtbot: Any, trained_run: Path, on_ui_thread: list[bool]) -> None:
    window = make_window(runs_root=trained_run.parent)
    explore, synth = window.explore_page, window.synthesize_page
    # The window is up before any run is listed; the runs arrive by signal.
    qtbot.waitUntil(lambda: explore.run_picker.current_run() == trained_run and synth.run_picker.current_run() == trained_run,
                    timeout=TIMEOUT)
    assert explore.selection.run_dir == trained_run
    # Showing a page lists the folder again, in the background too.
    before = len(on_ui_thread)
    window.go_to_page(3)
    qtbot.waitUntil(lambda: len(on_ui_thread) > before and not explore.run_picker.is_listing, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not explore.runner.is_running, timeout=TIMEOUT)
    assert on_ui_thread and not any(on_ui_thread), on_ui_thread
    assert explore.run_picker.current_run() == trained_run


def test_a_newer_listing_wins_and_the_chosen_run_stays(make_window: Any, qtbot: Any, trained_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    for name in ("run-a", "run-b"):
        shutil.copytree(trained_run, root / name)
    window = make_window(runs_root=root)
    picker = window.explore_page.run_picker
    qtbot.waitUntil(lambda: picker.count() == 2 and not picker.is_listing, timeout=TIMEOUT)
    other = 1 - picker.currentIndex()
    picker.setCurrentIndex(other)
    chosen = picker.current_run()
    assert window.explore_page.selection.run_dir == chosen
    # A slow listing (a share that answers late) is overtaken by a newer one; its late, stale answer (no runs at
    # all) is dropped.
    original = runs_module.list_runs
    slow_started, release = threading.Event(), threading.Event()

    def slow_then_fast(folder: Any) -> Any:
        if not slow_started.is_set():
            slow_started.set()
            release.wait(30)
            return []
        return original(folder)

    monkeypatch.setattr(runs_module, "list_runs", slow_then_fast)
    picker.refresh(root)
    qtbot.waitUntil(slow_started.is_set, timeout=TIMEOUT)
    picker.refresh(root)
    with qtbot.waitSignal(picker.runs_listed, timeout=TIMEOUT):
        pass
    release.set()
    qtbot.waitUntil(lambda: not picker.runner._threads, timeout=TIMEOUT)
    QApplication.processEvents()
    assert picker.count() == 2 and picker.current_run() == chosen
    assert not picker.is_listing


def test_train_and_model_pages_read_the_runs_folder_off_the_ui_thread(make_window: Any, qtbot: Any, trained_run: Path,
                                                                       on_ui_thread: list[bool]) -> None:
    window = make_window(runs_root=trained_run.parent)
    train, model = window.train_page, window.model_page
    assert [s.path for s in train.run_summaries()] == [trained_run]
    model.select_model("MVAE")
    assert model.previous_combo.currentData() == str(trained_run)  # from the runs already read: no wait
    # F5 re-reads the folder in the background; the selected run stays selected after the table is refilled.
    train.select_run(trained_run)
    before = len(on_ui_thread)
    with qtbot.waitSignal(train.runs_listed, timeout=TIMEOUT):
        window.act_refresh.trigger()
    assert len(on_ui_thread) > before
    assert train.selected_run() is not None and train.selected_run().path == trained_run
    assert train.runs_table.item(0, 1).text() == trained_run.name
    assert on_ui_thread and not any(on_ui_thread), on_ui_thread


def test_a_run_selected_before_it_is_listed_is_selected_once_it_is(make_window: Any, qtbot: Any, trained_run: Path,
                                                                   tmp_path: Path) -> None:
    window = make_window(runs_root=tmp_path / "empty")
    train = window.train_page
    assert train.run_summaries() == []
    copy = tmp_path / "empty" / trained_run.name
    shutil.copytree(trained_run, copy)
    train.refresh_runs()
    train.select_run(copy)  # asked for while the listing runs: remembered, not dropped
    qtbot.waitUntil(lambda: not train.is_listing_runs, timeout=TIMEOUT)
    assert train.selected_run() is not None and train.selected_run().path == copy


def test_closing_the_window_waits_for_a_listing_still_running(make_window: Any, qtbot: Any, trained_run: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A QThread destroyed while it runs aborts the process: closing waits for the Train and Model pages' listings."""
    window = make_window(runs_root=trained_run.parent)
    original = runs_module.list_runs
    started: list[bool] = []

    def slow(root: Any) -> Any:
        started.append(True)
        threading.Event().wait(1.0)  # a share that answers late; cancelling cannot interrupt it
        return original(root)

    monkeypatch.setattr(runs_module, "list_runs", slow)
    window.train_page.refresh_runs()
    window.model_page.refresh_previous_runs()
    qtbot.waitUntil(lambda: len(started) >= 2, timeout=TIMEOUT)
    runners = (window.train_page.runs_runner, window.model_page.previous_runner)
    assert any(t.isRunning() for r in runners for t in r._threads)
    window.close()
    assert not any(t.isRunning() for r in runners for t in r._threads)
