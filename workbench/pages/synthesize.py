"""The Synthesize page: fill in the modality a subject lacks, see how sure the model is, take it to a viewer.

Pick a run and a subject, tick which of the subject's modalities to condition on and how many posterior
samples to draw; every other modality is generated in a background worker (:mod:`core.workflows.synthesis`): the
mean of the N decodings and their voxel-wise standard deviation as the uncertainty map. Linked
orthogonal views show real (where it exists), synthesized, difference and uncertainty side by side with
one crosshair and one window/level, and optionally an overlay of synthesized over real (blend or
checkerboard, with a slider); the value under the crosshair says that the page shows model space
(normalised intensity) while exports are in the source's units. Where the real volume exists the metrics
table scores the synthesis and the mean image of the training subjects (MSE, PSNR, SSIM, from
:mod:`core.metrics`). The last export opens in the desktop's default application ("Open in external viewer").

"Leave one out" hides a modality the subject has, synthesizes it from the others and shows the error:
the user's way to judge whether the model can be trusted. Beside it, one **verdict** per modality in plain
words, from a leave-one-out pass over every held-out subject against the training subjects' mean image
(:func:`core.workflows.synthesis.modality_verdicts`, computed in the background when a run opens and cached in the
run). Exporting a modality whose verdict is not a pass (failed, or not checked) asks for confirmation
first, for one volume as for a batch; the verdict goes into every sidecar and NIfTI description.
Synthesized modalities with observation masks (ultrasound) are shown and exported inside a field of view
only (:mod:`core.workflows.impute`); the uncertainty map has a colour bar in normalised intensity units.
Exports (NIfTI on the subject's original grid
with a provenance sidecar, optionally the uncertainty map), the batch export of every missing modality,
the per-subject metrics CSV and the HTML run report all run in the background with progress and Cancel;
a cancelled batch leaves no file behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QSize, Qt, QUrl, Signal, Slot
from PySide6.QtGui import QColor, QDesktopServices, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.data.sources import LoadedData
from core.training.trainer import select_device
from core.workflows.synthesis import (
    PASS_FRACTION,
    SubjectSynthesis,
    SynthesisContext,
    Verdict,
    export_missing,
    export_volume,
    leave_one_out,
    leave_one_out_table,
    modality_verdicts,
    synthesize_subject,
    unchecked_verdicts,
    write_metrics_csv,
)
from workbench.messages import MessageArea, plain_task_error
from workbench.pages._common import Card, ProgressRow, page_header
from workbench.pages._runs import RunPicker, load_run_data_task, run_selection, show_cohort_note
from workbench.settings import Settings
from workbench.state import WorkbenchState
from workbench.widgets.elided_label import ElidedLabel
from workbench.widgets.ortho_viewer import OrthoViewer, Panel
from workbench.workers import TaskError, TaskRunner, TaskState

__all__ = ["SynthesizePage", "open_run_task", "generate_task", "verdict_task", "export_missing_task", "metrics_csv_task",
           "report_task", "METRIC_HEADERS", "UNCERTAINTY_UNITS"]

METRIC_HEADERS = ["Modality", "Metric", "Model", "Mean", "Better"]
_METRICS = (("mse", "MSE", False), ("psnr", "PSNR (dB)", True), ("ssim", "SSIM", True))
#: The page shows volumes in model space; exports are in the source's units (their sidecar says which).
UNCERTAINTY_UNITS = "std of normalised intensity"
INTENSITY_UNITS = "normalised intensity"
#: After the value readout: what is displayed, and that an export is not in these units.
DISPLAYED_UNITS_NOTE = "displayed in model space (normalised intensity); exports are in the source's units"
_VERDICT_RULE_TEXT = (
    "Leave-one-out over every held-out subject (test, else validation) that has the modality: hidden, synthesized from "
    "the subject's other modalities and compared with the training subjects' mean image on the same voxels. A modality "
    f"passes when the synthesis has the lower MSE and the higher SSIM for at least {PASS_FRACTION:.0%} of them. Every export carries "
    "its modality's verdict.")


# ---------------------------------------------------------------------------------------------- tasks
# Plain functions run by TaskRunner in a worker thread: data in, result out, no widgets.
def open_run_task(run_dir: str, loaded: LoadedData | None, state: TaskState) -> tuple[SynthesisContext, LoadedData]:
    """Prepare the run's data if needed, load its final model, fit the mean-image baseline on its training subjects."""
    if loaded is None:
        loaded = load_run_data_task(run_dir, state)
    state.set_status("Loading the model and the training subjects' mean image")
    return SynthesisContext.from_run(run_dir, loaded, device=str(select_device("auto"))), loaded


def generate_task(ctx: SynthesisContext, subject: str, conditioning: list[str], n_samples: int, hidden: str | None,
                  state: TaskState) -> SubjectSynthesis:
    """One subject's synthesis (or leave-one-out check when ``hidden`` names a modality)."""
    state.set_status(f"Synthesizing {subject} from {'+'.join(conditioning)} ({n_samples} samples)")
    if hidden:
        return leave_one_out(ctx, subject, hidden, n_samples=n_samples)
    return synthesize_subject(ctx, subject, conditioning, n_samples=n_samples)


def verdict_task(ctx: SynthesisContext, state: TaskState) -> dict[str, Verdict]:
    """Every modality's verdict: the run's cache, or a leave-one-out pass over the held-out subjects."""
    state.set_status("Checking each modality against the average brain on the held-out subjects")
    return modality_verdicts(ctx, progress=state.progress, cancel=state.is_cancelled)


def export_volume_task(ctx: SynthesisContext, synthesis: SubjectSynthesis, modality: str, path: str, uncertainty: bool,
                       verdicts: dict[str, Verdict], state: TaskState) -> list[Any]:
    state.set_status(f"Writing {Path(path).name} on the subject's original grid")
    return [export_volume(ctx, synthesis, modality, path, uncertainty=uncertainty, overwrite=True, verdicts=verdicts)]


