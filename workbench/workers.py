"""Background work: plain ``core`` functions run in QThreads, reporting to the UI through queued signals.

Two kinds of work:

* :class:`TaskRunner` runs any function ``fn(*args, state)`` (opening a cohort, a preprocessing
  preview, building the cache). The function sees only data and a :class:`TaskState`, whose
  ``progress(done, total, message)`` and ``is_cancelled()`` are exactly the ``progress``/``cancel``
  callables every long ``core`` function takes. Starting a new task cancels the previous one and
  disconnects its signals first, so a cancelled task can never draw into the next one.
* :class:`TrainingJob` runs :func:`core.workflows.runs.train_run` or :func:`core.workflows.runs.resume_run` with a
  :class:`QtTrainingCallback` that turns the trainer's events into signals (batch heartbeats throttled,
  epoch records never dropped, a cross-modal synthesis preview every N epochs) and a
  :class:`~core.training.TrainingControl` for pause, resume, stop-and-keep and cancel.

Signals are emitted from the worker thread on objects living in the UI thread, and every connection is
queued, so slots run on the UI thread. Nothing here blocks the UI thread except :meth:`shutdown` when
the application closes. Every exception in a worker reaches the UI as a :class:`TaskError`.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PySide6.QtCore import QObject, Qt, QThread, QTimer, Signal, Slot

from core.data.dataset import collate_multimodal
from core.data.sources import LoadedData, load_data
from core.progress import Cancelled, CancelToken
from core.training import BatchProgress, Callback, EpochRecord, TrainingControl, TrainingResult
from core.workflows.impute import FieldsOfView
from core.workflows.runs import RunConfig, resume_run, train_run

__all__ = [
    "UiThreadGarbageCollector",
    "TaskError",
    "TaskState",
    "TaskRunner",
    "SynthesisPreview",
    "synthesis_preview",
    "QtTrainingCallback",
    "TrainingSignals",
    "TrainingJob",
]

QUEUED = Qt.ConnectionType.QueuedConnection


class UiThreadGarbageCollector(QObject):
    """Collect cyclic garbage on the UI thread only, in pauses shorter than a frame.

    Python's automatic collector runs in whichever thread happens to allocate; in a training thread it
    would destroy Qt objects (old widgets, plot items) outside their thread, which Qt reports or crashes
    on. So automatic collection is switched off and a timer on the UI thread collects instead, by
    generation, when the allocation counts pass the usual thresholds (pyqtgraph's GarbageCollector recipe).

    Two rules keep each pause short. Modules imported since the last check (workers import scipy,
    sklearn and parts of torch lazily: some 200,000 objects at a run's start) live as long as the process,
    so they are frozen rather than scanned (a scan of them took 0.5 s); cyclic garbage that happens to
    exist at that moment is frozen with them, a bounded cost paid once per first use of a module. And a
    full collection waits until the old generation has grown by a quarter since the last one, CPython's
    own rule, which an explicit ``gc.collect(2)`` would skip.
    """

    def __init__(self, parent: QObject | None = None, interval_ms: int = 100) -> None:
        super().__init__(parent)
        self.threshold = gc.get_threshold()
        self._modules = len(sys.modules)
        self._old_after_full = 0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.check)

    def start(self) -> None:
        gc.collect()
        self._freeze()  # what exists at start-up (modules, Qt wrappers) lives on: keep it out of every scan
        gc.disable()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        gc.unfreeze()
        gc.enable()

    def _freeze(self) -> None:
        gc.freeze()
        self._modules = len(sys.modules)
        self._old_after_full = 0

    @Slot()
    def check(self) -> None:
        if len(sys.modules) != self._modules:
            self._freeze()
            return
        counts = gc.get_count()
        if counts[0] <= self.threshold[0]:
            return
        generation = 1 if counts[1] > self.threshold[1] else 0
        if generation == 1 and counts[2] > self.threshold[2]:
            old = len(gc.get_objects(generation=2))
            if old - self._old_after_full >= self._old_after_full / 4:
                generation = 2
        gc.collect(generation)
        if generation == 2:
            self._old_after_full = len(gc.get_objects(generation=2))


@dataclass(frozen=True)
class TaskError:
    """An exception raised in a worker, ready to show: type, message and traceback."""

    type_name: str
    message: str
    details: str
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_exception(cls, error: BaseException) -> TaskError:
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return cls(type(error).__name__, str(error) or type(error).__name__, details, error)

    def summary(self) -> str:
        return f"{self.type_name}: {self.message}"


class _TaskSignals(QObject):
    progress = Signal(int, int, str)
    status = Signal(str)
    partial = Signal(object)
    done = Signal(object)
    failed = Signal(object)
    cancelled = Signal()


class TaskState:
    """What a task function receives: progress, status, partial results and cancellation.

    ``progress`` emits at most every ``min_interval`` seconds (and always for the last unit), so a
    function reporting thousands of small steps cannot flood the UI thread.
    """

    def __init__(self, signals: _TaskSignals, min_interval: float = 0.05) -> None:
        self._signals = signals
        self._token = CancelToken()
        self._min_interval = min_interval
        self._last = 0.0

    def progress(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if done >= total or done <= 1 or now - self._last >= self._min_interval:
            self._last = now
            self._signals.progress.emit(int(done), int(total), str(message))

    def set_status(self, text: str) -> None:
        self._signals.status.emit(str(text))

    def set_partial_result(self, value: Any) -> None:
        self._signals.partial.emit(value)

    def is_cancelled(self) -> bool:
        return self._token.is_cancelled

    def cancel(self) -> None:
        self._token.cancel()


class _TaskThread(QThread):
    """Runs ``fn(*args, state)`` once; the outcome goes out through ``signals``."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], state: TaskState, signals: _TaskSignals) -> None:
        super().__init__()
        self._fn, self._args, self.state, self.signals = fn, args, state, signals
        self.setObjectName(f"task:{getattr(fn, '__name__', 'task')}")

    def run(self) -> None:
        try:
            result = self._fn(*self._args, self.state)
        except Cancelled:
            self.signals.cancelled.emit()
        except BaseException as error:  # every worker error reaches the user
            self.signals.failed.emit(TaskError.from_exception(error))
        else:
            if self.state.is_cancelled():
                self.signals.cancelled.emit()
            else:
                self.signals.done.emit(result)
        finally:
            self._fn = self._args = None  # type: ignore[assignment]


class TaskRunner(QObject):
    """Runs one task at a time for a page (Orange's ``ConcurrentMixin`` in Qt terms).

    Signals (always on the UI thread): ``progress(done, total, message)``, ``status(text)``,
    ``partial(value)``, ``done(result)``, ``failed(TaskError)``, ``cancelled()``, ``running_changed(bool)``.
    """

    progress = Signal(int, int, str)
    status = Signal(str)
    partial = Signal(object)
    done = Signal(object)
    failed = Signal(object)
    cancelled = Signal()
    running_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, name: str = "") -> None:
        super().__init__(parent)
        self.name = name
        self._current: _TaskThread | None = None
        self._threads: set[_TaskThread] = set()

    @property
    def is_running(self) -> bool:
        return self._current is not None

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args, state)`` in a new thread, cancelling the task that is running."""
        if self._current is not None:
            self._detach(self._current, cancel=True)
        signals = _TaskSignals()
        state = TaskState(signals)
        thread = _TaskThread(fn, args, state, signals)
        signals.progress.connect(self._on_progress, QUEUED)
        signals.status.connect(self._on_status, QUEUED)
        signals.partial.connect(self._on_partial, QUEUED)
        signals.done.connect(self._on_done, QUEUED)
        signals.failed.connect(self._on_failed, QUEUED)
        signals.cancelled.connect(self._on_cancelled, QUEUED)
        thread.finished.connect(lambda t=thread: self._on_finished(t), QUEUED)
        self._threads.add(thread)
        self._current = thread
        thread.start()
        self.running_changed.emit(True)

    def cancel(self) -> None:
        """Ask the running task to stop; its signals are disconnected at once and ``cancelled`` is emitted."""
        if self._current is None:
            return
        self._detach(self._current, cancel=True)
        self.cancelled.emit()
        self.running_changed.emit(False)

    def _detach(self, thread: _TaskThread, cancel: bool) -> None:
        if cancel:
            thread.state.cancel()
        for name in ("progress", "status", "partial", "done", "failed", "cancelled"):
            try:
                getattr(thread.signals, name).disconnect()
            except (RuntimeError, TypeError):
                pass
        if self._current is thread:
            self._current = None

    def _sender_is_current(self) -> bool:
        sender = self.sender()
        return self._current is not None and sender is self._current.signals

    @Slot(int, int, str)
    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self._sender_is_current():
            self.progress.emit(done, total, message)

    @Slot(str)
    def _on_status(self, text: str) -> None:
        if self._sender_is_current():
            self.status.emit(text)

    @Slot(object)
    def _on_partial(self, value: Any) -> None:
        if self._sender_is_current():
            self.partial.emit(value)

    def _finish_current(self) -> None:
        self._current = None
        self.running_changed.emit(False)

    @Slot(object)
    def _on_done(self, result: Any) -> None:
        if self._sender_is_current():
            self._finish_current()
            self.done.emit(result)

    @Slot(object)
    def _on_failed(self, error: TaskError) -> None:
        if self._sender_is_current():
            self._finish_current()
            self.failed.emit(error)

    @Slot()
    def _on_cancelled(self) -> None:
        if self._sender_is_current():
            self._finish_current()
            self.cancelled.emit()

    def _on_finished(self, thread: _TaskThread) -> None:
        self._threads.discard(thread)
        if self._current is thread:  # ended without any outcome signal (should not happen)
            self._finish_current()
        thread.signals.deleteLater()
        thread.deleteLater()

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel and wait for every thread (called when the window closes); True if all ended."""
        if self._current is not None:
            self._detach(self._current, cancel=True)
        ok = True
        for thread in list(self._threads):
            thread.state.cancel()
            ok = thread.wait(timeout_ms) and ok
        return ok


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class SynthesisPreview:
    """Real vs generated volumes of one validation subject at one epoch.

    ``rows`` holds, per modality: the real volume (None when the subject lacks it), the volume the model
    generates from ``conditioned_on`` (the subject's other modalities), and that list.
    """

    subject: str
    epoch: int
    rows: list[tuple[str, np.ndarray | None, np.ndarray | None, list[str]]]
    error: str = ""


