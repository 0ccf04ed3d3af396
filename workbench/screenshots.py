"""``python app.py --screenshots DIR``: drive the real GUI through the whole workflow and save a PNG of every
page, then quit (for the README, and for checking the layout on a machine without a display).

The workflow, on the cohort the window opened (the demo by default): view one volume on the Data page,
configure MVAE on the Model page, train it for a few epochs on the Train page, project the latent space on
the Explore page, then on the Synthesize page leave one modality of a subject out, synthesize it back and
export every subject's missing modalities (into ``DIR/export``). Each page is grabbed into
``DIR/<n>-<page>.png`` once its step is done. Every step waits for the page's own signals (no sleeping);
the exit status is 0 when every step succeeded, 1 otherwise (the pages reached are still saved).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from core.models import MVAEConfig, config_schema
from workbench.main_window import PAGES, MainWindow

__all__ = ["take_screenshots", "ScreenshotTour", "tour_config"]

#: The model the tour trains: a few epochs, a minute on a laptop CPU with the default demo cohort.
#: ``MMVAE_SCREENSHOT_EPOCHS`` trains longer (the README pictures use 8).
TOUR_MODEL = {"latent_dim": 16}
TOUR_TRAINING = {"num_epochs": 3, "batch_size": 8}


def _tour_training() -> dict[str, int]:
    epochs = os.environ.get("MMVAE_SCREENSHOT_EPOCHS", "")
    return {**TOUR_TRAINING, "num_epochs": int(epochs)} if epochs.isdigit() and int(epochs) > 0 else dict(TOUR_TRAINING)


def tour_config() -> tuple[dict[str, int], dict[str, int]]:
    """The model and training values the tour sets, consistent with each other: the KL warm-up ends half-way
    through the run (MVAE's default warm-up, 10 epochs, is longer than a short tour and would put the Model
    page's "warm-up never finishes" warning in every picture)."""
    training = _tour_training()
    default = int(config_schema(MVAEConfig)["properties"]["warmup"]["default"])
    return {**TOUR_MODEL, "warmup": min(default, max(1, training["num_epochs"] // 2))}, training


def tour_timeout_ms() -> int:
    """The tour's watchdog: ten minutes for the pages, and three per epoch (a busy 2-core machine's pace at
    48 subjects of 32^3), so that a longer tour is not cut off in the middle of training."""
    return (600 + 180 * _tour_training()["num_epochs"]) * 1000


def save_compact_png(window: MainWindow, path: Path, colours: int = 256) -> None:
    """Grab ``window`` into ``path`` as an 8-bit palette PNG without dithering: the most frequent colours are
    kept exactly and every other pixel takes the nearest of them, so flat UI areas stay flat and the file is a
    fraction of a 32-bit PNG."""
    image = window.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    rgb = np.frombuffer(image.constBits(), np.uint8, stride * height).reshape(height, stride)[:, : width * 3]
    rgb = rgb.reshape(height, width, 3).astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    values, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    keep = values[np.argsort(-counts)[:colours]]
    palette = np.stack([(keep >> 16) & 255, (keep >> 8) & 255, keep & 255], axis=1)
    unique_rgb = np.stack([(values >> 16) & 255, (values >> 8) & 255, values & 255], axis=1)
    nearest = np.empty(len(values), dtype=np.uint8)
    for start in range(0, len(values), 4096):  # nearest palette colour of every distinct colour
        chunk = unique_rgb[start : start + 4096]
        nearest[start : start + 4096] = ((chunk[:, None, :] - palette[None, :, :]) ** 2).sum(-1).argmin(1)
    indices = np.ascontiguousarray(nearest[inverse].reshape(height, width))
    out = QImage(indices.data, width, height, width, QImage.Format.Format_Indexed8)
    out.setColorTable([int(0xFF000000 | int(c)) for c in keep])
    out.copy().save(str(path), "PNG", 9)


def tour_step(method: Callable[..., None]) -> Callable[..., None]:
    """A step of the tour: an exception in it fails the tour at once, naming the step and the error, instead of
    reaching the app's error reporter while the tour waits for its watchdog."""

    @functools.wraps(method)
    def step(self: ScreenshotTour, *args: object) -> None:
        try:
            method(self, *args)
        except Exception as error:  # noqa: BLE001 - any failure of a step is the tour's failure, reported whole
            self._fail(f"{type(error).__name__} while {self.step}: {error}\n{traceback.format_exc()}", stop=True)

    return step


class ScreenshotTour(QObject):
    """The scripted workflow (module docstring); steps chain through the pages' signals."""

    def __init__(self, window: MainWindow, folder: Path, timeout_ms: int | None = None) -> None:
        super().__init__(window)
        self.window, self.folder = window, Path(folder)
        self.failures: list[str] = []
        self.saved: list[Path] = []
        self.step = "opening the cohort"
        self._finished = False
        #: How the finished tour ends the application with its exit status (a test, inside pytest-qt's
        #: application, records the status instead: QApplication.exit would end every later event loop).
        self.exit_application: Callable[[int], None] = QApplication.exit
        self._watchdog = QTimer(self)
        self._watchdog.setSingleShot(True)
        self._watchdog.timeout.connect(lambda: self._fail(f"timed out while {self.step}", stop=True))
        self._watchdog.start(timeout_ms if timeout_ms is not None else tour_timeout_ms())

    # ------------------------------------------------------------------ helpers
    def _later(self, fn: Callable[[], None], ms: int = 300) -> None:
        QTimer.singleShot(ms, self, lambda: self._run(fn))

    @tour_step
    def _run(self, fn: Callable[[], None]) -> None:
        fn()

    def _grab(self, index: int) -> None:
        self.window.go_to_page(index)
        QApplication.processEvents()  # one-shot, in a scripted run: lets the page lay out before the grab
        path = self.folder / f"{index + 1}-{PAGES[index].lower()}.png"
        save_compact_png(self.window, path)
        self.saved.append(path)

    def _fail(self, reason: str, stop: bool = False) -> None:
        self.failures.append(reason)
        print(f"Screenshots: {reason}", file=sys.stderr)
        if stop:
            self.finish()

    # ------------------------------------------------------------------ steps
    @tour_step
    def cohort_opened(self) -> None:
        w = self.window
        info = w.state.info
        if info is None:
            bar = w.data_page.messages.bar("open")
            self._fail("the cohort did not open: " + (bar.message.details if bar else "unknown reason"), stop=True)
            return
        if self.step != "opening the cohort":
            return
        self.step = "showing a volume on the Data page"
        usable = info.usable()
        row = int(usable.sum(axis=1).argmax())
        col = int(usable[row].argmax())
        if not usable[row, col]:
            self._later(self.data_done)
            return
        w.data_page.volume_runner.done.connect(lambda *_: self._later(self.data_done))
        w.data_page.volume_runner.failed.connect(lambda *_: self._later(self.data_done))
        w.data_page.show_volume(info.subjects[row], info.modalities[col])

    @tour_step
    def data_done(self) -> None:
        if self.step != "showing a volume on the Data page":
            return
        self._grab(0)
        self.step = "configuring the model"
        page = self.window.model_page
        page.select_model("MVAE")
        model, training = tour_config()
        page.model_form.set_values(model)
        page.training_form.set_values(training)
        page.validate()
        self._later(self.model_done)

    @tour_step
    def model_done(self) -> None:
        self._grab(1)
        messages = self.window.model_page.messages
        warnings = [bar.message.text for bar in map(messages.bar, messages.keys()) if bar and bar.message.level == "warning"]
        if warnings:  # the pictures show a configuration that needs no correcting
            self._fail("the tour's configuration raises a warning: " + " ".join(warnings))
        if self.window.state.start_blocker:
            self._fail(f"training cannot start: {self.window.state.start_blocker}", stop=True)
            return
        self.step = "training"
        train = self.window.train_page
        train.training_state_changed.connect(self._training_state)
        self.window.go_to_page(2)
        if not train.start():
            self._fail("the Train page refused to start", stop=True)

    @tour_step
    def _training_state(self, phase: str) -> None:
        train = self.window.train_page
        if phase == "idle" and self.step == "training":
            train.training_state_changed.disconnect(self._training_state)
            if train.messages.has("failed"):
                self._fail("training failed: " + " ".join(train.messages.texts()), stop=True)
                return
            self._later(self.train_done, 800)

    @tour_step
    def train_done(self) -> None:
        if self.window.train_page.is_listing_runs:  # the run just trained is listed in the background
            self._later(self.train_done, 100)
            return
        self._grab(2)
        self.step = "projecting the latent space"
        explore = self.window.explore_page
        explore.runner.done.connect(lambda *_: self._later(self.explore_done, 500))
        explore.runner.failed.connect(lambda error: self._fail(f"projection failed: {error.message}", stop=True))
        runs = self.window.train_page.run_summaries()
        if runs:  # the run just trained (newest first)
            explore.selection.set_run(runs[0].path)
        self.window.go_to_page(3)  # showing the page starts the projection of the selected run
        if not explore.runner.is_running and explore.projection is not None:
            self._later(self.explore_done, 500)

    @tour_step
    def explore_done(self) -> None:
        if self.step != "projecting the latent space" or self.window.explore_page.runner.is_running:
            return
        explore = self.window.explore_page
        projection = explore.projection
        if projection is not None:
            explore.plot.highlight(projection.subjects[0])
        self._grab(3)
        self.step = "opening the run on the Synthesize page"
        synth = self.window.synthesize_page
        synth.runner.done.connect(self._synth_task_done)
        synth.runner.failed.connect(lambda error: self._fail(f"synthesis failed: {error.message}", stop=True))
        self.window.go_to_page(4)
        if not synth.runner.is_running and synth.context is not None:
            self._later(lambda: self._synth_task_done(None), 100)

    @tour_step
    def _synth_task_done(self, result: object) -> None:
        synth = self.window.synthesize_page
        if self.step == "opening the run on the Synthesize page" and synth.context is not None:
            ctx = synth.context
            held_out = {"test": 0, "validation": 1}  # a subject the model never trained on
            ordered = sorted(ctx.dataset.ids, key=lambda s: (held_out.get(ctx.split.get(s, ""), 2), "T2" not in ctx.observed(s)))
            candidates = [s for s in ordered if 2 <= len(ctx.observed(s)) < len(ctx.modalities)] or \
                [s for s in ordered if len(ctx.observed(s)) >= 2]
            if not candidates:
                self._fail("no subject has two modalities to leave one out", stop=True)
                return
            subject = candidates[0]
            synth.select_subject(subject)
            observed = ctx.observed(subject)
            synth.set_hidden("T2" if "T2" in observed else observed[-1])
            self.step = "leaving one modality out"
            self._later(synth.leave_one_out, 100)
        elif self.step == "leaving one modality out" and synth.result is not None:
            self.step = "exporting every missing modality"
            synth.batch_runner.done.connect(lambda *_: self._later(self.synth_done, 500))
            synth.batch_runner.failed.connect(lambda error: self._fail(f"export failed: {error.message}", stop=True))
            out, n = self.folder / "export", 2
            while out.exists() and any(out.iterdir()):  # never overwrite an earlier tour's files
                out, n = self.folder / f"export-{n}", n + 1
            synth.export_all_missing(str(out), overwrite=False, confirmed=True)  # the tour confirms the export gate

    @tour_step
    def synth_done(self) -> None:
        self._grab(4)
        self.step = "done"
        self.finish()

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._watchdog.stop()
        for index in range(len(PAGES)):  # pages not reached are still saved, as they are
            path = self.folder / f"{index + 1}-{PAGES[index].lower()}.png"
            if path not in self.saved:
                self._grab(index)
        self.window.confirm_close = False  # a tour cut short must not wait on a question nobody answers
        self.window.close()
        self.exit_application(1 if self.failures else 0)


def take_screenshots(window: MainWindow, folder: Path, timeout_ms: int | None = None) -> ScreenshotTour:
    """Once the cohort is open, run the :class:`ScreenshotTour` into ``folder`` and quit the application."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tour = ScreenshotTour(window, folder, timeout_ms)
    window.go_to_page(0)  # whatever page the settings remembered: the tour starts from the beginning
    window.state.cohort_changed.connect(lambda: QTimer.singleShot(500, tour, tour.cohort_opened))
    window.data_page.open_runner.failed.connect(lambda error: QTimer.singleShot(500, tour, tour.cohort_opened))
    return tour
