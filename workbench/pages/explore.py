"""The Explore page: where the cohort's subjects sit in a trained model's latent space.

The projection (:func:`core.workflows.projection.project_run`: PCA by default, t-SNE, UMAP when installed) is
computed in a background worker and cached in the run folder, so reopening it is instant. Points are
coloured by missingness pattern, split or any participants.tsv column; the small plots show the same
subjects encoded from each modality alone, on the same axes, to see whether the modalities agree. A
click on a point opens that subject on the Synthesize page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core.data.sources import LoadedData
from core.workflows.projection import METHOD_LABELS, METHODS, Projection, available_methods, project_run
from workbench.messages import MessageArea, plain_task_error
from workbench.pages._common import ProgressRow, page_header
from workbench.pages._runs import RunPicker, load_run_data_task, run_selection, show_cohort_note
from workbench.settings import Settings
from workbench.state import WorkbenchState
from workbench.widgets.projection_plot import ProjectionPlot
from workbench.workers import TaskError, TaskRunner, TaskState

__all__ = ["ExplorePage", "projection_task"]

_COLOUR_NAMES = {"missingness": "Modalities present (missingness pattern)", "split": "Split (train / validation / test)"}


def projection_task(run_dir: str, loaded: LoadedData | None, method: str, max_points: int,
                    state: TaskState) -> tuple[Projection, LoadedData]:
    """Prepare the run's data if needed, then project it (worker thread; cached in the run folder)."""
    if loaded is None:
        loaded = load_run_data_task(run_dir, state)
    state.set_status(f"Encoding every subject and computing the {METHOD_LABELS[method]} projection")
    projection = project_run(run_dir, loaded, method=method, max_points=max_points, progress=state.progress,
                             cancel=state.is_cancelled)
    return projection, loaded


