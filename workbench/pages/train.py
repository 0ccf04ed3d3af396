"""The Train page: start, pause, stop or cancel a run in the background, watch it learn, resume it.

Training runs in a :class:`~workbench.workers.TrainingJob` (a QThread around ``core.workflows.runs.train_run``);
this page only reacts to its queued signals. Control buttons set flags the trainer reads between steps,
so every click returns at once and a step is never cut in half.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.config import ConfigError, config_to_dict
from core.training import (
    BatchProgress,
    EpochRecord,
    TrainingResult,
    TrainingWarning,
    format_seconds,
)
from core.workflows.runs import RunSummary, default_run_dir, load_run_config
from workbench.messages import MessageArea, plain_task_error
from workbench.pages._common import Card, badge, page_header
from workbench.pages._runs import list_runs_with_durations
from workbench.state import WorkbenchState
from workbench.widgets.elided_label import ElidedLabel
from workbench.widgets.loss_plot import LossPlot, change_since_first
from workbench.widgets.slice_preview import SliceGrid
from workbench.workers import QUEUED, SynthesisPreview, TaskError, TaskRunner, TrainingJob

__all__ = ["TrainPage", "unique_run_dir"]

RESUMABLE = ("stopped", "cancelled", "interrupted", "failed")
STALE_SECONDS = 10.0
_COLUMNS = ["Show", "Run", "Model", "Status", "Epochs", "Best val. loss", "Duration", "Updated"]


def unique_run_dir(root: Path, name: str) -> Path:
    """``<root>/<name>-<date>-<time>``, with a numeric suffix if that folder exists already."""
    base = default_run_dir(name, root)
    candidate, n = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{n}")
        n += 1
    return candidate


class TrainPage(QWidget):
    """Run control, honest progress, live curves, synthesis previews and the runs list."""

    status_message = Signal(str)
    training_state_changed = Signal(str)  # idle | loading | running | paused | stopping | cancelling
    run_started = Signal(str)
    runs_listed = Signal()  # the runs table was filled from a fresh read of the runs folder

    def __init__(self, state: WorkbenchState, runs_root: Path, preview_every: int = 1, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runs_root = Path(runs_root)
        self.job: TrainingJob | None = None
        self._discard_on_cancel = False  # a new run is deleted when cancelled; a resumed one keeps its checkpoints
        #: Ask before Cancel deletes finished epochs (tests switch it off).
        self.confirm_discard = True
        self._run_id: str | None = None
        self._phase = "idle"
        self._last_update = 0.0
        self._epoch_started = 0.0
        self._summaries: list[RunSummary] = []
        self._wanted_run: Path | None = None  # selected once the listing in progress shows it
        self._offered_recovery: set[str] = set()
        self.runs_runner = TaskRunner(self, "runs")
        self.runs_runner.done.connect(self._runs_read)
        self.runs_runner.failed.connect(self._runs_unreadable)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(page_header(
            "Train", "Training runs in the background. Pause it; Stop and keep saves a checkpoint to resume later; "
            "Cancel discards a new run."))
        self.messages = MessageArea()
        layout.addWidget(self.messages)

        # -- controls
        controls = QHBoxLayout()
        icons = self.style()
        self.start_button = QPushButton(icons.standardIcon(QStyle.StandardPixmap.SP_MediaPlay), "Start")
        self.start_button.setObjectName("Primary")
        self.start_button.setToolTip("Start training with the Model page's settings (Ctrl+Return)")
        self._pause_icon = icons.standardIcon(QStyle.StandardPixmap.SP_MediaPause)
        self._resume_icon = icons.standardIcon(QStyle.StandardPixmap.SP_MediaPlay)
        self.pause_button = QPushButton(self._pause_icon, "Pause")
        self.pause_button.setToolTip("Pause after the current step; training resumes where it stopped (Ctrl+P)")
        self.stop_button = QPushButton(icons.standardIcon(QStyle.StandardPixmap.SP_MediaStop), "Stop and keep")
        self.stop_button.setToolTip("Finish the current step, save a checkpoint and keep the run as 'stopped' "
                                    "(resume it later from the runs list)")
        self.cancel_button = QPushButton(icons.standardIcon(QStyle.StandardPixmap.SP_DialogCancelButton), "Cancel")
        self.cancel_button.setObjectName("Danger")
        self.cancel_button.setToolTip("Discard the run: end it after the current step and delete its folder. A resumed "
                                      "run keeps what it had before it was resumed. To keep the run, use Stop and "
                                      "keep (Ctrl+.)")
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.cancel_button.clicked.connect(self.cancel)
        for b in (self.start_button, self.pause_button, self.stop_button, self.cancel_button):
            controls.addWidget(b)
        self.state_badge = badge("idle")
        controls.addWidget(self.state_badge)
        self.run_label = ElidedLabel("")
        self.run_label.setObjectName("PageHint")
        controls.addWidget(self.run_label, 1)
        layout.addLayout(controls)
        self.blocker_label = QLabel("")
        self.blocker_label.setObjectName("PageHint")
        self.blocker_label.setWordWrap(True)
        layout.addWidget(self.blocker_label)

        # -- progress
        progress = Card("")
        grid = QHBoxLayout()
        left = QVBoxLayout()
        self.stage_label = QLabel("Not running")
        self.epoch_bar = QProgressBar()
        self.epoch_bar.setToolTip("Progress through the current epoch (training steps, then validation)")
        self.epoch_bar.setFormat("")
        left.addWidget(self.stage_label)
        left.addWidget(self.epoch_bar)
        right = QVBoxLayout()
        self.overall_label = QLabel("Overall")
        self.overall_bar = QProgressBar()
        self.overall_bar.setRange(0, 1000)
        self.overall_bar.setToolTip("Progress through the whole run, with the estimated time left")
        self.overall_bar.setFormat("")
        right.addWidget(self.overall_label)
        right.addWidget(self.overall_bar)
        grid.addLayout(left, 1)
        grid.addLayout(right, 1)
        progress.body.addLayout(grid)
        info_row = QHBoxLayout()
        self.loss_label = QLabel("")
        # Status texts wrap: a long one (a loss with its change, a cancel notice) must not widen the window.
        for label in (self.stage_label, self.overall_label, self.loss_label):
            label.setWordWrap(True)
        self.heartbeat = QLabel("")
        self.heartbeat.setObjectName("Heartbeat")
        self.heartbeat.setToolTip("Time since the training thread last reported; a slow step is not a freeze")
        self.checkpoint_label = QLabel("")
        self.checkpoint_label.setObjectName("PageHint")
        info_row.addWidget(self.loss_label, 1)
        info_row.addWidget(self.checkpoint_label)
        info_row.addWidget(self.heartbeat)
        progress.body.addLayout(info_row)
        layout.addWidget(progress)

        # -- curves and preview
        self.loss_plot = LossPlot()
        self.loss_plot.export_csv_action.triggered.connect(self._export_csv)
        self.loss_plot.export_png_action.triggered.connect(self._export_png)
        preview_card = Card("")
        row = QHBoxLayout()
        title = QLabel("Preview every")
        title.setObjectName("CardTitle")
        row.addWidget(title)
        self.preview_every = QSpinBox()
        self.preview_every.setRange(0, 1000)
        self.preview_every.setValue(preview_every)
        self.preview_every.setSuffix(" epochs")
        self.preview_every.setSpecialValueText("off")
        self.preview_every.setToolTip("How often to generate each modality of a fixed validation subject from its "
                                      "other modalities (middle axial slices: real above, generated below); 0 turns "
                                      "it off")
        self.preview_every.valueChanged.connect(self._preview_every_changed)
        row.addWidget(self.preview_every)
        self.preview_label = ElidedLabel("", Qt.TextElideMode.ElideRight)
        self.preview_label.setObjectName("PageHint")
        row.addWidget(self.preview_label, 1)
        self.preview_grid = SliceGrid(["real", "generated from"], planes=("axial",), transposed=True)
        self.preview_grid.setMinimumHeight(180)
        self.preview_grid.show_message("A preview appears after the first epoch.")
        preview_card.body.addLayout(row)
        preview_card.body.addWidget(self.preview_grid, 1)
        middle = QSplitter()
        middle.addWidget(self.loss_plot)
        middle.addWidget(preview_card)
        middle.setChildrenCollapsible(False)
        middle.setSizes([600, 460])

        # -- runs
        runs_card = Card("Runs")
        self.runs_table = QTableWidget(0, len(_COLUMNS))
        self.runs_table.setHorizontalHeaderLabels(_COLUMNS)
        self.runs_table.verticalHeader().setVisible(False)
        self.runs_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.runs_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.runs_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.runs_table.setAlternatingRowColors(True)
        header = self.runs_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.runs_table.itemSelectionChanged.connect(self._selection_changed)
        run_buttons = QHBoxLayout()
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Re-read the runs folder (F5)")
        self.refresh_button.clicked.connect(self.refresh_runs)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the selected stopped, cancelled, interrupted or failed run from its last "
                                      "checkpoint; its curves continue where they stopped")
        self.resume_button.clicked.connect(self.resume_selected)
        self.folder_button = QPushButton("Open folder")
        self.folder_button.setToolTip("Open the run folder (config.yaml, command.txt, metrics.csv, checkpoints, final_model)")
        self.folder_button.clicked.connect(self.open_selected_folder)
        self.command_button = QPushButton("Copy command")
        self.command_button.setToolTip("Copy the command line that reproduces the selected run headless")
        self.command_button.clicked.connect(self.copy_selected_command)
        self.command_label = QLabel("")
        self.command_label.setObjectName("PageHint")
        self.command_label.setWordWrap(True)
        for b in (self.refresh_button, self.resume_button, self.folder_button, self.command_button):
            run_buttons.addWidget(b)
        run_buttons.addWidget(self.command_label, 1)
        runs_card.body.addWidget(self.runs_table, 1)
        runs_card.body.addLayout(run_buttons)

        outer = QSplitter(Qt.Orientation.Vertical)
        outer.addWidget(middle)
        outer.addWidget(runs_card)
        outer.setSizes([600, 120])
        layout.addWidget(outer, 1)

        self.heartbeat_timer = QTimer(self)
        self.heartbeat_timer.setInterval(500)
        self.heartbeat_timer.timeout.connect(self._tick)
        self.state.run_config_changed.connect(self._update_buttons)
        self._set_phase("idle")
        self.refresh_runs()

    # ------------------------------------------------------------------ helpers
    @property
    def is_training(self) -> bool:
        return self.job is not None and self._phase not in ("idle",)

    def _set_phase(self, phase: str) -> None:
        self._phase = phase
        labels = {"idle": ("idle", ""), "loading": ("preparing", "warning"), "running": ("training", "ok"),
                  "paused": ("paused", "warning"), "stopping": ("stopping…", "warning"),
                  "cancelling": ("cancelling…", "warning")}
        text, level = labels[phase]
        self.state_badge.setText(text)
        self.state_badge.setProperty("level", level)
        self.state_badge.style().unpolish(self.state_badge)
        self.state_badge.style().polish(self.state_badge)
        if phase in ("idle",):
            self.heartbeat_timer.stop()
            self.heartbeat.setText("")
        elif not self.heartbeat_timer.isActive():
            self.heartbeat_timer.start()
        self._update_buttons()
        self.training_state_changed.emit(phase)

    @Slot()
    def _update_buttons(self) -> None:
        active = self._phase in ("loading", "running", "paused")
        blocker = self.state.start_blocker
        self.start_button.setEnabled(self._phase == "idle" and blocker is None and self.state.run_config is not None)
        self.start_button.setToolTip(blocker or "Start training with the Model page's settings (Ctrl+Return)")
        self.blocker_label.setText(f"Start is disabled: {blocker}" if blocker and self._phase == "idle" else "")
        self.pause_button.setEnabled(self._phase in ("running", "paused"))
        paused = self._phase == "paused"
        self.pause_button.setText("Resume" if paused else "Pause")
        self.pause_button.setIcon(self._resume_icon if paused else self._pause_icon)
        self.stop_button.setEnabled(active)
        self.cancel_button.setEnabled(active or self._phase == "stopping")
        summary = self.selected_run()
        self.resume_button.setEnabled(self._phase == "idle" and summary is not None and summary.status in RESUMABLE)
        for b in (self.folder_button, self.command_button):
            b.setEnabled(summary is not None)

    # ------------------------------------------------------------------ start / resume
    @Slot()
    def start(self) -> bool:
        """Start a new run with the Model page's configuration; returns False (with a message) if it cannot."""
        if self._phase != "idle":
            return False
        if self.state.start_blocker or self.state.run_config is None:
            self.messages.warning("start", self.state.start_blocker or "The configuration is not ready.")
            return False
        config = self.state.run_config
        run_dir = unique_run_dir(self.runs_root, config.name)
        loaded = self.state.loaded_for(config_to_dict(config.data))
        self.messages.clear()
        self._begin(run_dir, f"{config.model_name} · {run_dir.name}", fresh=True)
        assert self.job is not None
        self.job.start_new(config, run_dir, loaded)
        self.run_started.emit(str(run_dir))
        return True

    def resume_run(self, run_dir: str | Path) -> bool:
        """Continue a stopped, cancelled, interrupted or failed run; its earlier epochs stay on the plot."""
        if self._phase != "idle":
            return False
        run_dir = Path(run_dir)
        try:
            config = load_run_config(run_dir / "config.yaml")
        except (ConfigError, FileNotFoundError, ValueError) as error:
            self.messages.error("start", f"Cannot resume {run_dir.name}: {error}")
            return False
        loaded = self.state.loaded_for(config_to_dict(config.data))
        self.messages.clear()
        self._begin(run_dir, f"{config.model_name} · {run_dir.name} (resumed)", fresh=False)
        assert self.job is not None
        self.job.start_resume(run_dir, loaded)
        self.run_started.emit(str(run_dir))
        return True

    @Slot()
    def resume_selected(self) -> None:
        summary = self.selected_run()
        if summary is not None:
            self.resume_run(summary.path)

    def _begin(self, run_dir: Path, label: str, fresh: bool) -> None:
        job = TrainingJob(self.preview_every.value(), self)
        s = job.signals
        s.status.connect(self._on_status, QUEUED)
        s.data_progress.connect(self._on_data_progress, QUEUED)
        s.data_loaded.connect(self._on_data_loaded, QUEUED)
        s.started.connect(self._on_started, QUEUED)
        s.batch.connect(self._on_batch, QUEUED)
        s.epoch.connect(self._on_epoch, QUEUED)
        s.checkpoint.connect(self._on_checkpoint, QUEUED)
        s.warning.connect(self._on_warning, QUEUED)
        s.paused.connect(self._on_paused, QUEUED)
        s.preview.connect(self._on_preview, QUEUED)
        s.finished.connect(lambda result, j=job: self._on_finished(j, result), QUEUED)
        s.failed.connect(lambda error, j=job: self._on_failed(j, error), QUEUED)
        s.cancelled.connect(lambda j=job: self._on_load_cancelled(j), QUEUED)
        self.job = job
        self._run_id = str(run_dir)
        metrics = run_dir / "metrics.csv"
        if not fresh and metrics.is_file():
            self.loss_plot.load_metrics_csv(self._run_id, run_dir.name, metrics)
        else:
            self.loss_plot.add_run(self._run_id, run_dir.name)
        self._discard_on_cancel = fresh
        self.run_label.setText(label)
        self.stage_label.setText("Starting…")
        self.epoch_bar.setRange(0, 0)
        self.overall_bar.setRange(0, 0)
        self.overall_label.setText("Overall")
        self.loss_label.setText("")
        self.checkpoint_label.setText("")
        self.preview_grid.prepare_rows(self.state.modalities(), "A preview appears after the first epoch.")
        self._last_update = time.monotonic()
        self._set_phase("loading")

    # ------------------------------------------------------------------ controls
    @Slot()
    def toggle_pause(self) -> None:
        if self.job is None:
            return
        if self._phase == "paused":
            self.job.resume()
            self._set_phase("running")
            self.status_message.emit("Training resumed")
        elif self._phase == "running":
            self.job.pause()
            self.stage_label.setText(self.stage_label.text() + " — pausing after this step…")
            self.pause_button.setEnabled(False)

    @Slot()
    def stop(self) -> None:
        if self.job is None or self._phase not in ("loading", "running", "paused"):
            return
        self.job.stop()
        self._set_phase("stopping")
        self.stage_label.setText("Stopping: finishing the current step and saving a checkpoint…")

    @Slot()
    def cancel(self) -> bool:
        """Cancel: the run ends after the current step; the page shows 'cancelling' until the worker has
        ended, then discards a new run's folder. Returns False when nothing was cancelled."""
        job = self.job
        if job is None or self._phase in ("idle", "cancelling"):
            return False
        epochs = self.loss_plot.epochs(self._run_id) if self._run_id and self.loss_plot.has_run(self._run_id) else []
        if self.confirm_discard and self._discard_on_cancel and epochs:
            answer = QMessageBox.question(
                self, "Discard this run?", f"Cancel deletes this run and its {len(epochs)} finished epoch(s). "
                "Use Stop and keep to keep it and resume later.\n\nDiscard the run?",
                QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Discard:
                return False
        job.cancel()
        self._set_phase("cancelling")
        then = "then its folder is deleted" if self._discard_on_cancel else "it keeps its checkpoints from before this resume"
        self.stage_label.setText(f"Cancelling: the run ends after the current step; {then}…")
        for bar in (self.epoch_bar, self.overall_bar):
            if bar.maximum() == 0:  # a busy bar would keep animating after the click
                bar.setRange(0, 1)
                bar.setValue(0)
        self.status_message.emit("Cancelling training…")
        return True

    # ------------------------------------------------------------------ signals from the job
    @Slot(str)
    def _on_status(self, text: str) -> None:
        self._last_update = time.monotonic()
        self.stage_label.setText(text + "…")

    @Slot(int, int, str)
    def _on_data_progress(self, done: int, total: int, message: str) -> None:
        self._last_update = time.monotonic()
        if total > 0:
            self.epoch_bar.setRange(0, total)
            self.epoch_bar.setValue(done)
            self.epoch_bar.setFormat(f"preparing subject {done}/{total}")

    @Slot(object)
    def _on_data_loaded(self, loaded: Any) -> None:
        config = self.state.run_config
        if (config is not None and self.state.info is not None
                and self.state.data_key(config_to_dict(config.data)) == self.state.data_key()):
            self.state.set_loaded(loaded)

    @Slot(str)
    def _on_started(self, run_dir: str) -> None:
        self._last_update = time.monotonic()
        if self._phase == "loading":
            self._set_phase("running")
        self.stage_label.setText("Training: first step…")
        self.refresh_runs()

    @Slot(object)
    def _on_batch(self, p: BatchProgress) -> None:
        self._last_update = time.monotonic()
        if self._phase == "loading":
            self._set_phase("running")
        phase = "validation" if p.phase == "validation" else "training"
        stage = f"stage '{p.stage}' · " if p.stage != "train" else ""
        if self._phase not in ("stopping", "paused", "cancelling"):
            self.stage_label.setText(f"{stage}Epoch {p.epoch}/{p.num_epochs} · {phase} step {p.batch}/{p.num_batches}")
        self.epoch_bar.setRange(0, p.num_batches)
        self.epoch_bar.setValue(p.batch)
        self.epoch_bar.setFormat(f"{phase} %v/%m")
        self.overall_bar.setRange(0, 1000)
        self.overall_bar.setValue(int(round(1000 * p.overall_fraction)))
        self.overall_bar.setFormat(f"{100 * p.overall_fraction:.0f}%")
        eta = format_seconds(p.eta_seconds) if p.eta_seconds is not None else "estimating…"
        self.overall_label.setText(f"Overall · elapsed {format_seconds(p.elapsed_seconds)} · about {eta} left")
        if math.isfinite(p.loss):
            self.loss_label.setText(f"Current step loss {p.loss:.5g}")

    @Slot(object)
    def _on_epoch(self, record: EpochRecord) -> None:
        self._last_update = time.monotonic()
        if self._run_id is not None:
            self.loss_plot.add_record(self._run_id, record)
        val = record.validation.get("loss")
        text = f"Epoch {record.epoch}: train loss {record.train.get('loss', float('nan')):.5g}"
        if val is not None:
            change = change_since_first(self.loss_plot.first_value(self._run_id), val) if self._run_id else ""
            text += f", validation loss {val:.5g}" + (f" ({change})" if change else "")
            text += "  \u2605 best so far" if record.is_best else ""
        self.loss_label.setText(text + f" ({record.seconds:.1f} s)")
        self._update_current_row(record)

    @Slot(object)
    def _on_warning(self, warning: TrainingWarning) -> None:
        """A run-health warning (posterior collapse, divergence) while training goes on: say it here,
        where the run is watched; it is also kept in the run's status.json. An unused level beside active
        ones harms nothing, so it is news, not a warning."""
        say = self.messages.info if warning.kind == "unused_latent_level" else self.messages.warning
        say(f"training-{warning.kind}", f"Epoch {warning.epoch}: {warning.message}")

    def _update_current_row(self, record: EpochRecord) -> None:
        """Keep the running run's line of the runs list current without re-reading every run folder."""
        for row, summary in enumerate(self._summaries):
            if str(summary.path) != self._run_id:
                continue
            self.runs_table.item(row, 3).setText("running")
            self.runs_table.item(row, 4).setText(f"{record.epoch}/{summary.num_epochs}")
            best = self.loss_plot.best(self._run_id) if self._run_id and self.loss_plot.has_run(self._run_id) else None
            if best is not None:
                self.runs_table.item(row, 5).setText(f"{best[1]:.5g}")
            return

    @Slot(str)
    def _on_checkpoint(self, path: str) -> None:
        self.checkpoint_label.setText(f"checkpoint saved: {Path(path).name}")

    @Slot(bool)
    def _on_paused(self, paused: bool) -> None:
        self._last_update = time.monotonic()
        if paused:
            self._set_phase("paused")
            self.stage_label.setText("Paused between two steps. Press Resume to continue.")
        elif self._phase == "paused":
            self._set_phase("running")

    @Slot(object)
    def _on_preview(self, preview: SynthesisPreview) -> None:
        rows, notes = [], []
        for modality, real, generated, cond in preview.rows:
            source = "+".join(cond) if cond else "nothing else"
            tip = f"{modality} generated from {source}" + ("" if real is not None else " (no real one for this subject)")
            rows.append((modality, [real, generated], tip))
            notes.append(["" if real is not None else "missing",  # short: the modality columns are narrow
                          source if generated is not None else "no input"])
        if rows:
            self.preview_grid.set_rows(rows, notes=notes)
        else:
            self.preview_grid.show_message("No preview could be made.")
        self.preview_label.setText(f"Subject {preview.subject} (validation), epoch {preview.epoch}"
                                   + (f". Problem: {preview.error}" if preview.error else ""))

    def _finish_job(self, job: TrainingJob, cancelled: bool = False) -> bool:
        """Forget a finished job (discarding a cancelled new run); True if it was the current one.

        ``cancelled`` is what the worker reports, not what was clicked: a run that completed its last
        step before it read the Cancel is kept as completed."""
        if job is not self.job:
            return False
        self.job = None
        job.deleteLater()
        self._set_phase("idle")
        if cancelled:
            self._cancelled(job)
        self.refresh_runs()
        return True

    def _cancelled(self, job: TrainingJob) -> None:
        """The worker has ended after a Cancel: delete a new run's folder, say what is left."""
        run_dir = Path(job.run_dir) if job.run_dir else None
        self.epoch_bar.setRange(0, 1)
        self.epoch_bar.setValue(0)
        if run_dir is None:
            return
        if self._discard_on_cancel:
            if self._run_id is not None:
                self.loss_plot.remove_run(self._run_id)
            self._run_id = None
            if run_dir.resolve().is_relative_to(self.runs_root.resolve()) and run_dir.is_dir():
                shutil.rmtree(run_dir)
            text = f"Cancelled: run {run_dir.name} was discarded and its folder deleted."
        else:
            text = (f"Cancelled: run {run_dir.name} is kept as it was at its last checkpoint; resume it from the "
                    "runs list.")
        self.stage_label.setText(text)
        self.messages.info("result", text)
        self.status_message.emit("Training cancelled")

    def _on_finished(self, job: TrainingJob, result: TrainingResult) -> None:
        self.loss_plot.flush()
        if not self._finish_job(job, cancelled=result.status == "cancelled") or result.status == "cancelled":
            return
        self.epoch_bar.setRange(0, 1)
        self.epoch_bar.setValue(1 if result.status in ("completed", "early_stopped") else 0)
        self.epoch_bar.setFormat("")
        folder = str(result.run_dir or "")
        best = (f" Best validation loss {result.best_validation_loss:.5g} at epoch {result.best_epoch}."
                if result.best_validation_loss is not None else "")
        if result.status in ("completed", "early_stopped"):
            self.overall_bar.setRange(0, 1000)
            self.overall_bar.setValue(1000)
            self.overall_bar.setFormat("100%")
            done = "Finished" if result.status == "completed" else "Stopped early (no more improvement)"
            self.stage_label.setText(f"{done} after {result.epochs_completed} epochs in {format_seconds(result.seconds)}.")
            self.messages.info("result", f"{done}.{best} The model is in {folder}/final_model.",
                               action=("Open folder", lambda: self._open_folder(folder)))
        elif result.status == "stopped":
            self.stage_label.setText(f"Stopped and kept after {result.epochs_completed} epochs.")
            self.messages.info("result", f"Stopped and kept: {result.message}{best} Select it in the runs list and press "
                               "Resume to continue.", action=("Resume now", lambda: self.resume_run(folder)))
        else:
            self.stage_label.setText(f"Run ended: {result.status}.")
            self.messages.info("result", f"The run ended as '{result.status}': {result.message}")
        self.status_message.emit(f"Training {result.status}: {Path(folder).name}")

    def _on_failed(self, job: TrainingJob, error: TaskError) -> None:
        was_current = self._finish_job(job)
        run = Path(job.run_dir).name if job.run_dir else "the run"
        if was_current:
            self.stage_label.setText("The run failed.")
            self.epoch_bar.setRange(0, 1)
            self.overall_bar.setRange(0, 1000)
        text, details = plain_task_error(f"Training of {run} stopped", error)
        self.messages.error("failed", f"{text.rstrip('.')}. Its folder and last checkpoint are kept; after fixing the "
                            "cause you can resume it from the runs list.", details)
        self.status_message.emit(f"Training failed: {error.type_name}")

    def _on_load_cancelled(self, job: TrainingJob) -> None:
        self._finish_job(job, cancelled=True)

    # ------------------------------------------------------------------ heartbeat
    @Slot()
    def _tick(self) -> None:
        if self._phase == "paused":
            self.heartbeat.setText("paused")
            stale = False
        else:
            age = time.monotonic() - self._last_update
            stale = age > STALE_SECONDS
            self.heartbeat.setText(f"\u25cf last update {age:.0f} s ago — still working on the current step" if stale
                                   else f"\u25cf last update {age:.1f} s ago")
        if self.heartbeat.property("stale") != stale:
            self.heartbeat.setProperty("stale", stale)
            self.heartbeat.style().unpolish(self.heartbeat)
            self.heartbeat.style().polish(self.heartbeat)

    @Slot(int)
    def _preview_every_changed(self, value: int) -> None:
        if self.job is not None:
            self.job.callback.preview_every = value  # read by the training thread between epochs
        settings = getattr(self.window(), "settings", None)
        if settings is not None:
            settings.set_preview_every(max(1, value) if value else 1)

    # ------------------------------------------------------------------ runs list
    def set_runs_root(self, root: Path) -> None:
        self.runs_root = Path(root)
        self.refresh_runs()

    @Slot()
    def refresh_runs(self) -> None:
        """Re-read the runs folder in a worker thread (a share can be slow); the table fills when it is read.

        ``runs_listed`` is emitted then; a newer refresh discards an older one's result.
        """
        self.runs_runner.start(list_runs_with_durations, str(self.runs_root))

    @property
    def is_listing_runs(self) -> bool:
        return self.runs_runner.is_running

    @Slot(object)
    def _runs_read(self, listing: list[tuple[RunSummary, float | None]]) -> None:
        selected = self._wanted_run or (s.path if (s := self.selected_run()) is not None else None)
        self._wanted_run = None
        self.messages.clear("runs-folder")
        self._summaries = [summary for summary, _ in listing]
        table = self.runs_table
        table.blockSignals(True)
        table.setRowCount(len(listing))
        for row, (s, duration) in enumerate(listing):
            show = QCheckBox()
            show.setChecked(self.loss_plot.is_run_visible(str(s.path)))
            show.setToolTip("Overlay this run's curves on the plot")
            show.toggled.connect(lambda on, p=str(s.path), n=s.path.name: self._toggle_overlay(p, n, on))
            holder = QWidget()
            hl = QHBoxLayout(holder)
            hl.setContentsMargins(6, 0, 0, 0)
            hl.addWidget(show)
            table.setCellWidget(row, 0, holder)
            cells = [s.path.name, s.model, s.status, f"{s.epochs_completed}/{s.num_epochs}",
                     f"{s.best_validation_loss:.5g}" if s.best_validation_loss is not None else "—",
                     format_seconds(duration) if duration is not None else "—", s.updated[:19].replace("T", " ")]
            for col, text in enumerate(cells, start=1):
                item = QTableWidgetItem(text)
                item.setToolTip(str(s.path))
                table.setItem(row, col, item)
        table.blockSignals(False)
        if selected is not None:
            self.select_run(selected)
        self._offer_recovery()
        self._update_buttons()
        self.runs_listed.emit()

    @Slot(object)
    def _runs_unreadable(self, error: TaskError) -> None:
        """The runs folder could not be read (a share gone away): keep the table, say why."""
        self._wanted_run = None
        self.messages.warning("runs-folder", f"The runs folder {self.runs_root} could not be read: {error.message}. "
                              "The list shows what was read before; press Refresh (F5) to try again.")
        self.runs_listed.emit()

    def run_summaries(self) -> list[RunSummary]:
        return list(self._summaries)

    def _offer_recovery(self) -> None:
        for s in self._summaries:
            if s.status == "interrupted" and str(s.path) not in self._offered_recovery and self._phase == "idle":
                self._offered_recovery.add(str(s.path))
                self.messages.warning(
                    f"recover:{s.path}", f"Run {s.path.name} was interrupted at epoch {s.epochs_completed} of "
                    f"{s.num_epochs} (the application or the computer stopped). Its last checkpoint is kept.",
                    action=("Resume it", lambda p=s.path: self.resume_run(p)))

    def selected_run(self) -> RunSummary | None:
        rows = self.runs_table.selectionModel().selectedRows() if self.runs_table.selectionModel() else []
        if not rows or rows[0].row() >= len(self._summaries):
            return None
        return self._summaries[rows[0].row()]

    def select_run(self, path: str | Path) -> None:
        """Select a run in the table; one not listed yet is selected when the listing in progress ends."""
        for row, s in enumerate(self._summaries):
            if s.path == Path(path):
                self._wanted_run = None
                self.runs_table.selectRow(row)
                return
        if self.runs_runner.is_running:
            self._wanted_run = Path(path)

    @Slot()
    def _selection_changed(self) -> None:
        summary = self.selected_run()
        if summary is not None:
            command = summary.path / "command.txt"
            lines = ([ln for ln in command.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
                     if command.is_file() else [])
            self.command_label.setText(lines[0] if lines else "")
        self._update_buttons()

    def _toggle_overlay(self, path: str, label: str, on: bool) -> None:
        if path == self._run_id:
            self.loss_plot.set_run_visible(path, on)
            return
        if on:
            metrics = Path(path) / "metrics.csv"
            if metrics.is_file():
                self.loss_plot.load_metrics_csv(path, label, metrics)
        else:
            self.loss_plot.remove_run(path)

    @Slot()
    def open_selected_folder(self) -> None:
        summary = self.selected_run()
        if summary is not None:
            self._open_folder(str(summary.path))

    def _open_folder(self, path: str) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    @Slot()
    def copy_selected_command(self) -> None:
        if self.command_label.text():
            QGuiApplication.clipboard().setText(self.command_label.text())
            self.status_message.emit("Command copied")

    # ------------------------------------------------------------------ exports
    @Slot()
    def _export_csv(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self, "Export curves as CSV", str(self.runs_root / "curves.csv"), "CSV (*.csv)")
        if path:
            self.loss_plot.export_csv(path)
            self.status_message.emit(f"Curves written to {path}")

    @Slot()
    def _export_png(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self, "Save the plot as PNG", str(self.runs_root / "curves.png"), "PNG (*.png)")
        if path:
            self.loss_plot.export_png(path)
            self.status_message.emit(f"Plot saved to {path}")

    # ------------------------------------------------------------------ shutdown
    def active_jobs(self) -> list[TrainingJob]:
        return [self.job] if self.job is not None else []

    def shutdown(self, timeout_ms: int = 60_000) -> bool:
        """Stop every run (stop-and-keep, so it can be resumed) and wait for the threads to end, the runs
        folder's listing included (a QThread destroyed while it runs aborts the process)."""
        self.heartbeat_timer.stop()
        ok = self.runs_runner.shutdown()
        for job in self.active_jobs():
            if not job.control.cancel_requested:
                job.stop()
            job.resume()
            ok = job.wait(timeout_ms) and ok
        return ok