def _volume(x: torch.Tensor) -> np.ndarray:
    array = x.detach().float().cpu().numpy()
    return array[0] if array.ndim >= 3 and array.shape[0] == 1 else array


@torch.no_grad()
def synthesis_preview(model: Any, sample: Any, epoch: int,
                      cohort_fields_of_view: Callable[[], FieldsOfView] | None = None) -> SynthesisPreview:
    """Cross-modal generation for one sample with ``model.predict`` (posterior means, RNG untouched).

    Each present modality is generated from the subject's other present modalities; a missing one from
    all present modalities. The global torch RNG is forked so the training run stays reproducible. A
    modality with a field of view (ultrasound) is shown only inside it, as synthesis writes it: the
    subject's own, else the cohort's (``cohort_fields_of_view``, asked only then). Outside it the model
    never saw data, and its output there would pass for an image.
    """
    batch = collate_multimodal([sample])
    observed = batch.get("observation_masks") or {}
    present = [m for m in model.modalities if bool(batch["masks"][m][0])]
    rows: list[tuple[str, np.ndarray | None, np.ndarray | None, list[str]]] = []
    errors = []
    with torch.random.fork_rng(devices=[]):
        for m in model.modalities:
            cond = [c for c in present if c != m]
            real = _volume(batch["data"][m][0]) if m in present else None
            if not cond:
                rows.append((m, real, None, []))
                continue
            try:
                out = model.predict(batch, cond_mod=cond, gen_mod=m, return_mean=True)
                generated = out[m][0].detach().float().cpu().numpy()
                if m in observed:
                    own = observed[m][0].cpu().numpy()
                    rule = FieldsOfView({}) if own.any() or cohort_fields_of_view is None else cohort_fields_of_view()
                    generated = rule.apply(m, generated, np.zeros_like(generated), own)[0]
                rows.append((m, real, _volume(torch.from_numpy(generated)), cond))
            except Exception as error:  # a preview must never stop training
                errors.append(f"{m}: {type(error).__name__}: {error}")
                rows.append((m, real, None, cond))
    return SynthesisPreview(str(batch["ids"][0]), epoch, rows, "; ".join(errors))