def export_missing_task(ctx: SynthesisContext, folder: str, n_samples: int, uncertainty: bool, overwrite: bool,
                        verdicts: dict[str, Verdict], state: TaskState) -> list[Any]:
    """Every missing modality of every subject, staged and moved into ``folder`` only when all are written."""
    state.set_status("Synthesizing and writing every missing modality")
    return export_missing(ctx, folder, n_samples=n_samples, uncertainty=uncertainty, overwrite=overwrite,
                          progress=state.progress, cancel=state.is_cancelled, verdicts=verdicts)


def metrics_csv_task(ctx: SynthesisContext, path: str, state: TaskState) -> Path:
    """Leave-one-out metrics of every subject and modality it has, as CSV."""
    state.set_status("Leave-one-out on every subject (each modality it has, from the others)")
    rows = leave_one_out_table(ctx, progress=state.progress, cancel=state.is_cancelled)
    return write_metrics_csv(rows, path)


def report_task(ctx: SynthesisContext, loaded: LoadedData, path: str, state: TaskState) -> Path:
    from core.workflows.report import write_report

    state.set_status("Writing the run report (curves, projection, metrics, synthesis panels)")
    return write_report(ctx.run_dir, path, loaded=loaded, model=ctx.model, progress=state.progress, cancel=state.is_cancelled)


#: What a failed background job of the export card is called in its message.
_BATCH_FAILED = {"export": "The export failed", "csv": "The metrics CSV could not be written",
                 "report": "The run report could not be written"}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


class _MetricsTable(QTableWidget):
    """A table that asks for no more height than its minimum (the side panel gives it what is left)."""

    def sizeHint(self) -> QSize:
        return QSize(super().sizeHint().width(), self.minimumHeight())


