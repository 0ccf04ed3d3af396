"""The Model page: pick any registered model, set its parameters and the training options in forms
generated from their config schemas, start from a preset or an earlier run, and save or load the run
as the YAML the command line takes (``mmvae train run.yaml``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.config import ConfigError, ConfigProblem, config_schema, config_to_dict
from core.models import available, get_model_class
from core.presets import SYNTHESIS_PRESET, recommended_start
from core.run_config import DATA_FILLED_KEYS, RunConfig
from core.training import TrainerConfig
from core.workflows.runs import RunSummary, load_run_config, parse_run_config, run_config_to_dict
from workbench.messages import MessageArea
from workbench.pages._common import Card, page_header
from workbench.pages._runs import list_all_runs_task
from workbench.resources import Preset, load_presets
from workbench.state import WorkbenchState
from workbench.widgets.schema_form import NO_DEFAULT, SchemaForm
from workbench.workers import TaskRunner

__all__ = ["ModelPage", "DATA_FILLED_KEYS", "run_yaml_text"]

#: Keys only meaningful from Python (user-supplied modules).
HIDDEN_MODEL_KEYS = ("custom_architectures",)
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_NAME_TIP = "Name of the run; its folder is <name>-<date>-<time>. Letters, digits, '.', '_' and '-'."


def run_yaml_text(config: RunConfig) -> str:
    """The run YAML of ``config`` exactly as ``core`` resolves it (what ``mmvae train`` reads)."""
    header = "# mmvae run configuration. Train it headless with: mmvae train THIS_FILE.yaml\n"
    return header + yaml.safe_dump(run_config_to_dict(config), sort_keys=False)


def _form_field(problem: ConfigProblem, section: str) -> str:
    """The field of ``section``'s form a problem belongs to (``model.rescale_factors.T1`` -> ``rescale_factors``),
    or "" when it is about another section."""
    head, _, rest = problem.path.partition(".")
    return rest.split(".", 1)[0] if head == section else ""


class ModelPage(QWidget):
    """Model choice, its generated form, the training form and the run YAML."""

    go_to_train = Signal()
    status_message = Signal(str)
    run_file_used = Signal(str)
    previous_runs_listed = Signal()  # "Start from a previous run" was filled from a fresh read of the runs folder

    def __init__(self, state: WorkbenchState, runs_root: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runs_root = Path(runs_root)
        self.model_form: SchemaForm | None = None
        self._name_edited = False
        self._validate_timer = QTimer(self)
        self._validate_timer.setSingleShot(True)
        self._validate_timer.setInterval(150)
        self._validate_timer.timeout.connect(self.validate)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(page_header(
            "Model", "Choose a model and its settings. Hover any field for what it does; defaults are sensible. "
            "The configuration is the same YAML the command line takes."))
        self.messages = MessageArea()
        layout.addWidget(self.messages)

        # -- left: model list and card
        self.model_list = QListWidget()
        self.model_list.setToolTip("Every registered model; models that accept incomplete data are marked")
        self.model_list.currentItemChanged.connect(self._model_chosen)
        self.card = Card("")
        self.card_summary = QLabel()
        self.card_summary.setWordWrap(True)
        self.card_incomplete = QLabel()
        self.card_incomplete.setWordWrap(True)
        self.card_fit = QLabel()
        self.card_fit.setWordWrap(True)
        self.card_fit.setTextFormat(Qt.TextFormat.RichText)
        for w in (self.card_summary, self.card_incomplete, self.card_fit):
            w.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
            self.card.body.addWidget(w)
        self.card.body.addStretch(1)
        left = QWidget()
        left.setMinimumWidth(230)
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("<b>Models</b>"))
        ll.addWidget(self.model_list, 1)
        ll.addWidget(self.card, 2)

        # -- middle: start points + model form
        self.preset_combo = QComboBox()
        self.preset_combo.setToolTip("Ready-made settings for this model (resources/presets/<model>.yaml)")
        self.preset_button = QPushButton("Apply preset")
        self.preset_button.clicked.connect(self.apply_selected_preset)
        self._previous_runs: list[RunSummary] = []
        self.previous_runner = TaskRunner(self, "previous runs")
        self.previous_runner.done.connect(self._previous_runs_read)
        self.previous_runner.failed.connect(lambda _error: self.previous_runs_listed.emit())  # keep what was read
        self.previous_combo = QComboBox()
        self.previous_combo.setToolTip("Copy the model and training settings of an earlier run (the data stay as they are)")
        self.previous_button = QPushButton("Use its settings")
        self.previous_button.clicked.connect(self.apply_selected_previous_run)
        starts = QGridLayout()
        starts.addWidget(QLabel("Preset"), 0, 0)
        starts.addWidget(self.preset_combo, 0, 1)
        starts.addWidget(self.preset_button, 0, 2)
        starts.addWidget(QLabel("Previous run"), 1, 0)
        starts.addWidget(self.previous_combo, 1, 1)
        starts.addWidget(self.previous_button, 1, 2)
        starts.setColumnStretch(1, 1)
        self.model_scroll = QScrollArea()
        self.model_scroll.setWidgetResizable(True)
        middle = Card("Model settings")
        middle.body.addLayout(starts)
        middle.body.addWidget(self.model_scroll, 1)

        # -- right: training form, run name, YAML preview
        self.training_form = SchemaForm(config_schema(TrainerConfig), defaults=config_to_dict(TrainerConfig()))
        self.training_form.changed.connect(self._changed)
        training_scroll = QScrollArea()
        training_scroll.setWidgetResizable(True)
        training_scroll.setWidget(self.training_form)
        self.yaml_view = QPlainTextEdit()
        self.yaml_view.setReadOnly(True)
        self.yaml_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.yaml_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.yaml_view.setToolTip("The run YAML: save it and run `mmvae train file.yaml` to train the same model headless")
        right_tabs = QTabWidget()
        right_tabs.addTab(training_scroll, "Training settings")
        right_tabs.addTab(self.yaml_view, "Run YAML")
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip(_NAME_TIP)
        self.name_edit.textEdited.connect(self._name_changed)
        name_row = QHBoxLayout()
        name_row.addWidget(QLabel("Run name"))
        name_row.addWidget(self.name_edit, 1)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addLayout(name_row)
        rl.addWidget(right_tabs, 1)

        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(middle)
        splitter.addWidget(right)
        splitter.setSizes([260, 420, 420])
        layout.addWidget(splitter, 1)

        # -- bottom buttons
        buttons = QHBoxLayout()
        self.load_button = QPushButton("Load YAML…")
        self.load_button.setToolTip("Load a run configuration (also from `mmvae` or an earlier run folder) (Ctrl+L)")
        self.load_button.clicked.connect(self.choose_yaml_to_load)
        self.save_button = QPushButton("Save YAML…")
        self.save_button.setToolTip("Save this configuration for `mmvae train` (Ctrl+S)")
        self.save_button.clicked.connect(self.choose_yaml_to_save)
        self.reason_label = QLabel()
        self.reason_label.setObjectName("PageHint")
        self.reason_label.setWordWrap(True)
        self.next_button = QPushButton("Next: Train \u25b8")
        self.next_button.setObjectName("Primary")
        self.next_button.setToolTip("Go to the Train page to start this run")
        self.next_button.clicked.connect(self.go_to_train)
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.reason_label, 1)
        buttons.addWidget(self.next_button)
        layout.addLayout(buttons)

        self.state.cohort_changed.connect(self._cohort_changed)
        self.state.data_config_changed.connect(self._changed)
        self.state.loaded_changed.connect(self._changed)
        self.populate_models()
        self.refresh_previous_runs()

    # ------------------------------------------------------------------ models
    def populate_models(self) -> None:
        """List every model ``core.models.available()`` knows (new models appear without GUI changes)."""
        current = self.model_name()
        self.model_list.clear()
        for name in available():
            cls = get_model_class(name)
            item = QListWidgetItem(name + ("" if cls.supports_incomplete_data else "   (complete data only)"))
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setToolTip(cls.summary or (cls.__doc__ or "").strip().splitlines()[0])
            self.model_list.addItem(item)
        names = [self.model_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.model_list.count())]
        if not names:
            return
        if current in names:
            self.select_model(current)
            return
        try:
            recommended = recommended_start()
        except ValueError as error:
            self.messages.warning("presets", str(error))
            recommended = None
        if recommended is None or recommended[0] not in names:
            self.select_model("MVAE" if "MVAE" in names else names[0])
            return
        # First start: the model and preset that won the synthesis benchmark on the demo, applied.
        model, preset_name = recommended
        self.select_model(model)
        preset = next((p for p in self.presets() if p.name == preset_name), None)
        if preset is not None:
            self.preset_combo.setCurrentIndex(self.presets().index(preset))
            self.apply_preset(preset)

    def model_name(self) -> str | None:
        item = self.model_list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def select_model(self, name: str) -> None:
        cls = get_model_class(name)
        for i in range(self.model_list.count()):
            if self.model_list.item(i).data(Qt.ItemDataRole.UserRole) == cls.name:
                self.model_list.setCurrentRow(i)
                return
        raise ConfigError(f"Model '{name}' is not registered; available: {', '.join(available())}.")

    @Slot(QListWidgetItem, QListWidgetItem)
    def _model_chosen(self, current: QListWidgetItem | None, previous: QListWidgetItem | None) -> None:
        if current is None:
            return
        name = current.data(Qt.ItemDataRole.UserRole)
        cls = get_model_class(name)
        form = SchemaForm(config_schema(cls.config_class), exclude=DATA_FILLED_KEYS + HIDDEN_MODEL_KEYS)
        form.changed.connect(self._changed)
        self.model_form = form
        self.model_scroll.setWidget(form)
        self.card.title.setText(cls.name)
        self.card.title.setVisible(True)
        doc = (cls.__doc__ or "").strip().splitlines()
        self.card_summary.setText(cls.summary or (doc[0] if doc else ""))
        self.card_incomplete.setText(
            "\u2714 Learns from incomplete data: subjects may miss modalities." if cls.supports_incomplete_data
            else "\u2716 Needs complete data: every training subject must have every modality.")
        self._load_presets(cls.name)
        self.refresh_previous_runs()
        if not self._name_edited:
            self.name_edit.setText(self._default_name())
        self._changed()

    def _default_name(self) -> str:
        source = self.state.source
        prefix = "demo" if source == "demo" else (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).stem) if source else "run")
        return f"{prefix}-{(self.model_name() or 'model').lower()}"

    @Slot()
    def _cohort_changed(self) -> None:
        if not self._name_edited:
            self.name_edit.setText(self._default_name())
        self._changed()

    @Slot(str)
    def _name_changed(self, text: str) -> None:
        self._name_edited = True
        self._changed()

    # ------------------------------------------------------------------ presets and previous runs
    def _load_presets(self, model: str) -> None:
        self.preset_combo.clear()
        try:
            presets = load_presets(model)
        except ValueError as error:
            self.messages.warning("presets", str(error))
            presets = []
        for preset in presets:
            self.preset_combo.addItem(preset.name, preset)
            self.preset_combo.setItemData(self.preset_combo.count() - 1, preset.get("description", ""), Qt.ItemDataRole.ToolTipRole)
        synthesis = next((i for i, p in enumerate(presets) if p.name == SYNTHESIS_PRESET), None)
        if synthesis is not None:  # offered first: the settings the synthesis benchmark measured
            self.preset_combo.setCurrentIndex(synthesis)
        has = bool(presets)
        self.preset_combo.setEnabled(has)
        self.preset_button.setEnabled(has)
        if not has:
            self.preset_combo.addItem("(no presets for this model)")

    def presets(self) -> list[Preset]:
        return [self.preset_combo.itemData(i) for i in range(self.preset_combo.count()) if self.preset_combo.itemData(i)]

    @Slot()
    def apply_selected_preset(self) -> None:
        preset = self.preset_combo.currentData()
        if preset:
            self.apply_preset(preset)

    def apply_preset(self, preset: Preset) -> None:
        assert self.model_form is not None
        unknown = self.model_form.set_values(preset["model"]) + self.training_form.set_values(preset["training"])
        if unknown:
            self.messages.warning("presets", f"Preset '{preset.name}' has settings this version does not know: "
                                  f"{', '.join(unknown)}; they were ignored.")
        self.status_message.emit(f"Preset '{preset.name}' applied")

    def refresh_previous_runs(self) -> None:
        """Offer the runs already read at once, and re-read the runs folder in a worker thread (a share can be slow)."""
        self._fill_previous_runs()
        self.previous_runner.start(list_all_runs_task, str(self.runs_root))

    @Slot(object)
    def _previous_runs_read(self, runs: list[RunSummary]) -> None:
        self._previous_runs = runs
        self._fill_previous_runs()
        self.previous_runs_listed.emit()

    def _fill_previous_runs(self) -> None:
        """The runs of the chosen model among those read last; the chosen one stays chosen."""
        model = self.model_name()
        chosen = self.previous_combo.currentData()
        self.previous_combo.clear()
        runs = [r for r in self._previous_runs if model is None or r.model == model]
        for run in runs:
            best = f", best {run.best_validation_loss:.4g}" if run.best_validation_loss is not None else ""
            self.previous_combo.addItem(f"{run.path.name} ({run.status}{best})", str(run.path))
        has = bool(runs)
        self.previous_combo.setEnabled(has)
        self.previous_button.setEnabled(has)
        if not has:
            self.previous_combo.addItem("(no earlier runs of this model)")
        elif chosen and (index := self.previous_combo.findData(chosen)) >= 0:
            self.previous_combo.setCurrentIndex(index)

    def set_runs_root(self, root: Path) -> None:
        self.runs_root = Path(root)
        self.refresh_previous_runs()

    @Slot()
    def apply_selected_previous_run(self) -> None:
        path = self.previous_combo.currentData()
        if path:
            self.load_yaml(Path(path) / "config.yaml", apply_data=False)

    # ------------------------------------------------------------------ YAML
    @Slot()
    def choose_yaml_to_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a run configuration", self._last_dir(), "Run YAML (*.yaml *.yml)")
        if path:
            self.load_yaml(path)

    @Slot()
    def choose_yaml_to_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the run configuration",
                                              str(Path(self._last_dir()) / f"{self.name_edit.text() or 'run'}.yaml"),
                                              "Run YAML (*.yaml *.yml)")
        if path:
            self.save_yaml(path)

    def _last_dir(self) -> str:
        settings = getattr(self.window(), "settings", None)
        return settings.last_dir() if settings is not None else str(Path.home())

    def load_yaml(self, path: str | Path, apply_data: bool = True) -> bool:
        """Fill the page from a run YAML (validated by ``core``); errors are shown, not raised."""
        try:
            config = load_run_config(path)
        except (ConfigError, FileNotFoundError, ValueError) as error:
            self.messages.error("yaml", f"Cannot load {Path(path).name}: {error}")
            return False
        self.messages.clear("yaml")
        self.select_model(config.model_name)
        assert self.model_form is not None
        self.model_form.set_values(config.model_params)
        self.training_form.set_values(config_to_dict(config.training))
        self.name_edit.setText(config.name)
        self._name_edited = True
        if apply_data:
            self.state.data_config_requested.emit(config_to_dict(config.data))
        self.run_file_used.emit(str(path))
        self.status_message.emit(f"Loaded {Path(path).name}")
        self._changed()
        return True

    def save_yaml(self, path: str | Path) -> bool:
        blocker = self.validate()
        if self.state.run_config is None:
            self.messages.error("yaml", f"The configuration is not valid yet, so it was not saved: {blocker}")
            return False
        path = Path(path)
        path.write_text(run_yaml_text(self.state.run_config), encoding="utf-8")
        self.messages.clear("yaml")
        self.run_file_used.emit(str(path))
        self.status_message.emit(f"Saved {path}")
        return True

    # ------------------------------------------------------------------ the run configuration
    def model_values(self) -> dict[str, Any]:
        """The model section without the name: every setting that differs from "none"/empty defaults."""
        if self.model_form is None:
            return {}
        values = self.model_form.values()
        out = {}
        for key, value in values.items():
            default = self.model_form.editor(key).spec.default
            if value in (None, {}, []) and (default is NO_DEFAULT or default == value):
                continue
            out[key] = value
        return out

    def run_config_values(self) -> dict[str, Any]:
        """The run as a plain dict: name, data (from the Data page), model, training."""
        data = self.state.data_config_dict() or {"source": "demo", "demo": dict(self.state.demo_settings)}
        return {
            "name": self.name_edit.text().strip() or self._default_name(),
            "data": data,
            "model": {"name": self.model_name(), **self.model_values()},
            "training": self.training_form.values(),
        }

    @Slot()
    def _changed(self) -> None:
        self._validate_timer.start()

    @Slot()
    def validate(self) -> str | None:
        """Check the whole configuration with ``core``; flag fields inline; returns the Start blocker."""
        self._validate_timer.stop()
        model = self.model_name()
        if model is None or self.model_form is None:
            self.state.set_run_config(None, "No model is registered.")
            return "No model is registered."
        cls = get_model_class(model)
        model_errors = self.model_form.typed_errors()
        training_errors = self.training_form.typed_errors()
        name = self.name_edit.text().strip()
        name_error = "" if not name or _NAME_RE.fullmatch(name) else "Use only letters, digits, '.', '_' and '-'."
        values = self.run_config_values()
        config, problems = self._checked_config(values) if not (model_errors or training_errors or name_error) else (None, [])
        config_error = str(ConfigError.of(problems, "the run config")) if problems else ""
        core_model = {field: p.text for p in problems if (field := _form_field(p, "model")) in self.model_form.keys()}
        core_training = {field: p.text for p in problems
                         if (field := _form_field(p, "training")) in self.training_form.keys()}
        self.model_form.set_external_errors(core_model)
        self.training_form.set_external_errors(core_training)
        model_errors.update(core_model)
        training_errors.update(core_training)
        self.name_edit.setProperty("invalid", bool(name_error))
        self.name_edit.style().polish(self.name_edit)
        self.name_edit.setToolTip(name_error or _NAME_TIP)

        blocker = None
        if model_errors or training_errors or name_error or config_error:
            flagged = [f"model: {k}" for k in model_errors] + [f"training: {k}" for k in training_errors]
            if name_error:
                flagged.append("run name")
            blocker = "Fix the highlighted settings" + (f" ({', '.join(flagged)})" if flagged else "") + "."
            if config_error and not flagged:
                blocker = f"The configuration is not valid: {config_error}"
        elif self.state.info is None:
            blocker = "Open a cohort on the Data page first."
        else:
            incomplete, total, missing = self.state.incomplete_summary()
            if not cls.supports_incomplete_data and incomplete:
                lacking = ", ".join(f"{m} missing for {c}" for m, c in missing.items() if c)
                others = [n for n in available() if get_model_class(n).supports_incomplete_data]
                blocker = (f"{cls.name} needs every modality for every subject, but {incomplete} of {total} subjects "
                           f"lack one ({lacking}). Choose a model that learns from incomplete data"
                           + (f" ({', '.join(others)})" if others else "")
                           + ", or untick modalities on the Data page.")
        self._show_fit(cls, blocker)
        self._check_schedule(values)
        if config_error:
            self.messages.error("config", config_error)
        else:
            self.messages.clear("config")
        self.yaml_view.setPlainText(run_yaml_text(config) if config is not None else f"# Not valid yet: {blocker}")
        self.reason_label.setText(blocker or "Ready to train.")
        self.state.set_run_config(config, blocker)
        return blocker

    def _checked_config(self, values: dict[str, Any]) -> tuple[RunConfig | None, list[ConfigProblem]]:
        """The run config parsed once, with the model bound to what is known of the data: the modalities as
        soon as a cohort is open, their input shapes once the Data page has prepared the dataset."""
        try:
            config = parse_run_config(values)
            loaded = self.state.loaded_for(config_to_dict(config.data))
            if loaded is not None:
                config.model.bind(loaded.dataset.modalities, loaded.dataset.input_dims)
            elif self.state.modalities():
                config.model.bind(self.state.modalities())
        except ConfigError as error:
            return None, error.problems
        return config, []

    def _check_schedule(self, values: dict[str, Any]) -> None:
        """Valid but probably not meant: a warm-up longer than the run (a KL weight that never reaches beta,
        JNF's flows that never train)."""
        warmup = (values.get("model") or {}).get("warmup")
        epochs = (values.get("training") or {}).get("num_epochs")
        if isinstance(warmup, int) and isinstance(epochs, int) and 0 < epochs < warmup:
            self.messages.warning("warmup", f"Warmup is {warmup} epochs but the run trains {epochs}: the warm-up "
                                  "never finishes (hover Warmup for what it does in this model). Lower Warmup (Model "
                                  f"settings) to {epochs} or fewer, or train for more epochs.")
        else:
            self.messages.clear("warmup")

    def _show_fit(self, cls: Any, blocker: str | None) -> None:
        info = self.state.info
        if info is None:
            self.card_fit.setText("<i>Open a cohort to check that this model fits it.</i>")
            return
        incomplete, total, _ = self.state.incomplete_summary()
        fits = cls.supports_incomplete_data or incomplete == 0
        dark = self.palette().window().color().lightness() < 128
        colour = ("#66bb6a" if dark else "#2e7d32") if fits else ("#ef5350" if dark else "#c62828")
        verdict = "fits" if fits else "does not fit"
        self.card_fit.setText(f"<span style='color:{colour}'><b>This cohort {verdict} {cls.name}</b></span>: "
                              f"{total - incomplete} of {total} subjects have every selected modality."
                              + (f"<br>{blocker}" if blocker and not fits else ""))

    def shutdown(self) -> bool:
        """Stop validating and wait for the listing of previous runs (a QThread destroyed while it runs aborts)."""
        self._validate_timer.stop()
        return self.previous_runner.shutdown()
