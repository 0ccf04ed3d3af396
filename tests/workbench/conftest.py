"""Hygiene for the GUI tests: offscreen Qt, fresh settings, pyqtgraph options, tiny data, and failures on
leaked QThreads, running QTimers or open top-level windows (napari's dangling-thread fixtures, in spirit)."""

from __future__ import annotations

import gc
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
import pytest
import shiboken6
from PySide6.QtCore import QCoreApplication, QEvent, QSettings, QThread, QTimer
from PySide6.QtWidgets import QApplication

from workbench.main import PYQTGRAPH_OPTIONS

_EXIT_STATUS = pytest.StashKey[int]()

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

#: A demo cohort small enough that the whole GUI suite trains in seconds.
TINY_DEMO = {"n_subjects": 16, "shape": [16, 16, 16], "seed": 0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.qt_log_level_fail("WARNING"))
            item.add_marker(pytest.mark.qt_log_ignore(r"propagateSizeHints", r"QFont::", r"This plugin does not support"))


@pytest.fixture(scope="session", autouse=True)
def _pyqtgraph_options() -> None:
    pg.setConfigOptions(**PYQTGRAPH_OPTIONS)


@pytest.fixture(autouse=True)
def _fresh_settings(tmp_path: Path, qapp: QApplication) -> Iterator[None]:
    """Every QSettings() a test creates lands in its own temporary folder, never in the user's settings."""
    folder = tmp_path / "qsettings"
    folder.mkdir()
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    for fmt in (QSettings.Format.IniFormat, QSettings.Format.NativeFormat):
        for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
            QSettings.setPath(fmt, scope, str(folder))
    QCoreApplication.setOrganizationName("mmvae-tests")
    QCoreApplication.setApplicationName("workbench-tests")
    yield


@pytest.fixture(autouse=True)
def _gc_on_ui_thread() -> Iterator[None]:
    """Cyclic garbage is collected on the UI thread only (as the app does, see workbench.workers): a
    collection in a training thread would destroy Qt objects of earlier tests in the wrong thread."""
    gc.collect()
    gc.disable()
    yield
    gc.collect()
    gc.enable()