class TrainingSignals(QObject):
    """Signals of one training job (emitted from its thread, received on the UI thread)."""

    status = Signal(str)
    data_progress = Signal(int, int, str)
    data_loaded = Signal(object)
    started = Signal(str)
    batch = Signal(object)
    epoch = Signal(object)
    checkpoint = Signal(str)
    paused = Signal(bool)
    warning = Signal(object)
    preview = Signal(object)
    finished = Signal(object)
    failed = Signal(object)
    cancelled = Signal()


class QtTrainingCallback(Callback):
    """The trainer's events as Qt signals.

    Batch heartbeats go out at most every ``min_interval`` seconds (plus the first and last batch of
    each phase); epoch records, checkpoints and pause changes always. Every ``preview_every`` epochs
    (and at the last epoch) a :class:`SynthesisPreview` of a fixed validation subject is computed here,
    in the training thread, between two epochs.
    """

    def __init__(self, signals: TrainingSignals, preview_every: int = 1, min_interval: float = 0.1) -> None:
        self.signals = signals
        self.preview_every = max(0, int(preview_every))
        self.min_interval = min_interval
        self._last = 0.0
        self._preview_index: int | None = None
        self._fields_of_view: FieldsOfView | None = None

    def on_train_start(self, trainer: Any) -> None:
        dataset = trainer.eval_dataset if trainer.eval_dataset is not None else trainer.train_dataset
        self._preview_dataset = dataset
        self._training_dataset = trainer.train_dataset
        self._fields_of_view = None  # fitted on this run's training subjects when a preview first needs it
        # The subject with the most modalities, so that every modality can be shown against the real one.
        masks = getattr(dataset, "masks", None)
        if masks:
            counts = torch.stack([masks[m].long() for m in masks]).sum(0)
            self._preview_index = int(torch.argmax(counts))
        else:
            self._preview_index = 0
        self.signals.started.emit(str(trainer.run_dir or ""))

    def on_batch_end(self, trainer: Any, progress: BatchProgress) -> None:
        now = time.monotonic()
        if progress.batch <= 1 or progress.batch >= progress.num_batches or now - self._last >= self.min_interval:
            self._last = now
            self.signals.batch.emit(progress)

    def on_epoch_end(self, trainer: Any, record: EpochRecord) -> None:
        self.signals.epoch.emit(record)
        last = record.epoch == trainer.config.num_epochs
        if self.preview_every and self._preview_index is not None and (record.epoch % self.preview_every == 0 or last):
            try:
                sample = self._preview_dataset[self._preview_index]
                preview = synthesis_preview(trainer.model, sample, record.epoch, self._cohort_fields_of_view)
            except Exception as error:
                preview = SynthesisPreview("?", record.epoch, [], f"{type(error).__name__}: {error}")
            self.signals.preview.emit(preview)

    def _cohort_fields_of_view(self) -> FieldsOfView:
        """The training subjects' majority fields of view, fitted once, the first time a preview needs them."""
        if self._fields_of_view is None:
            self._fields_of_view = FieldsOfView.fit(self._training_dataset)
        return self._fields_of_view

    def on_checkpoint(self, trainer: Any, path: str) -> None:
        self.signals.checkpoint.emit(str(path))

    def on_pause(self, trainer: Any, paused: bool) -> None:
        self.signals.paused.emit(bool(paused))

    def on_warning(self, trainer: Any, warning: Any) -> None:
        self.signals.warning.emit(warning)


