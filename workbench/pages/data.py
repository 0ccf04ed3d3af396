"""The Data page: open a cohort, see who has which modality, check the files, preview preprocessing
and prepare the dataset (optionally an HDF5 cache) in the background."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.config import config_from_dict, config_schema, config_to_dict
from core.data.dataset import missingness_summary
from core.data.demo import spec_from_dict
from core.data.preprocessing.config import PreprocessingConfig
from core.data.preprocessing.pipeline import preprocess_subject
from core.data.quality import check_cohort
from core.data.readers import read_volume
from core.data.sources import DataConfig, SplitConfig, ensure_demo_cohort, load_data
from workbench.messages import MessageArea, gui_advice, plain_task_error
from workbench.pages._common import Card, ProgressRow, page_header
from workbench.state import CohortInfo, WorkbenchState, source_label
from workbench.widgets.elided_label import ElidedLabel
from workbench.widgets.ortho_viewer import OrthoViewer, Panel
from workbench.widgets.pattern_dialog import ModalityPatternDialog
from workbench.widgets.presence_matrix import MISSING, PRESENT, UNREADABLE, PresenceMatrix
from workbench.widgets.schema_form import SchemaForm, fields_named_in
from workbench.widgets.slice_preview import SliceGrid
from workbench.workers import TaskError, TaskRunner, TaskState

__all__ = ["DataPage", "open_cohort_task", "read_volume_task", "preprocessing_preview_task", "prepare_dataset_task",
           "PreprocessingPreview"]

HDF5_SUFFIXES = (".h5", ".hdf5")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MAP_FILES = "Map file names to modalities…"


# ---------------------------------------------------------------------------------------------- tasks
# Plain functions run by TaskRunner in a worker thread: data in, result out, no widgets.


def open_cohort_task(source: str, demo_settings: dict[str, Any], patterns: dict[str, str], state: TaskState) -> CohortInfo:
    """Find a cohort's files (``patterns``: file-name pattern -> modality, tried before the built-in rules) and
    check their headers (or open an HDF5 cache)."""
    if source == "demo":
        state.set_status("Preparing the demo cohort (generated once, then reused)")
        root = ensure_demo_cohort(demo_settings, progress=state.progress, cancel=state.is_cancelled)
    else:
        root = Path(source).expanduser()
    if root.suffix.lower() in HDF5_SUFFIXES:
        state.set_status("Opening the HDF5 cache")
        loaded = load_data(DataConfig(source=str(root)), progress=state.progress, cancel=state.is_cancelled)
        ds = loaded.dataset
        states = np.stack([ds.masks[m].numpy() for m in ds.modalities], axis=1).astype(np.int8)
        issues = list(getattr(loaded.records, "issues", []))
        return CohortInfo(source, root, list(ds.ids), list(ds.modalities), states, issues, loaded=loaded, layout="HDF5 cache")
    state.set_status("Finding subjects and checking every file (the cohort report `mmvae info` prints)")
    cohort, report = check_cohort(root, modality_patterns=patterns or None, progress=state.progress,
                                  cancel=state.is_cancelled)
    presence = np.asarray(report.presence, dtype=bool)
    states = np.where(presence, PRESENT, MISSING).astype(np.int8)
    states[presence & ~report.usable] = UNREADABLE
    tooltips = {}
    for f in report.files:
        if f.role != "image":
            continue
        if f.error:
            tooltips[(f.subject, f.modality)] = f"{f.path.name}<br><b>Error:</b> {f.error}"
        else:
            spacing = " x ".join(f"{s:.3g}" for s in f.spacing or ())
            tooltips[(f.subject, f.modality)] = f"{f.path.name}<br>{f.shape} voxels, {spacing} mm, {f.orientation}"
    return CohortInfo(source, root, list(report.subjects), list(report.modalities), states, list(report.issues),
                      tooltips, cohort=cohort, report=report, layout=report.layout, modality_patterns=dict(patterns))


def image_file_names(folder: Path, limit: int = 2000) -> list[str]:
    """Names of the image files under ``folder`` (the first ``limit`` found), for the mapping dialog to suggest
    patterns from when no file was recognised."""
    names: list[str] = []
    for _, _, files in os.walk(folder):
        names.extend(f for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        if len(names) >= limit:
            break
    return names[:limit]


def read_volume_task(info: CohortInfo, subject: str, modality: str, state: TaskState) -> tuple[str, str, np.ndarray, str]:
    """One volume for the viewer: the source file, or the prepared sample for an HDF5 cache."""
    if info.cohort is not None:
        entry = info.cohort.entry(subject, modality)
        if entry is None:
            raise FileNotFoundError(f"{subject} has no {modality} file.")
        volume = read_volume(entry.path)
        return subject, modality, volume.array, f"{entry.path.name} · {volume.geometry!r}"
    assert info.loaded is not None
    dataset = info.loaded.dataset
    sample = dataset[list(dataset.ids).index(subject)]
    array = sample["data"][modality].numpy()
    return subject, modality, array, f"prepared volume from the cache · shape {tuple(array.shape)}"


@dataclass
class PreprocessingPreview:
    subject: str
    before: dict[str, np.ndarray]
    after: dict[str, np.ndarray]
    notes: dict[str, str]
    issues: list[str]


def preprocessing_preview_task(info: CohortInfo, subject: str, values: dict[str, Any], state: TaskState) -> PreprocessingPreview:
    """One subject as stored and as the model will see it with the given preprocessing settings."""
    if info.cohort is None:
        raise ValueError("An HDF5 cache is already preprocessed; open the cohort's folder or manifest to preview settings.")
    config = PreprocessingConfig(**values)
    entries = info.cohort.subject_entries(subject)
    before = {}
    for m, entry in entries.items():
        state.set_status(f"Reading {m}")
        before[m] = read_volume(entry.path).array
    state.set_status("Preprocessing")
    result = preprocess_subject(subject, entries, config, modalities=[m for m in info.cohort.modalities if m in entries])
    notes = {}
    for m, record in result.record.modalities.items():
        params = record.normalization
        how = f"{params.method} (shift {params.shift:.3g}, scale {params.scale:.3g})" if params else "none"
        notes[m] = f"{record.resampling} resampling, normalisation {how}, {100 * record.observed_fraction:.0f}% observed"
    return PreprocessingPreview(subject, before, result.data, notes, [str(i) for i in result.record.issues])


def prepare_dataset_task(values: dict[str, Any], key: str, state: TaskState) -> tuple[Any, str]:
    """Load and preprocess the cohort (and write the HDF5 cache when one is set)."""
    state.set_status("Preprocessing subjects" + (" into the HDF5 cache" if values.get("cache") else ""))
    loaded = load_data(config_from_dict(DataConfig, values), progress=state.progress, cancel=state.is_cancelled)
    return loaded, key


# ---------------------------------------------------------------------------------------------- the page


class DataPage(QWidget):
    """Open a cohort, inspect it and prepare the dataset."""

    status_message = Signal(str)
    cohort_opened = Signal(str)

    def __init__(self, state: WorkbenchState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.open_runner = TaskRunner(self, "open cohort")
        self.volume_runner = TaskRunner(self, "read volume")
        self.preview_runner = TaskRunner(self, "preprocessing preview")
        self.prepare_runner = TaskRunner(self, "prepare dataset")
        self._pending_data: dict[str, Any] | None = None
        self._opening: str | None = None  # the source being opened or that failed to open (it can still be mapped)
        self._pattern_dialog: ModalityPatternDialog | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(page_header(
            "Data", "Open a cohort: a folder (BIDS or one folder per subject), a manifest CSV listing subject, "
            "modality and file, an HDF5 cache, or the bundled demo. Missing modalities are expected."))

        # -- source row
        row = QHBoxLayout()
        self.folder_button = QPushButton("Open folder…")
        self.folder_button.setToolTip("A BIDS dataset or a folder with one sub-folder per subject (Ctrl+O)")
        self.manifest_button = QPushButton("Open manifest…")
        self.manifest_button.setToolTip("A CSV with the columns subject, modality, path[, observation_mask]")
        self.h5_button = QPushButton("Open HDF5 cache…")
        self.h5_button.setToolTip("A cache written earlier by the workbench or `mmvae` (already preprocessed)")
        self.demo_button = QPushButton("Demo cohort")
        self.demo_button.setToolTip("The bundled synthetic MR/US cohort with missing modalities")
        self.recent = QComboBox()
        self.recent.setToolTip("Cohorts opened lately")
        self.recent.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.recent.setMinimumContentsLength(18)  # a long recent path must not widen the window
        self.recent.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.recent.activated.connect(self._recent_chosen)
        for button in (self.folder_button, self.manifest_button, self.h5_button, self.demo_button):
            row.addWidget(button)
        row.addWidget(self.recent)
        self.source_label = ElidedLabel("No cohort open")
        self.source_label.setObjectName("PageHint")
        self.source_label.setAlignment(Qt.AlignmentFlag.AlignRight)
        row.addWidget(self.source_label, 1)
        layout.addLayout(row)
        self.folder_button.clicked.connect(self.choose_folder)
        self.manifest_button.clicked.connect(self.choose_manifest)
        self.h5_button.clicked.connect(self.choose_h5)
        self.demo_button.clicked.connect(self.open_demo)

        self.messages = MessageArea()
        layout.addWidget(self.messages)
        self.progress = ProgressRow()
        self.progress.cancel_requested.connect(self.cancel_tasks)
        layout.addWidget(self.progress)

        # -- left: matrix, counts, issues
        self.matrix = PresenceMatrix()
        self.matrix.cell_activated.connect(self.show_volume)
        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        self.counts_label.setTextFormat(Qt.TextFormat.RichText)
        matrix_card = Card("Subjects × modalities")
        legend = QLabel("<span style='color:#2a9d8f'>\u25cf</span> present &nbsp; "
                        "<span style='color:#9aa3ad'>\u25a1</span> missing &nbsp; "
                        "<span style='color:#e63946'>!</span> present but unreadable")
        legend.setObjectName("PageHint")
        matrix_card.body.addWidget(legend)
        matrix_card.body.addWidget(self.matrix, 1)
        matrix_card.body.addWidget(self.counts_label)
        self.issue_tree = QTreeWidget()
        self.issue_tree.setHeaderLabels(["Level", "Subject", "Modality", "Message"])
        self.issue_tree.setRootIsDecorated(False)
        self.issue_tree.setAlternatingRowColors(True)
        self.issue_tree.setColumnWidth(0, 70)
        self.issue_tree.setColumnWidth(1, 90)
        self.issue_tree.setColumnWidth(2, 70)
        issues_card = Card("Cohort report")
        self.issue_summary = QLabel("")
        self.issue_summary.setObjectName("PageHint")
        self.issue_summary.setWordWrap(True)
        self.pattern_button = QPushButton(MAP_FILES)
        self.pattern_button.setToolTip("Say which files hold which modality when their names are not recognised "
                                       "(for example *_MPRAGE.nii.gz is T1), then open the folder again")
        self.pattern_button.clicked.connect(self.edit_modality_patterns)
        self.pattern_button.setVisible(False)
        report_row = QHBoxLayout()
        report_row.addWidget(self.issue_summary, 1)
        report_row.addWidget(self.pattern_button)
        issues_card.body.addLayout(report_row)
        issues_card.body.addWidget(self.issue_tree, 1)
        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(matrix_card)
        left.addWidget(issues_card)
        left.setSizes([420, 200])

        # -- right: tabs
        self.tabs = QTabWidget()
        # The same linked orthogonal viewer as the Synthesize page: scroll slices, one crosshair, window/level.
        self.volume_view = OrthoViewer()
        self.volume_view.units_note = "source units, as stored in the file"
        self.volume_view.clear("Open a cohort, then click a cell of the matrix to view that volume.")
        self.volume_info = QLabel("")
        self.volume_info.setObjectName("PageHint")
        self.volume_info.setWordWrap(True)
        volume_tab = QWidget()
        vt = QVBoxLayout(volume_tab)
        vt.addWidget(self.volume_view, 1)
        vt.addWidget(self.volume_info)
        self.tabs.addTab(volume_tab, "Volume")
        self.tabs.addTab(self._build_preprocessing_tab(), "Preprocessing")
        self.tabs.addTab(self._build_dataset_tab(), "Dataset")

        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(self.tabs)
        splitter.setSizes([430, 620])
        layout.addWidget(splitter, 1)

        for runner in (self.open_runner, self.prepare_runner):
            runner.progress.connect(self.progress.set_progress)
            runner.status.connect(self.progress.set_status)
        self.open_runner.done.connect(self._cohort_opened)
        self.open_runner.failed.connect(lambda e: self._task_failed("open", "The cohort could not be opened", e))
        self.open_runner.cancelled.connect(lambda: self._task_cancelled("Opening the cohort was cancelled."))
        self.volume_runner.done.connect(self._volume_read)
        self.volume_runner.failed.connect(lambda e: self._task_failed("volume", "The volume could not be read", e))
        self.preview_runner.done.connect(self._preview_ready)
        self.preview_runner.status.connect(self.preview_status.setText)
        self.preview_runner.failed.connect(self._preview_failed)
        self.prepare_runner.done.connect(self._dataset_prepared)
        self.prepare_runner.failed.connect(lambda e: self._task_failed("prepare", "The dataset could not be prepared", e))
        self.prepare_runner.cancelled.connect(lambda: self._task_cancelled("Preparing the dataset was cancelled; nothing was kept."))
        self.state.data_config_requested.connect(self.apply_data_config)
        self.state.loaded_changed.connect(self._update_dataset_summary)
        self._set_enabled_for_cohort(False)

    # ------------------------------------------------------------------ tabs
    def _build_preprocessing_tab(self) -> QWidget:
        defaults = PreprocessingConfig().model_dump(mode="json")
        self.preprocessing_form = SchemaForm(PreprocessingConfig.model_json_schema(), exclude=("modalities",),
                                             collapsible=False, defaults=defaults)
        self.preprocessing_form.changed.connect(self._settings_changed)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.preprocessing_form)
        scroll.setMinimumWidth(300)
        self.preview_subject = QComboBox()
        self.preview_subject.setToolTip("The subject to preview")
        self.preview_button = QPushButton("Preview")
        self.preview_button.setToolTip("Show this subject as stored and as the model will see it with these settings")
        self.preview_button.clicked.connect(self.run_preview)
        self.preview_status = QLabel("")
        self.preview_status.setObjectName("PageHint")
        self.preview_status.setWordWrap(True)
        self.preview_grid = SliceGrid(["as stored", "preprocessed"], planes=("axial", "coronal"))
        self.preview_grid.show_message("Pick a subject and press Preview.")
        top = QHBoxLayout()
        top.addWidget(QLabel("Subject"))
        top.addWidget(self.preview_subject, 1)
        top.addWidget(self.preview_button)
        preview = QWidget()
        pv = QVBoxLayout(preview)
        pv.setContentsMargins(0, 0, 0, 0)
        pv.addLayout(top)
        pv.addWidget(self.preview_status)
        pv.addWidget(self.preview_grid, 1)
        splitter = QSplitter()
        splitter.addWidget(scroll)
        splitter.addWidget(preview)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([330, 420])
        return splitter

    def _build_dataset_tab(self) -> QWidget:
        tab = QWidget()
        layout = QVBoxLayout(tab)
        mods = QGroupBox("Modalities to train on")
        mods.setToolTip("Untick a modality to leave it out of training (subjects left with none are dropped)")
        ml = QVBoxLayout(mods)
        self.modality_list = QListWidget()
        self.modality_list.setMaximumHeight(130)
        self.modality_list.itemChanged.connect(self._settings_changed)
        ml.addWidget(self.modality_list)
        layout.addWidget(mods)
        split_box = QGroupBox("Train / validation / test split (by subject)")
        sl = QVBoxLayout(split_box)
        self.split_form = SchemaForm(config_schema(SplitConfig), collapsible=False)
        self.split_form.changed.connect(self._settings_changed)
        sl.addWidget(self.split_form)
        layout.addWidget(split_box)
        cache_box = QGroupBox("HDF5 cache")
        cl = QHBoxLayout(cache_box)
        self.cache_check = QCheckBox("Write an HDF5 cache")
        self.cache_check.setToolTip("Preprocess once into a compressed file that later runs read lazily "
                                    "(recommended for large cohorts); reused while nothing changes")
        self.cache_path = QLineEdit()
        self.cache_path.setPlaceholderText("cache file (.h5)")
        self.cache_browse = QPushButton("…")
        self.cache_browse.setToolTip("Choose where to write the cache")
        self.cache_browse.clicked.connect(self._choose_cache_path)
        self.cache_check.toggled.connect(self._settings_changed)
        self.cache_path.editingFinished.connect(self._settings_changed)
        cl.addWidget(self.cache_check)
        cl.addWidget(self.cache_path, 1)
        cl.addWidget(self.cache_browse)
        layout.addWidget(cache_box)
        buttons = QHBoxLayout()
        self.prepare_button = QPushButton("Prepare dataset")
        self.prepare_button.setObjectName("Primary")
        self.prepare_button.setToolTip("Preprocess every subject now (in the background); training reuses the result")
        self.prepare_button.clicked.connect(self.prepare_dataset)
        buttons.addWidget(self.prepare_button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.dataset_summary = QLabel("Not prepared yet. Training prepares it automatically if needed.")
        self.dataset_summary.setWordWrap(True)
        self.dataset_summary.setTextFormat(Qt.TextFormat.RichText)
        self.dataset_summary.setAlignment(Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.dataset_summary, 1)
        return tab

    # ------------------------------------------------------------------ opening
    @Slot()
    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a cohort folder", self._last_dir())
        if path:
            self.open_source(path)

    @Slot()
    def choose_manifest(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a manifest", self._last_dir(), "Manifest (*.csv *.tsv)")
        if path:
            self.open_source(path)

    @Slot()
    def choose_h5(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an HDF5 cache", self._last_dir(), "HDF5 cache (*.h5 *.hdf5)")
        if path:
            self.open_source(path)

    def _last_dir(self) -> str:
        window = self.window()
        settings = getattr(window, "settings", None)
        return settings.last_dir() if settings is not None else str(Path.home())

    @Slot()
    def open_demo(self) -> None:
        self.open_source("demo")

    def open_source(self, source: str, patterns: dict[str, str] | None = None) -> None:
        """Open a cohort in the background ('demo', a folder, a manifest CSV or an HDF5 cache). ``patterns``
        (file-name pattern -> modality) default to the ones this folder was last opened with."""
        source = str(source)
        if patterns is None:
            settings = getattr(self.window(), "settings", None)
            patterns = settings.modality_patterns(source) if settings is not None and source != "demo" else {}
        self._opening = source
        self.messages.clear()
        self.progress.start(f"Opening {source_label(source)}")
        self.source_label.setText(f"Opening {source_label(source)}…")
        self.open_runner.start(open_cohort_task, source, dict(self.state.demo_settings), dict(patterns))

    def _mappable_folder(self) -> Path | None:
        """The cohort folder being opened or open, if it is one whose files are found by name."""
        source = self._opening or (self.state.info.source if self.state.info is not None else None)
        if not source or source == "demo":
            return None
        path = Path(source).expanduser()
        return path if path.is_dir() and not (path / "manifest.csv").is_file() else None

    @Slot()
    def edit_modality_patterns(self) -> None:
        """Ask which file names hold which modality, then open the folder again with those patterns."""
        folder = self._mappable_folder()
        if folder is None:
            self.messages.info("patterns", "File-name patterns apply to a cohort folder; open one first (a manifest "
                               "names each file's modality itself).")
            return
        info = self.state.info
        current = info if info is not None and info.root == folder else None
        patterns = dict(current.modality_patterns) if current is not None else self._remembered_patterns(str(folder))
        if current is not None and current.cohort is not None:
            unmatched = [p.name for p in current.cohort.unmatched]
        else:
            unmatched = image_file_names(folder)
        dialog = ModalityPatternDialog(patterns, unmatched, self)
        self._pattern_dialog = dialog
        dialog.accepted.connect(lambda: self.open_source(str(folder), dialog.patterns()))
        dialog.open()

    def _remembered_patterns(self, source: str) -> dict[str, str]:
        settings = getattr(self.window(), "settings", None)
        return settings.modality_patterns(source) if settings is not None else {}

    @Slot(int)
    def _recent_chosen(self, index: int) -> None:
        source = self.recent.itemData(index)
        if source:
            self.open_source(source)

    def set_recent(self, sources: list[str]) -> None:
        self.recent.blockSignals(True)
        self.recent.clear()
        self.recent.addItem("Recent cohorts…", None)
        for s in sources:
            self.recent.addItem(source_label(s) if s == "demo" else s, s)
        self.recent.blockSignals(False)

    @Slot(object)
    def _cohort_opened(self, info: CohortInfo) -> None:
        self.progress.finish()
        self._opening = None
        settings = getattr(self.window(), "settings", None)
        if settings is not None and info.source != "demo" and info.cohort is not None:
            settings.set_modality_patterns(info.source, info.modality_patterns)
        self.state.set_cohort(info)
        self.pattern_button.setVisible(self._mappable_folder() is not None)
        self.matrix.set_matrix(info.subjects, info.modalities, info.states, info.tooltips)
        counts = info.counts
        complete = int((info.states == PRESENT).all(axis=1).sum())
        patterns: dict[str, int] = {}
        for row in info.states == PRESENT:
            key = "+".join(m for m, on in zip(info.modalities, row, strict=True) if on) or "none usable"
            patterns[key] = patterns.get(key, 0) + 1
        ranked = sorted(patterns.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{p} ({n})" for p, n in ranked[:6]) + (f", and {len(ranked) - 6} more" if len(ranked) > 6 else "")
        self.counts_label.setText(
            f"<b>{len(info.subjects)}</b> subjects · <b>{complete}</b> with every modality · "
            + " · ".join(f"{m}: <b>{c}</b>" for m, c in counts.items())
            + f"<br><span style='color:gray'>Patterns: {shown}</span>")
        self._show_source()
        self._show_issues(info)
        self.preview_subject.clear()
        self.preview_subject.addItems(info.subjects)
        self.preview_grid.show_message("Pick a subject and press Preview.")  # not the last cohort's subject
        self.modality_list.blockSignals(True)
        self.modality_list.clear()
        for m in info.modalities:
            item = QListWidgetItem(f"{m}  ({counts[m]} subjects)")
            item.setData(Qt.ItemDataRole.UserRole, m)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            self.modality_list.addItem(item)
        self.modality_list.blockSignals(False)
        self.volume_view.clear("Click a cell of the matrix to view that volume.")
        self.volume_info.setText("")
        self._set_enabled_for_cohort(True)
        is_cache = info.cohort is None
        self.preprocessing_form.setEnabled(not is_cache)
        self.preview_button.setEnabled(not is_cache)
        if self._pending_data is not None:
            pending, self._pending_data = self._pending_data, None
            self._apply_settings(pending)
        self._settings_changed()
        self._update_dataset_summary()
        self.cohort_opened.emit(info.source)
        self.status_message.emit(f"Opened {source_label(info.source)}: {len(info.subjects)} subjects, "
                                 f"{len(info.modalities)} modalities")

    def _show_issues(self, info: CohortInfo) -> None:
        self.issue_tree.clear()
        levels = {"error": 0, "warning": 0, "info": 0}
        for issue in info.issues:
            levels[issue.level] = levels.get(issue.level, 0) + 1
            item = QTreeWidgetItem([issue.level, issue.subject or "", issue.modality or "", issue.message])
            fix = gui_advice(issue.fix) if issue.fix else ""
            tip = issue.message + (f"\nFix: {fix}" if fix else "") + (f"\nFile: {issue.path}" if issue.path else "")
            for col in range(4):
                item.setToolTip(col, tip)
            self.issue_tree.addTopLevelItem(item)
        self.issue_summary.setText(f"{levels['error']} errors, {levels['warning']} warnings, {levels['info']} notes"
                                   + (" — hover a line for the fix." if info.issues else ""))
        if levels["error"]:
            self.messages.warning("report", f"The cohort report found {levels['error']} problem file(s); those "
                                  "modalities are treated as missing. See the Cohort report below for the fixes.")
        unmatched = info.cohort.unmatched if info.cohort is not None else []
        if unmatched and self._mappable_folder() is not None:
            self.messages.info("unmatched", f"{len(unmatched)} image file(s) match no modality and are left out, "
                               f"e.g. {unmatched[0].name}. Say which modality they hold to use them.",
                               action=(MAP_FILES, self.edit_modality_patterns))

    def _set_enabled_for_cohort(self, enabled: bool) -> None:
        for widget in (self.prepare_button, self.preview_button, self.modality_list, self.split_form, self.cache_check):
            widget.setEnabled(enabled)

    # ------------------------------------------------------------------ volume viewer
    @Slot(str, str)
    def show_volume(self, subject: str, modality: str) -> None:
        info = self.state.info
        if info is None:
            return
        self.tabs.setCurrentIndex(0)
        if self.matrix.state(subject, modality) == MISSING:
            self.volume_view.clear(f"{subject} has no {modality}.")
            self.volume_info.setText("")
            return
        self.volume_view.clear(f"Loading {subject} · {modality}…")
        self.volume_runner.start(read_volume_task, info, subject, modality)

    @Slot(object)
    def _volume_read(self, result: tuple[str, str, np.ndarray, str]) -> None:
        subject, modality, array, description = result
        self.volume_view.set_panels([Panel(f"{subject} · {modality}", array, note="values as stored in the file")],
                                    keep_position=False)
        self.volume_info.setText(description)

    # ------------------------------------------------------------------ preprocessing
    def preprocessing_values(self) -> dict[str, Any]:
        return self.preprocessing_form.values(changed_only=True)

    def _validate_preprocessing(self) -> str:
        errors = self.preprocessing_form.errors()
        if errors:
            return "; ".join(f"{k}: {v}" for k, v in errors.items())
        try:
            PreprocessingConfig(**self.preprocessing_values())
        except ValidationError as error:
            found = {}
            for item in error.errors():
                key = str(item["loc"][0]) if item.get("loc") else ""
                found[key] = item.get("msg", "").removeprefix("Value error, ")
            self.preprocessing_form.set_external_errors(found)
            return "; ".join(f"{k}: {v}" for k, v in found.items())
        return ""

    @Slot()
    def run_preview(self) -> None:
        info = self.state.info
        subject = self.preview_subject.currentText()
        if info is None or not subject:
            return
        problem = self._validate_preprocessing()
        if problem:
            self.preview_status.setText(f"Fix the settings first: {problem}")
            return
        self.preview_status.setText(f"Preprocessing {subject}…")
        self.preview_button.setEnabled(False)
        self.preview_runner.start(preprocessing_preview_task, info, subject, self.preprocessing_values())

    @Slot(object)
    def _preview_ready(self, preview: PreprocessingPreview) -> None:
        self.preview_button.setEnabled(True)
        rows = []
        notes = []
        for m in preview.before:
            after = preview.after.get(m)
            rows.append((m, [preview.before[m], after], preview.notes.get(m, "")))
            notes.append(["", "" if after is not None else "unusable after preprocessing"])
        self.preview_grid.set_rows(rows, shared_levels=False, notes=notes)
        text = f"{preview.subject}: " + "; ".join(f"{m}: {n}" for m, n in preview.notes.items())
        if preview.issues:
            text += "\n" + "\n".join(preview.issues)
        self.preview_status.setText(text)

    @Slot(object)
    def _preview_failed(self, error: TaskError) -> None:
        self.preview_button.setEnabled(True)
        self.preview_status.setText("")
        keys = fields_named_in(error.message, self.preprocessing_form.keys())
        if keys:
            self.preprocessing_form.set_external_errors({k: error.message for k in keys})
        self._task_failed("preview", "The preview failed", error)

    # ------------------------------------------------------------------ dataset settings and preparing
    def selected_modalities(self) -> list[str]:
        out = []
        for i in range(self.modality_list.count()):
            item = self.modality_list.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(item.data(Qt.ItemDataRole.UserRole))
        return out

    @Slot()
    def _settings_changed(self) -> None:
        if self.state.info is None:
            return
        modalities = self.selected_modalities()
        if not modalities:
            self.messages.error("modalities", "Select at least one modality to train on.")
        else:
            self.messages.clear("modalities")
        problem = self._validate_preprocessing()
        if problem:
            self.messages.warning("preprocessing", f"Preprocessing settings need fixing: {problem}")
        else:
            self.messages.clear("preprocessing")
        split = self.split_form.values(changed_only=True)
        try:
            config_from_dict(SplitConfig, self.split_form.values())
            self.split_form.set_external_errors({})
        except ValueError as error:
            self.split_form.set_external_errors({"fractions": str(error).split(": ", 1)[-1]})
            split = {}
        cache = self.cache_path.text().strip() if self.cache_check.isChecked() else None
        self.cache_path.setEnabled(self.cache_check.isChecked())
        self.cache_browse.setEnabled(self.cache_check.isChecked())
        self.state.set_data_settings(modalities=modalities or None,
                                     preprocessing=self.preprocessing_values() if not problem else {},
                                     cache_path=cache, split=split)
        self._update_dataset_summary()

    @Slot()
    def _choose_cache_path(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "HDF5 cache file", self._last_dir(), "HDF5 cache (*.h5)")
        if path:
            self.cache_path.setText(path if path.endswith((".h5", ".hdf5")) else path + ".h5")
            self.cache_check.setChecked(True)
            self._settings_changed()

    @Slot()
    def prepare_dataset(self) -> None:
        values = self.state.data_config_dict()
        if values is None:
            return
        if self.cache_check.isChecked() and not self.cache_path.text().strip():
            self.messages.error("prepare", "Choose a file for the HDF5 cache, or untick 'Write an HDF5 cache'.")
            return
        self.messages.clear("prepare")
        self.progress.start("Preparing the dataset")
        self.prepare_button.setEnabled(False)
        self.prepare_runner.start(prepare_dataset_task, values, self.state.data_key(values))

    @Slot(object)
    def _dataset_prepared(self, result: tuple[Any, str]) -> None:
        loaded, key = result
        self.progress.finish()
        self.prepare_button.setEnabled(True)
        self.state.set_loaded(loaded, key)
        self.status_message.emit(f"Dataset ready: {len(loaded.dataset)} subjects")

    @Slot()
    def _update_dataset_summary(self) -> None:
        loaded = self.state.loaded
        if loaded is None or not self.state.is_loaded_current():
            stale = " (settings changed since it was prepared)" if loaded is not None else ""
            self.dataset_summary.setText(f"Not prepared yet{stale}. Training prepares it automatically if needed.")
            return
        ds = loaded.dataset
        summary = missingness_summary(ds)
        dims = ", ".join(f"{m} {tuple(s)}" for m, s in ds.input_dims.items())
        patterns = "".join(f"<li>{'+'.join(p) or '(none)'}: {n}</li>" for p, n in summary)
        issues = getattr(loaded.records, "warnings", [])
        text = (f"<b>Ready:</b> {len(ds)} subjects, {summary.n_complete} complete.<br>Input shapes: {dims}.<br>"
                f"Missingness patterns:<ul>{patterns}</ul>")
        if issues:
            text += f"{len(issues)} warning(s) while preparing; see the cohort report."
        self.dataset_summary.setText(text)

    # ------------------------------------------------------------------ settings from a run YAML
    @Slot(dict)
    def apply_data_config(self, values: dict[str, Any]) -> None:
        """Switch to a run's data section: open its source if needed, then apply its settings."""
        config = config_to_dict(config_from_dict(DataConfig, values))
        current = self.state.info
        demo_changed = config["source"] == "demo" and spec_from_dict(config["demo"]) != spec_from_dict(self.state.demo_settings)
        if demo_changed:
            self.state.demo_settings = dict(config["demo"])
        patterns = dict(config.get("modality_patterns") or {})
        same_source = (current is not None and current.source == config["source"] and not demo_changed
                       and current.modality_patterns == patterns)
        if same_source:
            self._apply_settings(config)
        else:
            self._pending_data = config
            self.open_source(config["source"], patterns)

    def _apply_settings(self, config: dict[str, Any]) -> None:
        wanted = config.get("modalities")
        self.modality_list.blockSignals(True)
        for i in range(self.modality_list.count()):
            item = self.modality_list.item(i)
            on = wanted is None or item.data(Qt.ItemDataRole.UserRole) in wanted
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
        self.modality_list.blockSignals(False)
        self.preprocessing_form.set_values(config.get("preprocessing") or {})
        self.split_form.set_values(config.get("split") or {})
        self.cache_check.setChecked(bool(config.get("cache")))
        self.cache_path.setText(config.get("cache") or "")
        self._settings_changed()

    # ------------------------------------------------------------------ errors and shutdown
    def _task_failed(self, key: str, what: str, error: TaskError) -> None:
        self.progress.finish()
        self.prepare_button.setEnabled(self.state.info is not None)
        if key == "open":
            self._show_source()
        text, details = plain_task_error(what, error)
        if key == "open":
            self.pattern_button.setVisible(self._mappable_folder() is not None)
        mappable = key == "open" and "modality_patterns" in error.message and self._mappable_folder() is not None
        self.messages.error(key, text, details,
                            action=(MAP_FILES, self.edit_modality_patterns) if mappable else None)

    def _task_cancelled(self, text: str) -> None:
        self.progress.finish()
        self.prepare_button.setEnabled(self.state.info is not None)
        self.messages.info("cancelled", text)
        self._show_source()

    def _show_source(self) -> None:
        """The cohort that is open (never a stale "Opening …" after a failure or a cancel)."""
        info = self.state.info
        self.source_label.setText("No cohort open" if info is None else
                                  f"{source_label(info.source)} · {info.layout} · {info.root}")

    @Slot()
    def cancel_tasks(self) -> None:
        self.open_runner.cancel()
        self.prepare_runner.cancel()

    def shutdown(self) -> bool:
        return all([r.shutdown() for r in (self.open_runner, self.volume_runner, self.preview_runner, self.prepare_runner)])