@pytest.fixture(autouse=True)
def _no_leaks(qapp: QApplication, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a test that leaves a QThread running, a QTimer active or a top-level window open.

    Set up before ``qtbot`` (autouse), so it checks after qtbot has closed the test's widgets.
    """
    threads: list[weakref.ref[QThread]] = []
    timers: list[tuple[weakref.ref[QTimer], str]] = []
    original_start = QThread.start
    original_timer_start = QTimer.start

    def start(self: QThread, *args: Any) -> None:
        threads.append(weakref.ref(self))
        original_start(self, *args)

    def timer_start(self: QTimer, *args: Any) -> None:
        timers.append((weakref.ref(self), repr(self.parent())))
        original_timer_start(self, *args)

    monkeypatch.setattr(QThread, "start", start)
    monkeypatch.setattr(QTimer, "start", timer_start)
    before = {id(w) for w in QApplication.topLevelWidgets() if w.isVisible()}
    yield
    for w in QApplication.topLevelWidgets():
        if w.isVisible() and id(w) not in before and w.isWindow() and w.windowType().name != "ToolTip":
            w.close()
            pytest.fail(f"Top-level window left open: {w!r} {w.windowTitle()!r}")
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    alive = []
    for ref in threads:
        thread = ref()
        if thread is not None and shiboken6.isValid(thread) and thread.isRunning():
            alive.append(thread)
    for thread in alive:
        thread.wait(10_000)
    if alive:
        pytest.fail(f"{len(alive)} QThread(s) were still running at the end of the test: "
                    + ", ".join(t.objectName() or repr(t) for t in alive))
    active = []
    for ref, parent in timers:
        timer = ref()
        if timer is not None and shiboken6.isValid(timer) and timer.isActive():
            active.append(f"{timer.objectName() or 'timer'} (interval {timer.interval()} ms, parent {parent})")
            timer.stop()
    if active:
        pytest.fail("QTimer(s) still active at the end of the test: " + "; ".join(active))


@pytest.fixture
def tiny_demo() -> dict[str, Any]:
    return dict(TINY_DEMO)


def train_tiny_run(run: Path, cache: Path, model: dict[str, Any], demo: dict[str, Any] | None = None) -> Path:
    """Train ``model`` headless for one epoch on the tiny demo cohort (or ``demo``) into ``run``."""
    from core.workflows.runs import parse_run_config, train_run

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMVAE_CACHE_DIR", str(cache))
        config = parse_run_config({"name": run.name, "data": {"source": "demo", "demo": demo or TINY_DEMO},
                                   "model": model, "training": {"num_epochs": 1, "batch_size": 4}})
        assert train_run(config, run).status == "completed"
    return run


@pytest.fixture
def train_tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """:func:`train_tiny_run`, with the session's demo cache."""
    return lambda run, model, demo=None: train_tiny_run(run, tmp_path_factory.getbasetemp() / "mmvae-cache", model, demo)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVAE run trained for one epoch on the tiny demo cohort (shared by a module's tests)."""
    run = tmp_path_factory.mktemp("runs") / "tiny-mvae"
    return train_tiny_run(run, tmp_path_factory.getbasetemp() / "mmvae-cache", {"name": "MVAE", "latent_dim": 4})


def wait_for_runs_lists(window: Any, qtbot: Any, timeout: int = 10_000) -> None:
    """Wait until the Train and Model pages have read the runs folder (they read it in worker threads)."""
    qtbot.waitUntil(lambda: not window.train_page.is_listing_runs and not window.model_page.previous_runner.is_running,
                    timeout=timeout)


@pytest.fixture
def wait_idle(qtbot: Any) -> Callable[[Any], None]:
    """Wait until a window's Train page has no job and shows idle, and the pages have re-read the runs folder."""

    def wait(window: Any) -> None:
        train = window.train_page
        qtbot.waitUntil(lambda: train.job is None and train._phase == "idle", timeout=120_000)
        wait_for_runs_lists(window, qtbot, timeout=120_000)

    return wait


@pytest.fixture
def make_window(qtbot: Any, tmp_path: Path) -> Callable[..., Any]:
    """A factory for main windows with isolated settings, a temporary runs folder and the tiny demo."""
    from workbench.main_window import MainWindow
    from workbench.settings import Settings

    windows = []

    def make(**kwargs: Any) -> MainWindow:
        settings = kwargs.pop("settings", None) or Settings.at(tmp_path / f"settings-{len(windows)}.ini")
        kwargs.setdefault("demo_settings", dict(TINY_DEMO))
        kwargs.setdefault("runs_root", tmp_path / "runs")
        window = MainWindow(settings, **kwargs)
        window.confirm_close = False
        window.train_page.confirm_discard = False
        qtbot.addWidget(window)
        window.show()
        windows.append(window)
        wait_for_runs_lists(window, qtbot)
        return window

    yield make
    for window in windows:
        if shiboken6.isValid(window):
            window.close()


@pytest.fixture(scope="session")
def manifest_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small cohort written with core's NIfTI writer: 8 subjects, T1 and T2, two subjects lack T2, one
    T2 file is unreadable."""
    from core.data.geometry import Geometry
    from core.data.writers import write_nifti

    root = tmp_path_factory.mktemp("manifest-cohort")
    rng = np.random.default_rng(0)
    geometry = Geometry.from_affine((12, 12, 12), np.diag([2.0, 2.0, 2.0, 1.0]))
    rows = ["subject,modality,path"]
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 12)] * 3, indexing="ij"))
    brain = (grid**2).sum(0) < 0.7
    for i in range(8):
        s = f"sub-{i:02d}"
        t1 = (brain * (1.0 + 0.1 * rng.standard_normal((12, 12, 12)))).astype(np.float32)
        write_nifti(root / f"{s}_T1.nii.gz", t1, geometry)
        rows.append(f"{s},T1,{s}_T1.nii.gz")
        if i in (2, 5):
            rows.append(f"{s},T2,")
            continue
        t2 = (brain * (2.0 - grid[0]) * (1.0 + 0.1 * rng.standard_normal((12, 12, 12)))).astype(np.float32)
        write_nifti(root / f"{s}_T2.nii.gz", t2, geometry)
        rows.append(f"{s},T2,{s}_T2.nii.gz")
    (root / "sub-07_T2.nii.gz").write_bytes(b"this is not a NIfTI file")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own status once everything is reported, skipping interpreter finalization.

    PySide6 6.x (here) can abort while the interpreter finalizes after the GUI tests ("bool_dealloc:
    deallocating True or False", a refcount bug in the bindings' teardown), turning a passing run into
    exit code 134. The results are final by now; only that teardown is skipped.
    """
    if _EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])