class _TrainingThread(QThread):
    def __init__(self, job: TrainingJob) -> None:
        super().__init__()
        self.job = job
        self.setObjectName("training")

    def run(self) -> None:
        self.job._run_in_thread()


class TrainingJob(QObject):
    """One training run in its own thread: new (``start_new``) or resumed (``start_resume``).

    Connect to :attr:`signals` before starting. ``pause``/``resume``/``stop``/``cancel`` only set flags
    that the trainer reads between steps, so they return at once. ``detach_progress`` disconnects the
    live signals (used on Cancel, so a cancelled run cannot draw into the next one); ``finished``,
    ``failed`` and ``cancelled`` stay connected.
    """

    def __init__(self, preview_every: int = 1, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.signals = TrainingSignals()
        self.control = TrainingControl()
        self.callback = QtTrainingCallback(self.signals, preview_every)
        self.run_dir: Path | None = None
        self.result: TrainingResult | None = None
        self.error: TaskError | None = None
        self._config: RunConfig | None = None
        self._loaded: LoadedData | None = None
        self._resume = False
        self._num_epochs: int | None = None
        self._thread: _TrainingThread | None = None

    # ------------------------------------------------------------------ start
    def start_new(self, config: RunConfig, run_dir: str | Path, loaded: LoadedData | None = None) -> None:
        self._config, self.run_dir, self._loaded, self._resume = config, Path(run_dir), loaded, False
        self._start()

    def start_resume(self, run_dir: str | Path, loaded: LoadedData | None = None, num_epochs: int | None = None) -> None:
        self.run_dir, self._loaded, self._resume, self._num_epochs = Path(run_dir), loaded, True, num_epochs
        self._start()

    def _start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("This training job has already been started; create a new one.")
        self._thread = _TrainingThread(self)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.isRunning()

    @property
    def thread(self) -> QThread | None:
        return self._thread

    # ------------------------------------------------------------------ control (any thread)
    def pause(self) -> None:
        self.control.pause()

    def resume(self) -> None:
        self.control.resume()

    def stop(self) -> None:
        """Finish the current step, save a checkpoint, end as 'stopped' (resumable)."""
        self.control.request_stop()

    def cancel(self) -> None:
        """End after the current step as 'cancelled'; the run folder and its last checkpoint are kept."""
        self.control.request_cancel()

    def detach_progress(self) -> None:
        for name in ("status", "data_progress", "data_loaded", "started", "batch", "epoch", "checkpoint", "paused", "preview"):
            try:
                getattr(self.signals, name).disconnect()
            except (RuntimeError, TypeError):
                pass

    def wait(self, timeout_ms: int = 30_000) -> bool:
        return self._thread.wait(timeout_ms) if self._thread is not None else True

    # ------------------------------------------------------------------ the thread's work
    def _interrupted(self) -> bool:
        return self.control.cancel_requested or self.control.stop_requested

    def _run_in_thread(self) -> None:
        signals, callback = self.signals, self.callback
        try:
            loaded = self._loaded
            if self._resume:
                if loaded is None:
                    from core.workflows.runs import load_run_config

                    data_config = load_run_config(self.run_dir / "config.yaml").data
                    loaded = self._load(data_config)
                signals.status.emit("Resuming from the last checkpoint")
                self.result = resume_run(self.run_dir, [callback], self.control, num_epochs=self._num_epochs, loaded=loaded)
            else:
                assert self._config is not None
                if loaded is None:
                    loaded = self._load(self._config.data)
                signals.status.emit("Building the model")
                self.result = train_run(self._config, self.run_dir, [callback], self.control, loaded=loaded)
        except Cancelled:
            signals.cancelled.emit()
        except BaseException as error:  # every worker error reaches the user
            self.error = TaskError.from_exception(error)
            signals.failed.emit(self.error)
        else:
            signals.finished.emit(self.result)

    def _load(self, data_config: Any) -> LoadedData:
        self.signals.status.emit("Loading data")
        loaded = load_data(data_config, progress=self._data_progress, cancel=self._interrupted)
        self.signals.data_loaded.emit(loaded)
        return loaded

    def _data_progress(self, done: int, total: int, message: str = "") -> None:
        self.signals.data_progress.emit(int(done), int(total), str(message))
