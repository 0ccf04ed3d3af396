"""The worker layer: tasks in QThreads, queued results, cancel discipline, errors, throttled heartbeats."""

from __future__ import annotations

import gc
import sys
import threading
import types
import weakref
from types import SimpleNamespace
from typing import Any

from PySide6.QtCore import QThread

from core.progress import Cancelled
from core.training import BatchProgress
from workbench.workers import (
    QtTrainingCallback,
    TaskError,
    TaskRunner,
    TrainingSignals,
    UiThreadGarbageCollector,
)


def _work(n: int, gate: threading.Event | None, state: Any) -> dict[str, Any]:
    for i in range(n):
        if gate is not None:
            gate.wait(5)
        if state.is_cancelled():
            raise Cancelled("stopped")
        state.progress(i + 1, n, f"item {i + 1}")
    return {"thread": QThread.currentThread(), "n": n}


def test_a_task_runs_off_the_ui_thread_and_reports_on_it(qtbot: Any) -> None:
    runner = TaskRunner()
    progress: list[tuple[int, int, str]] = []
    seen_threads: list[Any] = []
    runner.progress.connect(lambda d, t, m: (progress.append((d, t, m)), seen_threads.append(QThread.currentThread())))
    with qtbot.waitSignal(runner.done, timeout=5000) as blocker:
        runner.start(_work, 1000, None)
    assert blocker.args[0]["thread"] is not QThread.currentThread()
    assert all(t is QThread.currentThread() for t in seen_threads)  # slots ran on the UI thread
    assert progress[-1] == (1000, 1000, "item 1000")
    assert len(progress) < 100  # throttled: not one signal per item
    assert not runner.is_running
    qtbot.waitUntil(lambda: not runner._threads, timeout=5000)


def test_cancel_disconnects_at_once_and_a_new_task_replaces_the_old(qtbot: Any) -> None:
    runner = TaskRunner()
    done: list[Any] = []
    runner.done.connect(done.append)
    gate = threading.Event()
    runner.start(_work, 3, gate)
    with qtbot.waitSignal(runner.cancelled, timeout=1000):
        runner.cancel()
    assert not runner.is_running
    gate.set()
    # A second task started right away; only its result arrives.
    with qtbot.waitSignal(runner.done, timeout=5000):
        runner.start(_work, 2, None)
    qtbot.waitUntil(lambda: not runner._threads, timeout=5000)
    assert [d["n"] for d in done] == [2]


def test_errors_reach_the_ui_as_task_errors(qtbot: Any) -> None:
    def broken(state: Any) -> None:
        raise MemoryError("out of memory while preprocessing")

    runner = TaskRunner()
    with qtbot.waitSignal(runner.failed, timeout=5000) as blocker:
        runner.start(broken)
    error = blocker.args[0]
    assert isinstance(error, TaskError) and error.type_name == "MemoryError"
    assert "preprocessing" in error.message and "Traceback" in error.details
    qtbot.waitUntil(lambda: not runner._threads, timeout=5000)


def test_training_heartbeats_are_throttled(qtbot: Any) -> None:
    n = 500
    signals = TrainingSignals()
    emitted: list[BatchProgress] = []
    signals.batch.connect(emitted.append)
    callback = QtTrainingCallback(signals, preview_every=0, min_interval=0.1)
    trainer = SimpleNamespace()
    for b in range(1, n + 1):
        callback.on_batch_end(trainer, BatchProgress(1, 1, "train", "train", b, n, 1.0, 0.0, None, b / n))
    assert [p.batch for p in emitted][0] == 1 and emitted[-1].batch == n
    assert len(emitted) <= 5


class _Cycle:
    """Garbage that only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me = self


def test_the_ui_thread_collector_frees_cycles_and_freezes_what_an_import_brought(monkeypatch: Any) -> None:
    collector = UiThreadGarbageCollector()
    collector.start()
    try:
        frozen = gc.get_freeze_count()
        probe = _Cycle()
        alive = weakref.ref(probe)
        del probe
        for _ in range(gc.get_threshold()[0] + 10):  # past the youngest generation's threshold
            _Cycle()
        collector.check()
        assert alive() is None  # the cycle was collected, on this thread
        # A module imported meanwhile (a worker's first `import scipy`): its objects are frozen, not scanned.
        monkeypatch.setitem(sys.modules, "imported_by_a_worker", types.ModuleType("imported_by_a_worker"))
        module_objects = [[i] for i in range(50_000)]
        collector.check()
        assert gc.get_freeze_count() >= frozen + len(module_objects)
        assert gc.get_count()[0] < gc.get_threshold()[0]
        # A full collection waits until the old generation has grown by a quarter since the last one.
        gc.collect(1)
        collector._old_after_full = 10 * len(gc.get_objects(generation=2)) + 1000
        collections_before = gc.get_stats()[2]["collections"]
        for _ in range((gc.get_threshold()[1] + 1) * (gc.get_threshold()[2] + 2)):
            for _ in range(gc.get_threshold()[0] + 1):
                _Cycle()
            collector.check()
        assert gc.get_stats()[2]["collections"] == collections_before
    finally:
        collector.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0