class SynthesizePage(QWidget):
    """Synthesis, leave-one-out checks and exports for one run (module docstring)."""

    status_message = Signal(str)

    def __init__(self, state: WorkbenchState, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.settings = settings
        self.selection = run_selection(state)
        self.runner = TaskRunner(self, "synthesis")
        self.batch_runner = TaskRunner(self, "export")
        self.verdict_runner = TaskRunner(self, "verdict")
        self.verdicts: dict[str, Verdict] | None = None
        self._verdict_error = ""
        self.gate_dialog: QMessageBox | None = None
        self.context: SynthesisContext | None = None
        self.loaded: LoadedData | None = None
        self.result: SubjectSynthesis | None = None
        self._context_run: Path | None = None
        self._pending_subject: str | None = None
        self._generate_after_open = False
        self._batch_what = ""

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.addWidget(page_header(
            "Synthesize", "Generate the modalities a subject lacks from those it has, with a voxel-wise uncertainty map "
            "(spread over the posterior samples). 'Leave one out' hides a modality the subject has and synthesizes it "
            "back, to show how far the model can be trusted. Exports overlay the subject's original files exactly.",
            compact=True))
        self.messages = MessageArea()
        layout.addWidget(self.messages)

        # -- run and subject
        row = QHBoxLayout()
        row.addWidget(QLabel("Run"))
        self.run_picker = RunPicker()
        self.run_picker.currentIndexChanged.connect(self._run_chosen)
        self.run_picker.runs_listed.connect(self._runs_listed)
        row.addWidget(self.run_picker, 1)
        row.addWidget(QLabel("Subject"))
        self.subject_box = QComboBox()
        self.subject_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.subject_box.setMinimumContentsLength(26)
        self.subject_box.setToolTip("The subject to synthesize; the list says which modalities each one lacks and its "
                                    "split (each item's tooltip: what it has)")
        self.subject_box.currentIndexChanged.connect(self._subject_chosen)
        row.addWidget(self.subject_box)
        self.only_incomplete = QCheckBox("only incomplete")
        self.only_incomplete.setToolTip("List only the subjects that lack at least one modality")
        self.only_incomplete.toggled.connect(self._fill_subjects)
        row.addWidget(self.only_incomplete)
        layout.addLayout(row)

        # -- conditioning, samples, actions
        row = QHBoxLayout()
        row.addWidget(QLabel("Condition on"))
        self.condition_row = QHBoxLayout()
        row.addLayout(self.condition_row)
        self.condition_boxes: dict[str, QCheckBox] = {}
        row.addSpacing(12)
        row.addWidget(QLabel("Samples"))
        self.samples = QSpinBox()
        self.samples.setRange(1, 256)
        self.samples.setValue(int(settings.value("synthesize/samples", 8) or 8))
        self.samples.setToolTip("Posterior samples N: the synthesis is their mean and the uncertainty map their voxel-wise "
                                "standard deviation (N = 1: the decoded posterior mean, no uncertainty)")
        self.samples.valueChanged.connect(lambda v: self.settings.set_value("synthesize/samples", v))
        row.addWidget(self.samples)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("Primary")
        self.generate_button.setToolTip("Generate every modality that is not ticked, from the ticked ones (Ctrl+G)")
        self.generate_button.setShortcut("Ctrl+G")
        self.generate_button.clicked.connect(self.generate)
        row.addWidget(self.generate_button)
        row.addSpacing(16)
        self.hide_box = QComboBox()
        self.hide_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.hide_box.setToolTip("The modality to hide (one the subject has)")
        row.addWidget(self.hide_box)
        self.loo_button = QPushButton("Leave one out")
        self.loo_button.setToolTip("Hide the chosen modality, synthesize it from the subject's other modalities and compare "
                                   "with the real one")
        self.loo_button.clicked.connect(self.leave_one_out)
        row.addWidget(self.loo_button)
        row.addStretch(1)
        layout.addLayout(row)
        self.progress = ProgressRow()
        self.progress.cancel_requested.connect(self.runner.cancel)
        layout.addWidget(self.progress)

        # -- viewer
        viewer_card = Card("")
        viewer_card.layout().setContentsMargins(6, 6, 6, 6)  # the planes get the pixels
        head = QHBoxLayout()
        self.result_label = ElidedLabel("Nothing generated yet.", Qt.TextElideMode.ElideRight)
        self.result_label.setObjectName("CardTitle")
        head.addWidget(self.result_label, 1)
        head.addWidget(QLabel("Show"))
        self.modality_box = QComboBox()
        self.modality_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.modality_box.setToolTip("Which generated modality the views show")
        self.modality_box.currentIndexChanged.connect(self._show_modality)
        head.addWidget(self.modality_box)
        viewer_card.body.addLayout(head)
        # The views get the height: the crosshair and window boxes fold away, the checks sit in the side panel.
        self.viewer = OrthoViewer(controls_expanded=False)
        self.viewer.units_note = DISPLAYED_UNITS_NOTE
        self.viewer.shown_changed.connect(self._columns_chosen)
        self._chosen_columns: list[str] | None = None  # the user's choice of columns (None: the page's default)
        viewer_card.body.addWidget(self.viewer, 1)

        # -- the model's check, metrics and exports
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        verdict_card = Card("Against the average brain")
        self.verdict_label = QLabel("Open a run to check its model.")
        self.verdict_label.setWordWrap(True)
        self.verdict_label.setTextFormat(Qt.TextFormat.RichText)
        self.verdict_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.verdict_label.setToolTip(_VERDICT_RULE_TEXT)
        self.verdict_label.setObjectName("PageHint")
        verdict_card.body.addWidget(self.verdict_label)
        self.verdict_progress = ProgressRow(stacked=True)
        self.verdict_progress.cancel_requested.connect(self.verdict_runner.cancel)
        verdict_card.body.addWidget(self.verdict_progress)
        side_layout.addWidget(verdict_card)
        metrics_card = Card("Against the real volume")
        self.metrics_table = _MetricsTable(0, len(METRIC_HEADERS))
        self.metrics_table.setHorizontalHeaderLabels(METRIC_HEADERS)
        self.metrics_table.verticalHeader().setVisible(False)
        self.metrics_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.metrics_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.metrics_table.horizontalHeaderItem(3).setToolTip("The voxel-wise mean image of the run's training subjects")
        self.metrics_table.horizontalHeaderItem(4).setToolTip("Is the synthesis closer to the real volume than the mean image?")
        # Every header and value reads whole: columns sized to their contents, the last one takes what is left, and the
        # table never gets narrower than its widest plausible row (so the side panel keeps that width).
        header = self.metrics_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(METRIC_HEADERS) - 1, QHeaderView.ResizeMode.Stretch)
        self.metrics_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Every row shows (the side panel scrolls in a short window, the table never does, so no scroll bar takes
        # width from its columns); it takes what height the side panel has left.
        self.metrics_table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        policy = self.metrics_table.sizePolicy()
        policy.setVerticalPolicy(QSizePolicy.Policy.Expanding)
        self.metrics_table.setSizePolicy(policy)
        self._fit_metrics_height()
        self.metrics_table.setToolTip("Over the observed voxels of the real volume. PSNR and SSIM use the modality's "
                                      "intensity range over the run's training subjects; the mean image is the voxel-wise "
                                      "mean of the training subjects (the baseline a model must beat).")
        metrics_card.body.addWidget(self.metrics_table, 1)
        self.metrics_note = QLabel("")
        self.metrics_note.setObjectName("PageHint")
        self.metrics_note.setWordWrap(True)
        metrics_card.body.addWidget(self.metrics_note)
        export_card = Card("Export")
        self.with_uncertainty = QCheckBox("with the uncertainty map")
        self.with_uncertainty.setToolTip("Also write the voxel-wise standard deviation over the samples, as "
                                         "<name>_std.nii.gz beside each volume")
        self.with_uncertainty.setChecked(bool(settings.value("synthesize/uncertainty", True) not in (False, "false")))
        self.with_uncertainty.toggled.connect(lambda on: self.settings.set_value("synthesize/uncertainty", on))
        self.export_button = QPushButton("Export this volume…")
        self.export_button.setToolTip("The shown synthesized modality as NIfTI on the subject's original grid, with a JSON "
                                      "provenance sidecar")
        self.export_button.clicked.connect(lambda: self.export_current())
        self.export_all_button = QPushButton("Export all missing…")
        self.export_all_button.setToolTip("Synthesize every missing modality of every subject (N samples) and write them "
                                          "all into a folder; nothing is written if cancelled")
        self.export_all_button.clicked.connect(lambda: self.export_all_missing())
        self.csv_button = QPushButton("Metrics CSV…")
        self.csv_button.setToolTip("Leave-one-out metrics of every subject and every modality it has, beside the mean "
                                   "image, as CSV")
        self.csv_button.clicked.connect(lambda: self.write_metrics_csv())
        self.report_button = QPushButton("Run report…")
        self.report_button.setToolTip("A self-contained HTML report: configuration, curves, projection, metrics and "
                                      "synthesis panels (also: mmvae report RUN --out report.html)")
        self.report_button.clicked.connect(lambda: self.write_report())
        export_card.body.addWidget(self.with_uncertainty)
        # A grid of buttons that keeps the side panel no wider than the metrics table (the viewer gets the rest).
        buttons = QGridLayout()
        buttons.setSpacing(6)
        for i, button in enumerate((self.export_button, self.export_all_button, self.csv_button, self.report_button)):
            buttons.addWidget(button, i // 2, i % 2)
        export_card.body.addLayout(buttons)
        self.external_button = QPushButton("Open in external viewer")
        self.external_button.setToolTip("Open the last exported volume in the desktop's default application for NIfTI "
                                        "files (e.g. ITK-SNAP or 3D Slicer), in its source units")
        self.external_button.setEnabled(False)
        self.external_button.clicked.connect(lambda: self.open_in_external_viewer())
        export_card.body.addWidget(self.external_button)
        self.last_export: Path | None = None
        self.batch_progress = ProgressRow(stacked=True)
        self.batch_progress.cancel_requested.connect(self.cancel_batch)
        export_card.body.addWidget(self.batch_progress)
        self.export_label = QLabel("")
        self.export_label.setObjectName("PageHint")
        self.export_label.setWordWrap(True)
        self.export_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        export_card.body.addWidget(self.export_label)
        side_layout.addWidget(metrics_card, 1)
        side_layout.addWidget(export_card)
        # A short window scrolls the side panel rather than squeezing its cards.
        self.side = side
        self.side_scroll = QScrollArea()
        self.side_scroll.setWidget(side)
        self.side_scroll.setWidgetResizable(True)
        self.side_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.side_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        # The viewer takes every pixel the side panel does not need (drag the handle for a wider panel).
        self.splitter = QSplitter()
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setHandleWidth(4)
        self.splitter.addWidget(viewer_card)
        self.splitter.addWidget(self.side_scroll)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setSizes([10_000, 1])
        layout.addWidget(self.splitter, 1)

        self.runner.progress.connect(self.progress.set_progress)
        self.runner.status.connect(self.progress.set_status)
        self.runner.done.connect(self._task_done)
        self.runner.failed.connect(self._task_failed)
        self.runner.cancelled.connect(self._task_cancelled)
        self.runner.running_changed.connect(lambda _: self._update_buttons())
        self.batch_runner.progress.connect(self.batch_progress.set_progress)
        self.batch_runner.status.connect(self.batch_progress.set_status)
        self.batch_runner.done.connect(self._batch_done)
        self.batch_runner.failed.connect(self._batch_failed)
        self.batch_runner.cancelled.connect(self._batch_cancelled)
        self.batch_runner.running_changed.connect(lambda _: self._update_buttons())
        self.verdict_runner.progress.connect(self.verdict_progress.set_progress)
        self.verdict_runner.status.connect(self.verdict_progress.set_status)
        self.verdict_runner.done.connect(self._verdicts_done)
        self.verdict_runner.failed.connect(self._verdicts_failed)
        self.verdict_runner.cancelled.connect(self._verdicts_cancelled)
        self.selection.run_changed.connect(self._selection_changed)
        self.selection.subject_requested.connect(self.open_subject)
        state.cohort_changed.connect(self._show_cohort_note)
        self.viewer.clear("Choose a run and a subject, then Generate (or Leave one out).")
        self.refresh_runs()
        self._update_buttons()

    # ------------------------------------------------------------------ runs
    @Slot()
    def refresh_runs(self) -> None:
        """List the runs folder again, in the background (:meth:`_runs_listed` follows)."""
        keep = self.selection.run_dir or self.run_picker.current_run()
        self.run_picker.refresh(self.settings.runs_root(), keep)

    @Slot()
    def _runs_listed(self) -> None:
        current = self.run_picker.current_run()
        if self.selection.run_dir is None and current is not None:
            self.selection.set_run(current)  # opened through _selection_changed when wanted
        elif current != self._context_run and (self.isVisible() or self._pending_subject or self._context_run is not None):
            self.open_run()
        self._show_cohort_note()

    @Slot(int)
    def _run_chosen(self, index: int) -> None:
        self.selection.set_run(self.run_picker.current_run())

    @Slot(str)
    def _selection_changed(self, path: str) -> None:
        if path and self.run_picker.findData(path) < 0:
            self.run_picker.refresh(self.settings.runs_root(), Path(path))  # opened once listed (_runs_listed)
            return
        self.run_picker.select(path)
        if self.isVisible() or self._pending_subject or self._context_run is not None:
            self.open_run()

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() in (QEvent.Type.StyleChange, QEvent.Type.FontChange):
            self._fit_metrics_table()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._fit_metrics_table()
        self.refresh_runs()
        if not self.run_picker.waiting and self.run_picker.current_run() != self._context_run:
            self.open_run()

    def open_run(self) -> None:
        """Prepare the selected run (data, model, baseline) in the background."""
        run = self.run_picker.current_run()
        if run is None:
            self.viewer.clear("No trained run yet. Train a model on the Train page; it appears here when it has a final "
                              "model.")
            return
        if run == self._context_run and self.context is not None:
            return
        self.context, self._context_run = None, run
        self._clear_result(f"Opening {run.name}…")
        self.result_label.setText(f"Opening {run.name}…")
        self.verdict_runner.cancel()
        self.verdict_progress.finish()
        self.verdicts, self._verdict_error = None, ""
        self.verdict_label.setText("The model is checked when the run is open.")
        self.messages.clear("run")
        self._show_cohort_note()
        self.progress.start(f"Opening {run.name}")
        self._update_buttons()
        self.runner.start(open_run_task, str(run), self.selection.loaded_for(run))

    @Slot()
    def _show_cohort_note(self) -> None:
        show_cohort_note(self.messages, self.state, self.run_picker.current_run())

    # ------------------------------------------------------------------ subjects and conditioning
    def subjects(self) -> list[str]:
        return list(self.context.dataset.ids) if self.context is not None else []

    @Slot()
    def _fill_subjects(self) -> None:
        ctx = self.context
        current = self.current_subject()
        self.subject_box.blockSignals(True)
        self.subject_box.clear()
        if ctx is not None:
            for s in ctx.dataset.ids:
                missing = ctx.missing(s)
                if self.only_incomplete.isChecked() and not missing:
                    continue
                split = ctx.split.get(s)
                # Short enough to read whole in the closed box: what it lacks (the rest it has) and its split.
                text = f"{s} · " + (f"lacks {', '.join(missing)}" if missing else "complete") + (f" · {split}" if split else "")
                self.subject_box.addItem(text, s)
                self.subject_box.setItemData(self.subject_box.count() - 1, f"{s} has {', '.join(ctx.observed(s)) or 'nothing'}"
                                             + (f" and lacks {', '.join(missing)}" if missing else "")
                                             + (f" ({split} subject)" if split else ""), Qt.ItemDataRole.ToolTipRole)
        view = self.subject_box.view()  # the open list shows every label whole, however narrow the closed box
        view.setMinimumWidth(view.sizeHintForColumn(0) + view.verticalScrollBar().sizeHint().width() + 8
                             if self.subject_box.count() else 0)
        index = self.subject_box.findData(current) if current else -1
        self.subject_box.setCurrentIndex(max(index, 0) if self.subject_box.count() else -1)
        self.subject_box.blockSignals(False)
        self._subject_chosen()

    def current_subject(self) -> str | None:
        data = self.subject_box.currentData()
        return str(data) if data else None

    def select_subject(self, subject: str) -> bool:
        index = self.subject_box.findData(subject)
        if index < 0 and self.only_incomplete.isChecked():
            self.only_incomplete.setChecked(False)
            index = self.subject_box.findData(subject)
        if index < 0:
            return False
        self.subject_box.setCurrentIndex(index)
        return True

    @Slot()
    def _subject_chosen(self) -> None:
        ctx, subject = self.context, self.current_subject()
        if self.result is not None and subject != self.result.subject:
            self._clear_result(f"Generate (or Leave one out) to see {subject}." if subject else "Choose a subject.")
        for box in self.condition_boxes.values():
            self.condition_row.removeWidget(box)
            box.deleteLater()
        self.condition_boxes = {}
        self.hide_box.clear()
        if ctx is None or subject is None:
            self._update_buttons()
            return
        observed = ctx.observed(subject)
        for m in ctx.modalities:
            box = QCheckBox(m)
            box.setChecked(m in observed)
            box.setEnabled(m in observed)
            box.setToolTip(f"Condition on {m}" if m in observed else f"{subject} has no {m}: it can only be generated")
            box.toggled.connect(self._update_buttons)
            self.condition_row.addWidget(box)
            self.condition_boxes[m] = box
        if len(observed) >= 2:
            for m in observed:
                self.hide_box.addItem(f"hide {m}", m)
        self._update_buttons()

    def conditioning(self) -> list[str]:
        return [m for m, box in self.condition_boxes.items() if box.isChecked() and box.isEnabled()]

    def set_conditioning(self, modalities: list[str]) -> None:
        for m, box in self.condition_boxes.items():
            box.setChecked(m in modalities and box.isEnabled())

    @Slot(str)
    def open_subject(self, subject: str) -> None:
        """Show ``subject`` (asked by the Explore page) and synthesize its modalities with the current settings."""
        self._pending_subject = subject
        if self.context is not None and self._context_run == self.run_picker.current_run():
            self._apply_pending_subject()
        elif not self.runner.is_running and not self.run_picker.waiting:  # else opened once listed
            self.open_run()

    def _apply_pending_subject(self) -> None:
        subject, self._pending_subject = self._pending_subject, None
        if subject and self.select_subject(subject):
            self.generate()

    # ------------------------------------------------------------------ generate
    def _update_buttons(self) -> None:
        ready = self.context is not None and not self.runner.is_running
        subject = self.current_subject()
        cond = self.conditioning()
        can_generate = ready and subject is not None and bool(cond) and len(cond) < len(self.condition_boxes)
        self.generate_button.setEnabled(can_generate)
        if ready and subject is not None and not cond:
            self.generate_button.setToolTip("Tick at least one modality the subject has to condition on")
        elif ready and subject is not None and len(cond) == len(self.condition_boxes):
            self.generate_button.setToolTip("Every modality is ticked: untick one to generate it")
        else:
            self.generate_button.setToolTip("Generate every modality that is not ticked, from the ticked ones (Ctrl+G)")
        self.loo_button.setEnabled(ready and self.hide_box.count() > 0)
        self.loo_button.setToolTip("Hide the chosen modality, synthesize it from the subject's other modalities and compare "
                                   "with the real one" if self.hide_box.count() or not ready
                                   else "This subject has a single modality: nothing is left to synthesize it from")
        has_result = self.result is not None and bool(self.modality_box.currentData())
        batch_busy = self.batch_runner.is_running
        self.export_button.setEnabled(has_result and not batch_busy)
        for button in (self.export_all_button, self.csv_button, self.report_button):
            button.setEnabled(self.context is not None and not batch_busy)
        self.external_button.setEnabled(self.last_export is not None and not batch_busy)
        for widget in (self.subject_box, self.only_incomplete):
            widget.setEnabled(self.context is not None)

    @Slot()
    def generate(self) -> None:
        """Generate every unticked modality from the ticked ones, in the background."""
        subject, cond = self.current_subject(), self.conditioning()
        if self.context is None or subject is None or not cond:
            return
        self.messages.clear("generate")
        self.progress.start(f"Synthesizing {subject}")
        self.runner.start(generate_task, self.context, subject, cond, self.samples.value(), None)

    @Slot()
    def leave_one_out(self) -> None:
        """Hide the chosen modality and synthesize it back from the subject's other modalities."""
        subject, hidden = self.current_subject(), self.hide_box.currentData()
        if self.context is None or subject is None or not hidden:
            return
        others = [m for m in self.context.observed(subject) if m != hidden]
        self.set_conditioning(others)
        self.messages.clear("generate")
        self.progress.start(f"Leave one out: {hidden} of {subject}")
        self.runner.start(generate_task, self.context, subject, others, self.samples.value(), hidden)

    def set_hidden(self, modality: str) -> None:
        index = self.hide_box.findData(modality)
        if index >= 0:
            self.hide_box.setCurrentIndex(index)

    @Slot(object)
    def _task_done(self, result: Any) -> None:
        self.progress.finish()
        if isinstance(result, SubjectSynthesis):
            self._show_result(result)
            return
        ctx, loaded = result
        self.context, self.loaded = ctx, loaded
        self.selection.remember(Path(ctx.run_dir), loaded)
        self._fill_subjects()
        self.viewer.clear("Choose a subject, tick what to condition on, then Generate (or Leave one out).")
        self._show_run_title()
        self.status_message.emit(f"Run {Path(ctx.run_dir).name} ready")
        self.check_model()
        if self._pending_subject:
            self._apply_pending_subject()
        self._update_buttons()

    # ------------------------------------------------------------------ verdict
    def check_model(self) -> None:
        """Compute (or read from the run's cache) every modality's verdict in the background."""
        if self.context is None:
            return
        self.verdict_label.setText("Checking every modality on the held-out subjects…")
        self.verdict_progress.start("Leave-one-out on the held-out subjects")
        self.verdict_runner.start(verdict_task, self.context)

    def _verdicts_done(self, verdicts: dict[str, Verdict]) -> None:
        self.verdict_progress.finish()
        self.verdicts = verdicts
        self._render_verdicts()

    def _render_verdicts(self) -> None:
        """The shown modality's verdict in full and the others in a few words (all in full before a synthesis)."""
        if not self.verdicts:
            return

        def coloured(v: Verdict, text: str) -> str:
            colour = "#2e7d32" if v.passed else ("#c62828" if v.passed is False else "#8a6d00")
            return f"<b>{v.modality}</b>: <span style='color:{colour}'>{text}</span>"

        every = "<br>".join(coloured(v, v.text) for v in self.verdicts.values())
        self.verdict_label.setToolTip(f"{every}<br><br>{_VERDICT_RULE_TEXT}")
        shown = self.modality_box.currentData() if self.result is not None else None
        if shown not in self.verdicts:
            self.verdict_label.setText(every)
            return
        others = [coloured(v, ("better" if v.passed else "not better" if v.passed is False else "not checked") +
                           (f" ({v.n_better} of {v.n_subjects})" if v.n_subjects else ""))
                  for m, v in self.verdicts.items() if m != shown]
        self.verdict_label.setText(coloured(self.verdicts[shown], self.verdicts[shown].text) +
                                   ("<br>Than the average brain, the others: " + " · ".join(others) if others else ""))

    def _verdicts_failed(self, error: TaskError) -> None:
        self.verdict_progress.finish()
        self._verdict_error = error.message
        text, details = plain_task_error("The check against the average brain could not be made", error)
        self.verdict_label.setText(f"{text} Exports will ask before writing.")
        self.messages.error("verdict", text, details)

    def _verdicts_cancelled(self) -> None:
        self.verdict_progress.finish()
        if self.context is not None:
            self._verdict_error = "the check was cancelled"
            self.verdict_label.setText("The check was cancelled; exports will ask before writing.")

    def verdict_text(self, modality: str) -> str:
        """The verdict in words, as the page shows it ("" while it is being checked)."""
        return self.verdicts[modality].text if self.verdicts and modality in self.verdicts else ""

    def _export_verdicts(self) -> dict[str, Verdict]:
        """The verdicts written into exports: the check's, or 'not checked' with the reason."""
        if self.verdicts is not None:
            return self.verdicts
        reason = self._verdict_error or "the check was still running when this was exported"
        return unchecked_verdicts(self.context.modalities if self.context else [], reason)

    def _gated(self, modalities: list[str], what: str, proceed: Callable[[], None], confirmed: bool) -> None:
        """Run ``proceed`` at once when every modality passed its check (or ``confirmed``), else after the user
        confirms in a dialog that says which modalities did not pass and why."""
        verdicts = self._export_verdicts()
        failing = [verdicts[m] for m in modalities if m in verdicts and not verdicts[m].passed]
        if confirmed or not failing:
            proceed()
            return
        box = QMessageBox(QMessageBox.Icon.Warning, "Export a synthesis that did not pass its check?",
                          f"{what}: the model did not pass the check against the average brain for "
                          f"{', '.join(v.modality for v in failing)}.", parent=self)
        box.setInformativeText("<br>".join(f"<b>{v.modality}</b>: {v.text}" for v in failing) +
                               "<br><br>The verdict is written into the sidecar and the NIfTI description.")
        box.addButton("Export anyway", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)

        def finished() -> None:
            self.gate_dialog = None
            if box.buttonRole(box.clickedButton()) == QMessageBox.ButtonRole.AcceptRole:
                proceed()
            else:
                self.export_label.setText("Export cancelled: nothing was written.")
            box.deleteLater()

        box.finished.connect(finished)
        self.gate_dialog = box
        box.open()

    def _clear_result(self, hint: str) -> None:
        """Drop the shown synthesis (views, metrics, modality list) so another subject's or run's is never shown
        as if it were the current one."""
        self.result = None
        self.viewer.clear(hint)
        self.modality_box.clear()
        self.metrics_table.setRowCount(0)
        self._fit_metrics_height()
        self.metrics_note.setText("")
        if self.context is not None:
            self._show_run_title()
        self._render_verdicts()
        self._update_buttons()

    def _show_run_title(self) -> None:
        ctx = self.context
        assert ctx is not None
        self.result_label.setText(f"{ctx.model.name} · {len(ctx.dataset.ids)} subjects · modalities "
                                  f"{', '.join(ctx.modalities)}")

    def _show_result(self, result: SubjectSynthesis) -> None:
        self.result = result
        what = (f"Leave one out: {result.hidden} hidden" if result.hidden else "Synthesized") + \
            f" · {result.subject} from {'+'.join(result.conditioning)} · N = {result.n_samples}"
        if result.not_generated:  # the model cannot make these (a CVAE makes only its main modality)
            what += f" · not generated: {', '.join(result.not_generated)} ({next(iter(result.not_generated.values()))})"
        self.result_label.setText(what)
        self.modality_box.blockSignals(True)
        self.modality_box.clear()
        for m in result.results:
            item = result.results[m]
            self.modality_box.addItem(m + ("  (real exists)" if item.real is not None else "  (missing)"), m)
        preferred = result.hidden or next((m for m, r in result.results.items() if r.real is None), None)
        index = self.modality_box.findData(preferred) if preferred else 0
        self.modality_box.setCurrentIndex(max(0, index))
        self.modality_box.blockSignals(False)
        self._show_modality()
        self._fill_metrics(result)
        self._update_buttons()
        self.status_message.emit(what)

    @Slot()
    def _show_modality(self) -> None:
        result, m = self.result, self.modality_box.currentData()
        if result is None or not m:
            return
        item = result.results[m]
        std_note = "0 everywhere: one sample" if result.n_samples == 1 else f"std over {result.n_samples} samples"
        fov = item.field_of_view
        where = "" if fov is None else (" · inside its field of view" if fov.source == "subject"
                                        else f" · inside the {fov.source.replace('cohort', 'cohort’s')} field of view")
        panels = [
            Panel("real", item.real, "intensity", "" if item.real is not None else f"{result.subject} has no {m}",
                  units=INTENSITY_UNITS),
            Panel("synthesized", item.mean, "intensity", f"from {'+'.join(result.conditioning)}{where}", units=INTENSITY_UNITS),
            Panel("difference", item.difference, "difference", "synthesized − real" if item.real is not None else "no real volume",
                  units=INTENSITY_UNITS),
            Panel("uncertainty", item.std, "uncertainty", std_note, units=UNCERTAINTY_UNITS),
        ]
        # Two columns at most by default, so that each plane gets room: the real volume and the synthesis where the
        # real one exists (leave one out), else the synthesis and its uncertainty; the user's ticks win once made.
        default = ["real", "synthesized"] if item.real is not None else ["synthesized", "uncertainty"]
        self.viewer.set_panels(panels, shown=self._chosen_columns or default)
        self._render_verdicts()

    @Slot(list)
    def _columns_chosen(self, titles: list[str]) -> None:
        self._chosen_columns = list(titles) or None

    def shown_modality(self) -> str | None:
        return self.modality_box.currentData()

    def show_modality(self, modality: str) -> None:
        index = self.modality_box.findData(modality)
        if index >= 0:
            self.modality_box.setCurrentIndex(index)

    def _fit_metrics_table(self) -> None:
        """Keep the table (and so the side panel) at least as wide as its widest plausible row: a long modality name,
        PSNR, four-digit values, under headers that read whole (a wider value widens it when shown). Measured once
        styled (on show, on a theme change)."""
        table = self.metrics_table
        header = table.horizontalHeader()
        metrics = table.fontMetrics()
        padding = 2 * (table.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, table) + 1)  # as the delegate
        samples = ["FLAIR", _METRICS[1][1], "0.01234", "0.01234", "yes"]
        width = sum(max(header.sectionSizeHint(c), metrics.horizontalAdvance(samples[c]) + padding, table.sizeHintForColumn(c))
                    for c in range(table.columnCount()))
        table.setMinimumWidth(width + 2 * table.frameWidth())
        # The side panel's scroll area: the panel's width and room for its scroll bar (never a horizontal one).
        self.side_scroll.setMinimumWidth(self.side.minimumSizeHint().width() + self.side_scroll.verticalScrollBar().sizeHint().width())

    def _fit_metrics_height(self) -> None:
        """Room for every row (at least a leave-one-out's three) under the header."""
        table = self.metrics_table
        rows = max(3, table.rowCount()) * table.verticalHeader().defaultSectionSize()
        table.setMinimumHeight(table.horizontalHeader().sizeHint().height() + rows + 2 * table.frameWidth() + 2)

    def _fill_metrics(self, result: SubjectSynthesis) -> None:
        table = self.metrics_table
        table.clearSpans()
        rows: list[list[str]] = []
        verdicts: list[bool | None] = []
        notes = []
        for m, item in result.results.items():
            if item.real is None:
                rows.append([m, "no real volume", "—", "—", ""])
                verdicts.append(None)
                notes.append(f"The subject has no real {m}: only the uncertainty map says how sure the model is.")
                continue
            for key, label, higher_is_better in _METRICS:
                ours, base = item.metrics.get(key), item.baseline.get(key)
                better = None if ours is None or base is None else (ours > base if higher_is_better else ours < base)
                rows.append([m, label, _fmt(ours), _fmt(base), "" if better is None else ("yes" if better else "no")])
                verdicts.append(better)
        table.setRowCount(len(rows))
        for r, (cells, better) in enumerate(zip(rows, verdicts, strict=True)):
            for col, text in enumerate(cells):
                cell = QTableWidgetItem(text)
                if col >= 2:
                    cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if col == 4 and better is not None:
                    cell.setForeground(QColor("#2e7d32" if better else "#c62828"))
                    cell.setToolTip("The synthesis is closer to the real volume than the training subjects' mean image"
                                    if better else "The mean image of the training subjects is closer to the real volume "
                                    "than the synthesis: the model knows less about this subject than a population average")
                table.setItem(r, col, cell)
            if cells[1] == "no real volume":  # one cell across the metric columns: it never widens the Metric column
                table.setSpan(r, 1, 1, len(METRIC_HEADERS) - 1)
        self._fit_metrics_table()
        self._fit_metrics_height()
        if result.hidden:
            notes.insert(0, f"{result.hidden} was hidden from the model: its rows are the leave-one-out error.")
        self.metrics_note.setText(" ".join(notes))

    def metric_value(self, modality: str, metric: str, column: str = "Model") -> str:
        """The table's text for ``modality``, ``metric`` (MSE, PSNR (dB), SSIM) and ``column``."""
        col = METRIC_HEADERS.index(column)
        for row in range(self.metrics_table.rowCount()):
            if self.metrics_table.item(row, 0).text() == modality and self.metrics_table.item(row, 1).text() == metric:
                return self.metrics_table.item(row, col).text()
        raise KeyError((modality, metric))

    def _task_failed(self, error: TaskError) -> None:
        self.progress.finish()
        if self.context is None:
            self._context_run = None
            run = self.run_picker.current_run()
            text, details = plain_task_error(f"The run {run.name} could not be opened" if run else "The run could not be opened", error)
            self.messages.error("run", text, details)
            self.viewer.clear("The run could not be opened; see the message above.")
            self.result_label.setText("Nothing generated yet.")
        else:
            self.messages.error("generate", *plain_task_error("The synthesis failed", error))
        self._update_buttons()

    def _task_cancelled(self) -> None:
        self.progress.finish()
        if self.context is None:
            self._context_run = None
        self.messages.info("generate", "Cancelled.")
        self._update_buttons()

    # ------------------------------------------------------------------ exports
    def _last_dir(self) -> str:
        return self.settings.last_dir() or str(Path.home())

    def export_current(self, path: str | None = None, confirmed: bool = False) -> None:
        """Export the shown synthesized modality (NIfTI + sidecar [+ uncertainty map]) in the background; a modality
        that did not pass its check is exported only after the user confirms (or with ``confirmed``)."""
        result, m = self.result, self.modality_box.currentData()
        if result is None or not m or self.context is None:
            return
        if path is None:
            suggested = str(Path(self._last_dir()) / f"{result.subject}_{m}_synth.nii.gz")
            path, _ = QFileDialog.getSaveFileName(self, "Export the synthesized volume", suggested, "NIfTI (*.nii.gz *.nii)")
            if not path:
                return
        ctx, target, uncertainty = self.context, str(path), self.with_uncertainty.isChecked()
        self._gated([m], f"Exporting {result.subject}'s {m}", lambda: self._start_batch(
            "export", f"Writing {Path(target).name}", export_volume_task, ctx, result, m, target, uncertainty,
            self._export_verdicts()), confirmed)

    def export_all_missing(self, folder: str | None = None, overwrite: bool | None = None, confirmed: bool = False) -> None:
        """Synthesize and export every missing modality of every subject into ``folder`` (background, cancellable).

        Files of an earlier export in ``folder`` are replaced only with ``overwrite`` (asked when None); modalities
        that did not pass their check are exported only after the user confirms (or with ``confirmed``)."""
        ctx = self.context
        if ctx is None:
            return
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Folder for the synthesized volumes", self._last_dir())
            if not folder:
                return
        names = [f"{s}_{m}_synth" for s in ctx.dataset.ids if ctx.observed(s) for m in ctx.missing(s)]
        existing = [n for n in names if (Path(folder) / f"{n}.nii.gz").exists() or (Path(folder) / f"{n}.json").exists()]
        if existing and overwrite is None:
            answer = QMessageBox.question(
                self, "Replace the earlier export?",
                f"{len(existing)} synthesized volume(s) from an earlier export are in {folder} (e.g. {existing[0]}.nii.gz). "
                "Replace them?", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            overwrite = answer == QMessageBox.StandardButton.Yes
            if not overwrite:
                return
        targets = [m for m in ctx.modalities if any(m in ctx.missing(s) for s in ctx.dataset.ids if ctx.observed(s))]
        n_samples, uncertainty = self.samples.value(), self.with_uncertainty.isChecked()
        self._gated(targets, "Exporting every missing modality", lambda: self._start_batch(
            "export", "Synthesizing every missing modality", export_missing_task, ctx, str(folder), n_samples, uncertainty,
            bool(overwrite), self._export_verdicts()), confirmed)

    def write_metrics_csv(self, path: str | None = None) -> None:
        """Leave-one-out metrics of every subject as CSV (background)."""
        if self.context is None:
            return
        if path is None:
            suggested = str(Path(self._last_dir()) / f"{Path(self.context.run_dir).name}_leave_one_out.csv")
            path, _ = QFileDialog.getSaveFileName(self, "Per-subject metrics", suggested, "CSV (*.csv)")
            if not path:
                return
        self._start_batch("csv", "Leave-one-out metrics of every subject", metrics_csv_task, self.context, str(path))

    def write_report(self, path: str | None = None) -> None:
        """The run's HTML report (background)."""
        if self.context is None or self.loaded is None:
            return
        if path is None:
            suggested = str(Path(self.context.run_dir) / "report.html")
            path, _ = QFileDialog.getSaveFileName(self, "Run report", suggested, "HTML (*.html)")
            if not path:
                return
        self._start_batch("report", "Writing the run report", report_task, self.context, self.loaded, str(path))

    def _start_batch(self, what: str, text: str, fn: Any, *args: Any) -> None:
        self._batch_what = what
        self.messages.clear("export")
        self.export_label.setText("")
        self.batch_progress.start(text)
        self.batch_runner.start(fn, *args)
        self._update_buttons()

    @Slot()
    def cancel_batch(self) -> None:
        self.batch_runner.cancel()

    def _batch_done(self, result: Any) -> None:
        self.batch_progress.finish()
        if isinstance(result, list):
            if not result:
                self.export_label.setText("Every subject has every modality: nothing to export.")
                return
            folder = Path(result[0].image).parent
            self.settings.set_last_dir(folder)
            self.last_export = Path(result[0].image)
            self.external_button.setToolTip(f"Open {self.last_export.name} in the desktop's default application for NIfTI "
                                            "files (e.g. ITK-SNAP or 3D Slicer), in its source units")
            images = ", ".join(r.image.name for r in result[:3]) + (" …" if len(result) > 3 else "")
            self.export_label.setText(f"Wrote {len(result)} volume(s) to {folder}: {images} (each with a .json sidecar"
                                      + (" and a _std uncertainty map)" if result[0].uncertainty else ")"))
            if len(result) == 1:
                self.messages.info("export", f"Exported {self.last_export.name} to {folder}, in the source's units.",
                                   action=("Open in external viewer", lambda: self.open_in_external_viewer()))
            else:
                self.messages.info("export", f"Exported {len(result)} synthesized volume(s) to {folder}.",
                                   action=("Open folder", lambda f=folder: QDesktopServices.openUrl(QUrl.fromLocalFile(str(f)))))
            self.status_message.emit(f"Exported {len(result)} volume(s)")
        else:
            path = Path(result)
            self.settings.set_last_dir(path.parent)
            self.export_label.setText(f"Wrote {path}")
            self.messages.info("export", f"Wrote {path.name}.",
                               action=("Open", lambda p=path: QDesktopServices.openUrl(QUrl.fromLocalFile(str(p)))))
        self._update_buttons()

    def open_in_external_viewer(self, path: Path | None = None) -> bool:
        """Open ``path`` (the last export) with the desktop's default application; say how when none opens it."""
        target = path or self.last_export
        if target is None:
            return False
        if not target.exists():
            self.messages.warning("export", f"{target} is no longer there: export it again.")
            return False
        opened = QDesktopServices.openUrl(QUrl.fromLocalFile(str(target)))
        if not opened:
            self.messages.warning("export", f"No application is set to open {target.name}. Associate .nii.gz files with a "
                                            f"viewer such as ITK-SNAP or 3D Slicer, or open it from there: {target}")
        return bool(opened)

    def _batch_failed(self, error: TaskError) -> None:
        self.batch_progress.finish()
        self.messages.error("export", *plain_task_error(_BATCH_FAILED[self._batch_what], error))
        self._update_buttons()

    def _batch_cancelled(self) -> None:
        self.batch_progress.finish()
        self.export_label.setText("Cancelled: nothing was written.")
        self._update_buttons()

    def shutdown(self) -> bool:
        return all([self.runner.shutdown(), self.batch_runner.shutdown(), self.verdict_runner.shutdown(),
                    self.run_picker.shutdown()])