class ExplorePage(QWidget):
    """Latent projection of a run's cohort (module docstring)."""

    status_message = Signal(str)

    def __init__(self, state: WorkbenchState, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.settings = settings
        self.selection = run_selection(state)
        self.runner = TaskRunner(self, "projection")
        self.projection: Projection | None = None
        self._shown_key: tuple[Any, ...] | None = None
        self._pending_key: tuple[Any, ...] | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(page_header(
            "Explore", "Where each subject sits in the trained model's latent space. Points are coloured by which "
            "modalities the subject has, by split, or by any participants.tsv column; the small plots encode the same "
            "subjects from one modality alone, on the same axes: if the modalities agree, a subject lands in the same "
            "place in each. Click a point to open that subject on the Synthesize page."))
        self.messages = MessageArea()
        layout.addWidget(self.messages)

        row = QHBoxLayout()
        row.addWidget(QLabel("Run"))
        self.run_picker = RunPicker()
        self.run_picker.currentIndexChanged.connect(self._run_chosen)
        self.run_picker.runs_listed.connect(self._runs_listed)
        row.addWidget(self.run_picker, 1)
        row.addWidget(QLabel("Projection"))
        self.method = QComboBox()
        self.method.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.method.setMinimumContentsLength(6)
        usable = available_methods()
        for m in METHODS:
            self.method.addItem(METHOD_LABELS[m] + ("" if m in usable else " (not installed)"), m)
            if m not in usable:
                item = self.method.model().item(self.method.count() - 1)
                item.setEnabled(False)
                item.setToolTip("Install the umap-learn package to use UMAP")
        self.method.setToolTip("PCA is exact and fast (axes fitted on the joint codes); t-SNE and UMAP show "
                               "neighbourhoods better but distances between clusters mean little")
        saved = str(settings.value("explore/method", "pca"))
        self.method.setCurrentIndex(max(0, self.method.findData(saved if saved in usable else "pca")))
        self.method.currentIndexChanged.connect(self._settings_changed)
        row.addWidget(self.method)
        row.addWidget(QLabel("Subjects"))
        self.max_points = QSpinBox()
        self.max_points.setRange(5, 50_000)
        self.max_points.setSingleStep(500)
        self.max_points.setValue(int(settings.value("explore/max_points", 2000) or 2000))
        self.max_points.setToolTip("At most this many subjects: larger cohorts are subsampled, stratified by missingness "
                                   "pattern (the plot says how many it shows)")
        self.max_points.editingFinished.connect(self._settings_changed)
        row.addWidget(self.max_points)
        row.addWidget(QLabel("Colour by"))
        self.colour_by = QComboBox()
        self.colour_by.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.colour_by.setMinimumContentsLength(12)
        self.colour_by.setToolTip("What the point colours show")
        self.colour_by.currentIndexChanged.connect(self._colour_changed)
        row.addWidget(self.colour_by)
        self.compute_button = QPushButton("Compute")
        self.compute_button.setObjectName("Primary")
        self.compute_button.setToolTip("Encode every subject and project (reused from the run folder when cached)")
        self.compute_button.clicked.connect(self.compute)
        row.addWidget(self.compute_button)
        layout.addLayout(row)

        self.progress = ProgressRow()
        self.progress.cancel_requested.connect(self.cancel)
        layout.addWidget(self.progress)
        info = QHBoxLayout()
        self.caption = QLabel("")
        self.caption.setObjectName("PageHint")
        self.caption.setWordWrap(True)
        self.agreement_label = QLabel("")
        self.agreement_label.setObjectName("PageHint")
        self.agreement_label.setWordWrap(True)
        self.agreement_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.agreement_label.setToolTip(
            "For each modality: the share of subjects whose code from that modality alone is closer to their own "
            "joint code than to any other subject's (in the latent space itself, not in 2D). Chance is 1/N.")
        info.addWidget(self.caption, 1)
        info.addWidget(self.agreement_label)
        layout.addLayout(info)
        self.plot = ProjectionPlot()
        self.plot.subject_clicked.connect(self.open_subject)
        layout.addWidget(self.plot, 1)

        self.runner.progress.connect(self.progress.set_progress)
        self.runner.status.connect(self.progress.set_status)
        self.runner.done.connect(self._projected)
        self.runner.failed.connect(self._failed)
        self.runner.cancelled.connect(self._cancelled)
        self.runner.running_changed.connect(lambda running: self.compute_button.setEnabled(not running))
        self.selection.run_changed.connect(self._selection_changed)
        state.cohort_changed.connect(self._show_cohort_note)
        self.refresh_runs()
        self.plot.show_message("Choose a trained run; its projection is computed in the background.")

    # ------------------------------------------------------------------ runs
    def runs_root(self) -> Path:
        return self.settings.runs_root()

    @Slot()
    def refresh_runs(self) -> None:
        """List the runs folder again, in the background (:meth:`_runs_listed` follows)."""
        keep = self.selection.run_dir or self.run_picker.current_run()
        self.run_picker.refresh(self.runs_root(), keep)

    @Slot()
    def _runs_listed(self) -> None:
        current = self.run_picker.current_run()
        if self.selection.run_dir is None and current is not None:
            self.selection.set_run(current)  # computes through _selection_changed when shown
        elif self.isVisible():
            self._compute_if_needed()
        self._show_cohort_note()

    def _compute_if_needed(self) -> None:
        """Compute when the shown projection is not the wanted one and no task is computing that one already."""
        key = self._wanted_key()
        if key is not None and key != self._shown_key and not (self.runner.is_running and key == self._pending_key):
            self.compute()

    def current_run(self) -> Path | None:
        return self.run_picker.current_run()

    @Slot(int)
    def _run_chosen(self, index: int) -> None:
        self.selection.set_run(self.run_picker.current_run())

    @Slot(str)
    def _selection_changed(self, path: str) -> None:
        if path and self.run_picker.findData(path) < 0:
            self.run_picker.refresh(self.runs_root(), Path(path))  # computed once listed (_runs_listed)
            return
        self.run_picker.select(path)
        if self.isVisible():
            self.compute()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh_runs()
        if not self.run_picker.waiting and self._wanted_key() != self._shown_key and not self.runner.is_running:
            self.compute()

    # ------------------------------------------------------------------ compute
    def _wanted_key(self) -> tuple[Any, ...] | None:
        run = self.current_run()
        return (str(run), self.method.currentData(), self.max_points.value()) if run else None

    @Slot()
    def _settings_changed(self) -> None:
        self.settings.set_value("explore/method", self.method.currentData())
        self.settings.set_value("explore/max_points", self.max_points.value())
        if self.current_run() is not None and self._wanted_key() != self._shown_key:
            self.compute()

    @Slot()
    def compute(self) -> None:
        """Project the selected run's cohort in the background (from the run's cache when there)."""
        run = self.current_run()
        if run is None:
            self.plot.show_message("No trained run yet. Train a model on the Train page; it appears here when it has "
                                   "a final model.")
            return
        self.messages.clear("projection")
        self._show_cohort_note()
        method = self.method.currentData()
        self.progress.start(f"{METHOD_LABELS[method]} projection of {run.name}")
        self._pending_key = self._wanted_key()
        self.runner.start(projection_task, str(run), self.selection.loaded_for(run), method, self.max_points.value())

    @Slot()
    def cancel(self) -> None:
        self.runner.cancel()

    @Slot(object)
    def _projected(self, result: tuple[Projection, LoadedData]) -> None:
        projection, loaded = result
        self.progress.finish()
        run = Path(self._pending_key[0]) if self._pending_key else None
        if run is not None:
            self.selection.remember(run, loaded)
        self.projection = projection
        self._shown_key = self._pending_key
        self._fill_colour_choices(projection)
        self.plot.set_projection(projection, self.colour_by.currentData())
        cached = " · read from the run's cache" if projection.from_cache else ""
        self.caption.setText(f"{projection.label()} of the posterior means · {projection.caption()}{cached}")
        parts = [f"{m} {a['retrieval']:.0%}" for m, a in projection.agreement.items()
                 if a.get("retrieval") is not None and a.get("n")]
        self.agreement_label.setText("Modality alone finds its subject: " + ", ".join(parts) if parts else "")
        self.status_message.emit(f"Projection ready: {projection.caption()}")

    @Slot()
    def _show_cohort_note(self) -> None:
        show_cohort_note(self.messages, self.state, self.current_run())

    def _fill_colour_choices(self, projection: Projection) -> None:
        current = self.colour_by.currentData() or str(self.settings.value("explore/colour_by", "missingness"))
        self.colour_by.blockSignals(True)
        self.colour_by.clear()
        for name, column in projection.colours.items():
            label = _COLOUR_NAMES.get(name, f"{name} (participants)")
            self.colour_by.addItem(label + (" · continuous" if column.kind == "continuous" else ""), name)
        self.colour_by.setCurrentIndex(max(0, self.colour_by.findData(current)))
        self.colour_by.blockSignals(False)

    @Slot(int)
    def _colour_changed(self, index: int) -> None:
        column = self.colour_by.currentData()
        if column:
            self.settings.set_value("explore/colour_by", column)
            self.plot.set_colour_by(column)

    def set_colour_by(self, column: str) -> None:
        index = self.colour_by.findData(column)
        if index >= 0:
            self.colour_by.setCurrentIndex(index)

    def _failed(self, error: TaskError) -> None:
        self.progress.finish()
        text, details = plain_task_error("The projection could not be computed", error)
        self.messages.error("projection", text, details)

    def _cancelled(self) -> None:
        self.progress.finish()
        self.messages.info("projection", "Projection cancelled.")

    # ------------------------------------------------------------------ subjects
    @Slot(str)
    def open_subject(self, subject: str) -> None:
        """Open ``subject`` on the Synthesize page (through the shared selection; no page calls another)."""
        self.plot.highlight(subject)
        self.status_message.emit(f"Opening {subject} on the Synthesize page")
        self.selection.request_subject(subject)
        go = getattr(self.window(), "go_to_page", None)
        pages = getattr(self.window(), "pages", [])
        for index, page in enumerate(pages):
            if type(page).__name__ == "SynthesizePage" and callable(go):
                go(index)

    def shutdown(self) -> bool:
        return all([self.runner.shutdown(), self.run_picker.shutdown()])

