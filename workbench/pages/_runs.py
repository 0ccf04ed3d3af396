"""What the Explore and Synthesize pages share: the chosen run, the run's prepared data, "open this subject", and
the run picker, which lists the runs folder in a background task (every run's YAML and status are read there,
never on the UI thread).

Pages never call each other: both find one :class:`RunSelection` hanging off the window's
:class:`~workbench.state.WorkbenchState` (:func:`run_selection`) and talk through its signals. The
selection also keeps the data each run was trained on once it has been prepared (a run's ``config.yaml``
pins its preprocessing), so the two pages prepare it once; when the Data page already prepared exactly
that data, it is reused.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QComboBox, QWidget

from core.config import config_to_dict
from core.data.demo import spec_to_dict
from core.data.sources import LoadedData, load_data, resolved_preprocessing
from core.training import read_metrics_csv
from core.workflows.runs import RunSummary, list_runs, load_run_config
from workbench.messages import MessageArea
from workbench.state import WorkbenchState, source_label
from workbench.workers import TaskError, TaskRunner, TaskState

__all__ = ["RunSelection", "run_selection", "RunPicker", "runs_with_model", "list_runs_task", "load_run_data_task",
           "other_cohort_note", "show_cohort_note"]

_NAME = "mmvae-run-selection"
_PICKER_TIP = "A trained run (runs folder; a run appears once it has a final model)"


def runs_with_model(root: Path) -> list[RunSummary]:
    """Runs under ``root`` that have a final model, newest first."""
    return [s for s in list_runs(root) if (s.path / "final_model" / "model_config.json").is_file()]


def list_runs_task(root: str, state: TaskState) -> list[RunSummary]:
    """The runs under ``root`` that have a final model (worker thread: it reads every run's configuration)."""
    state.set_status(f"Listing the runs in {root}")
    return runs_with_model(Path(root))


def list_all_runs_task(root: str, state: TaskState) -> list[RunSummary]:
    """Every run under ``root``, newest first (worker thread: it reads each run's configuration)."""
    state.set_status(f"Reading the runs in {root}")
    return list_runs(Path(root))


def list_runs_with_durations(root: str, state: TaskState) -> list[tuple[RunSummary, float | None]]:
    """Every run under ``root`` with its training seconds (worker thread: it reads each run's files)."""
    state.set_status(f"Reading the runs in {root}")
    return [(summary, run_duration(summary.path)) for summary in list_runs(Path(root))]


def run_duration(run_dir: Path) -> float | None:
    """Seconds spent training a run (sum of its epochs in ``metrics.csv``)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    try:
        return float(sum(r.get("seconds", 0.0) for r in read_metrics_csv(path) if isinstance(r.get("seconds"), float)))
    except (OSError, ValueError):
        return None


def _data_key(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


class RunSelection(QObject):
    """The run the Explore and Synthesize pages look at, and the subject one page asks the other to open.

    Signals: ``run_changed(path)`` ("" for none), ``subject_requested(subject)``.
    """

    run_changed = Signal(str)
    subject_requested = Signal(str)

    def __init__(self, state: WorkbenchState) -> None:
        super().__init__(state)
        self.setObjectName(_NAME)
        self.state = state
        self.run_dir: Path | None = None
        self._loaded: OrderedDict[str, LoadedData] = OrderedDict()

    def set_run(self, path: str | Path | None) -> None:
        new = Path(path) if path else None
        if new != self.run_dir:
            self.run_dir = new
            self.run_changed.emit(str(new) if new else "")

    def request_subject(self, subject: str) -> None:
        self.subject_requested.emit(subject)

    # ------------------------------------------------------------------ data per run
    def run_data_key(self, run_dir: Path) -> str:
        return _data_key(config_to_dict(load_run_config(run_dir / "config.yaml").data))

    def loaded_for(self, run_dir: Path) -> LoadedData | None:
        """The run's prepared data if some page (or the Data page) has it already."""
        try:
            key = self.run_data_key(run_dir)
        except (OSError, ValueError):
            return None
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        state = self.state
        if state.loaded is not None and state.is_loaded_current():
            values = state.data_config_dict() or {}
            try:
                mine = _data_key({**values, "preprocessing": resolved_preprocessing(state.loaded)})
            except (AttributeError, TypeError, ValueError):
                return None
            if mine == key:
                return state.loaded
        return None

    def remember(self, run_dir: Path, loaded: LoadedData) -> None:
        """Keep ``loaded`` as the prepared data of ``run_dir`` (the two most recent datasets are kept)."""
        try:
            key = self.run_data_key(run_dir)
        except (OSError, ValueError):
            return
        self._loaded[key] = loaded
        self._loaded.move_to_end(key)
        while len(self._loaded) > 2:
            self._loaded.popitem(last=False)


def run_selection(state: WorkbenchState) -> RunSelection:
    """The window's :class:`RunSelection` (created on first use, owned by ``state``)."""
    found = state.findChild(RunSelection, _NAME)
    return found if found is not None else RunSelection(state)


def _same_cohort(run_source: str, run_demo: dict[str, Any], state: WorkbenchState) -> bool:
    assert state.info is not None
    if run_source == "demo" or state.info.source == "demo":
        shown = state.demo_settings
        return run_source == state.info.source and all(
            json.dumps(run_demo[k]) == json.dumps(shown[k]) for k in ("n_subjects", "shape") if k in run_demo and k in shown)
    return os.path.realpath(run_source) == os.path.realpath(state.info.source)


def other_cohort_note(state: WorkbenchState, run_dir: Path) -> str:
    """A sentence saying that ``run_dir`` was trained on another cohort than the one open on the Data page ("" when
    it is the same one, when no cohort is open, or when the run's configuration cannot be read).

    The Explore and Synthesize pages show the run's own subjects, so without it a user looking at the open cohort
    would take them for that cohort's."""
    if state.info is None:
        return ""
    try:
        data = load_run_config(Path(run_dir) / "config.yaml").data
    except (OSError, ValueError):
        return ""
    if _same_cohort(str(data.source), spec_to_dict(data.demo), state):
        return ""
    trained_on = source_label(str(data.source))
    if data.source == "demo":
        trained_on += f" ({data.demo.n_subjects} subjects)"
    return (f"{Path(run_dir).name} was trained on {trained_on}, not on the cohort open on the Data page "
            f"({source_label(state.info.source)}): the subjects shown here are the run's own.")


def show_cohort_note(area: MessageArea, state: WorkbenchState, run_dir: Path | None) -> None:
    """Show :func:`other_cohort_note` in ``area`` (an information, key "cohort"), or clear it when there is none."""
    note = other_cohort_note(state, run_dir) if run_dir is not None else ""
    if note:
        area.info("cohort", note)
    else:
        area.clear("cohort")


def load_run_data_task(run_dir: str, state: TaskState) -> LoadedData:
    """Prepare a run's data exactly as it was prepared for training (worker thread)."""
    state.set_status("Preparing the run's data (same preprocessing as in training)")
    config = load_run_config(Path(run_dir) / "config.yaml")
    return load_data(config.data, progress=state.progress, cancel=state.is_cancelled)


class RunPicker(QComboBox):
    """The runs that have a final model, newest first; the item data is the run folder.

    :meth:`refresh` lists the folder in a background task (:class:`~workbench.workers.TaskRunner`, so a newer
    refresh discards an older one's result) and fills the box when the list arrives, then emits ``runs_listed``.
    The run shown stays selected; a run asked for before it is listed (``refresh(keep=...)``, :meth:`select`) is
    selected once it is (:attr:`waiting` until then). Filling the box emits no ``currentIndexChanged``.
    """

    runs_listed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(18)
        self.setToolTip(_PICKER_TIP)
        self.root: Path | None = None
        self.error: TaskError | None = None
        self._wanted: Path | None = None  # a run to select once listed
        self.runner = TaskRunner(self, "runs")
        self.runner.done.connect(self._listed)
        self.runner.failed.connect(self._list_failed)
        self.activated.connect(self._user_chose)

    @property
    def waiting(self) -> bool:
        """A run was asked for that the box does not list yet: it is selected when the listing in progress ends."""
        return self._wanted is not None

    @property
    def is_listing(self) -> bool:
        return self.runner.is_running

    def refresh(self, root: Path, keep: Path | None = None) -> None:
        """Re-list ``root`` in the background; keeps ``keep`` (or the current run) selected when it is still there."""
        self.root = Path(root)
        if keep is not None and Path(keep) != self.current_run():
            index = self.findData(str(keep))
            if index >= 0:
                self.blockSignals(True)
                self.setCurrentIndex(index)
                self.blockSignals(False)
                self._wanted = None
            else:
                self._wanted = Path(keep)
        self.runner.start(list_runs_task, str(self.root))

    @Slot(object)
    def _listed(self, summaries: list[RunSummary]) -> None:
        target = self._wanted or self.current_run()
        self._wanted = None
        self.error = None
        self.setToolTip(_PICKER_TIP)
        self.blockSignals(True)
        self.clear()
        for s in summaries:
            self.addItem(f"{s.path.name}  ·  {s.model}  ·  {s.status}", str(s.path))
            self.setItemData(self.count() - 1, f"{s.path}\n{s.epochs_completed}/{s.num_epochs} epochs", 3)
        if self.count() == 0:
            self.addItem("no trained run yet: train one on the Train page", "")
        index = self.findData(str(target)) if target else -1
        self.setCurrentIndex(index if index >= 0 else 0)
        self.blockSignals(False)
        self.runs_listed.emit()

    @Slot(object)
    def _list_failed(self, error: TaskError) -> None:
        """The folder could not be listed (a share gone away): keep what is shown, say why in the tooltip."""
        self._wanted = None
        self.error = error
        self.setToolTip(f"The runs folder {self.root} could not be listed: {error.message}")
        self.runs_listed.emit()

    @Slot(int)
    def _user_chose(self, index: int) -> None:
        self._wanted = None  # the user's pick wins over a run asked for earlier

    def current_run(self) -> Path | None:
        data = self.currentData()
        return Path(data) if data else None

    @Slot(str)
    def select(self, path: str) -> None:
        """Select ``path``; a run not listed yet is selected when the listing in progress ends."""
        index = self.findData(path)
        if index < 0:
            self._wanted = Path(path) if path else None
            return
        self._wanted = None
        if index != self.currentIndex():
            self.setCurrentIndex(index)

    def shutdown(self) -> bool:
        return self.runner.shutdown()
