"""The main window: the Data -> Model -> Train -> Explore -> Synthesize workflow, menus, toolbar,
status bar, shortcuts, recent cohorts and runs, remembered layout, themes, and in-app error messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QRect, QSize, Qt, QTimer, Slot
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from core.config import ConfigError
from core.workflows.runs import load_run_config
from workbench.environment import device_info, versions
from workbench.messages import ErrorReporter, Message, MessageArea
from workbench.pages.data import DataPage
from workbench.pages.explore import ExplorePage
from workbench.pages.model import ModelPage
from workbench.pages.synthesize import SynthesizePage
from workbench.pages.train import TrainPage
from workbench.resources import apply_theme
from workbench.settings import Settings
from workbench.state import WorkbenchState, source_label
from workbench.widgets.tooltips import install_tooltip_fitter

__all__ = ["MainWindow", "PAGES", "fit_inside"]

PAGES = ("Data", "Model", "Train", "Explore", "Synthesize")
_PAGE_HINTS = {
    "Data": "Open a cohort and check it",
    "Model": "Choose and configure a model",
    "Train": "Train and watch it learn",
    "Explore": "Latent space, coloured by missingness, split or label",
    "Synthesize": "Synthesize missing modalities and export them",
}


#: Room left for the window manager's title bar and borders around the client area.
_FRAME_MARGIN = QSize(16, 48)


def fit_inside(window: QRect, available: QRect, frame: QSize = _FRAME_MARGIN) -> QRect:
    """``window`` shrunk to fit ``available`` (with room for the frame) and moved inside it."""
    width = min(window.width(), available.width() - frame.width())
    height = min(window.height(), available.height() - frame.height())
    x = min(max(window.x(), available.x() + frame.width() // 2), available.right() + 1 - width - frame.width() // 2)
    y = min(max(window.y(), available.y() + frame.height() - frame.width() // 2),
            available.bottom() + 1 - height - frame.width() // 2)
    return QRect(x, y, width, height)


class MainWindow(QMainWindow):
    """The workbench window.

    Args:
        settings: where preferences live (tests pass an INI file in a temporary folder).
        demo_settings: the demo cohort to open from "Demo cohort" (default: 48 subjects at 32^3).
        runs_root: where run folders go (default: the settings' runs folder).
    """

    def __init__(self, settings: Settings | None = None, demo_settings: dict[str, Any] | None = None,
                 runs_root: str | Path | None = None) -> None:
        super().__init__()
        self.settings = settings or Settings()
        if runs_root is not None:
            self.settings.set_runs_root(runs_root)
        self.confirm_close = True
        self._closing = False
        self.state = WorkbenchState(demo_settings, self)
        self.error_reporter = ErrorReporter(self)
        self.error_reporter.error.connect(self.show_uncaught_error)
        self.setWindowTitle("mmvae workbench")
        self.setAcceptDrops(True)
        install_tooltip_fitter(QApplication.instance())  # every tooltip inside its screen
        self.resize(1360, 860)

        runs = self.settings.runs_root()
        self.data_page = DataPage(self.state)
        self.model_page = ModelPage(self.state, runs)
        self.train_page = TrainPage(self.state, runs, preview_every=self.settings.preview_every())
        self.explore_page = ExplorePage(self.state, self.settings)
        self.synthesize_page = SynthesizePage(self.state, self.settings)
        self.pages: list[QWidget] = [self.data_page, self.model_page, self.train_page, self.explore_page, self.synthesize_page]

        # -- navigation + stack
        self.nav = QListWidget()
        self.nav.setObjectName("NavList")
        self.nav.setFixedWidth(168)
        self.nav.setIconSize(QSize(18, 18))
        self.stack = QStackedWidget()
        for i, (name, page) in enumerate(zip(PAGES, self.pages, strict=True)):
            item = QListWidgetItem(f"{i + 1}  {name}")
            item.setToolTip(f"{_PAGE_HINTS[name]} (Ctrl+{i + 1})")
            self.nav.addItem(item)
            self.stack.addWidget(page)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.nav.currentRowChanged.connect(self.settings.set_last_page)
        self.messages = MessageArea()
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(8, 6, 8, 0)
        rl.setSpacing(4)
        rl.addWidget(self.messages)
        rl.addWidget(self.stack, 1)
        central = QWidget()
        cl = QHBoxLayout(central)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(0)
        cl.addWidget(self.nav)
        cl.addWidget(right, 1)
        self.setCentralWidget(central)

        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self._build_status_bar()

        # -- wiring
        for page in (self.data_page, self.model_page, self.train_page):
            page.status_message.connect(self.show_status)
        self.data_page.cohort_opened.connect(self._cohort_opened)
        self.model_page.go_to_train.connect(lambda: self.go_to_page(2))
        self.model_page.run_file_used.connect(self._run_file_used)
        self.train_page.training_state_changed.connect(self._training_state_changed)
        self.train_page.run_started.connect(self._run_file_used)
        self.state.run_config_changed.connect(self._update_run_actions)
        self._relayed: dict[tuple[int, str], tuple[MessageArea, str]] = {}
        for index, page in enumerate(self.pages):
            area = getattr(page, "messages", None)
            if isinstance(area, MessageArea):
                area.shown.connect(lambda key, message, i=index: self._relay_message(i, key, message))
                area.cleared.connect(lambda key, i=index: self._drop_relay(i, key))
        self.nav.currentRowChanged.connect(self._page_shown)
        self.data_page.set_recent(self.settings.recent_cohorts())
        self._rebuild_recent_menus()
        self._restore()
        self._update_run_actions()

    # ------------------------------------------------------------------ actions
    def _action(self, text: str, slot: Callable[..., Any], shortcut: str | QKeySequence.StandardKey | None = None,
                tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setToolTip(tip or text.replace("&", "").rstrip("…"))
        action.setStatusTip(tip or text.replace("&", ""))
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        d, m, t = self.data_page, self.model_page, self.train_page
        self.act_open_folder = self._action("Open cohort &folder…", d.choose_folder, "Ctrl+O",
                                            "Open a BIDS dataset or a folder with one sub-folder per subject")
        self.act_open_manifest = self._action("Open &manifest…", d.choose_manifest, "Ctrl+Shift+O",
                                              "Open a manifest CSV (subject, modality, path)")
        self.act_open_h5 = self._action("Open &HDF5 cache…", d.choose_h5, None, "Open a prepared HDF5 cache")
        self.act_open_demo = self._action("Open &demo cohort", d.open_demo, "Ctrl+D", "The bundled synthetic MR/US cohort")
        self.act_load = self._action("&Load run configuration…", m.choose_yaml_to_load, "Ctrl+L",
                                     "Load a run YAML (the file `mmvae train` takes)")
        self.act_save = self._action("&Save run configuration…", m.choose_yaml_to_save, "Ctrl+S",
                                     "Save the run as YAML for `mmvae train`")
        self.act_runs_root = self._action("Runs folder…", self.choose_runs_root, None, "Where new run folders are created")
        self.act_quit = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_start = self._action("&Start training", t.start, "Ctrl+Return", "Start training with these settings")
        self.act_pause = self._action("&Pause / resume", t.toggle_pause, "Ctrl+P", "Pause after the current step, or resume")
        self.act_stop = self._action("S&top and keep", t.stop, "Ctrl+Shift+T",
                                     "Finish the step, save a checkpoint, keep the run as stopped")
        self.act_cancel = self._action("&Cancel training", t.cancel, "Ctrl+.",
                                      "Discard the run: end it after the current step and delete a new run's folder")
        self.act_refresh = self._action("&Refresh runs", t.refresh_runs, "F5")
        self.act_about = self._action("&About mmvae workbench", self.show_about, None)
        self.act_shortcuts = self._action("&Keyboard shortcuts", self.show_shortcuts, "F1")
        self.page_actions = [self._action(f"&{i + 1} {name}", lambda checked=False, i=i: self.go_to_page(i), f"Ctrl+{i + 1}")
                             for i, name in enumerate(PAGES)]
        self.theme_group = QActionGroup(self)
        self.theme_actions = {}
        for theme in ("light", "dark"):
            action = QAction(f"{theme.capitalize()} theme", self, checkable=True)
            action.triggered.connect(lambda checked=False, th=theme: self.set_theme(th))
            self.theme_group.addAction(action)
            self.theme_actions[theme] = action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        for a in (self.act_open_folder, self.act_open_manifest, self.act_open_h5, self.act_open_demo):
            file.addAction(a)
        self.recent_cohorts_menu = file.addMenu("Recent cohorts")
        file.addSeparator()
        file.addAction(self.act_load)
        file.addAction(self.act_save)
        self.recent_runs_menu = file.addMenu("Recent runs")
        file.addSeparator()
        file.addAction(self.act_runs_root)
        file.addSeparator()
        file.addAction(self.act_quit)
        view = bar.addMenu("&View")
        for a in self.page_actions:
            view.addAction(a)
        view.addSeparator()
        for a in self.theme_actions.values():
            view.addAction(a)
        run = bar.addMenu("&Run")
        for a in (self.act_start, self.act_pause, self.act_stop, self.act_cancel):
            run.addAction(a)
        run.addSeparator()
        run.addAction(self.act_refresh)
        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self.act_shortcuts)
        help_menu.addAction(self.act_about)

    def _build_toolbar(self) -> None:
        bar = QToolBar("Main toolbar")
        bar.setObjectName("MainToolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for a in (self.act_open_folder, self.act_open_manifest, self.act_open_demo):
            bar.addAction(a)
        bar.addSeparator()
        for a in (self.act_load, self.act_save):
            bar.addAction(a)
        bar.addSeparator()
        for a in (self.act_start, self.act_pause, self.act_stop, self.act_cancel):
            bar.addAction(a)
        self.addToolBar(bar)
        self.toolbar = bar

    def _build_status_bar(self) -> None:
        status = self.statusBar()
        self.cohort_status = QLabel("No cohort")
        self.training_status = QLabel("")
        info = device_info()
        self.device_status = QLabel(f"Device: {info.name}")
        self.device_status.setObjectName("Badge")
        self.device_status.setProperty("level", "warning" if info.warning else ("ok" if info.is_gpu else ""))
        self.device_status.setToolTip(info.warning or info.detail)
        status.addPermanentWidget(self.cohort_status)
        status.addPermanentWidget(self.training_status)
        status.addPermanentWidget(self.device_status)
        self.device = info
        if info.warning:
            self.messages.warning("device", info.warning)

    # ------------------------------------------------------------------ navigation
    def go_to_page(self, index: int) -> None:
        self.nav.setCurrentRow(index)

    def current_page(self) -> QWidget:
        return self.stack.currentWidget()

    # ------------------------------------------------------------------ feedback where the action was
    def _relay_message(self, source: int, key: str, message: Message) -> None:
        """An error or warning shown on a page the user is not looking at (the Model page's run file opening
        a cohort that fails, say) appears on the page they are on too, with a way to the page it belongs to."""
        current = self.nav.currentRow()
        if source == current or message.level == "info":
            return
        area = getattr(self.pages[current], "messages", None)
        target = area if isinstance(area, MessageArea) else self.messages
        self._drop_relay(source, key)
        relay_key = f"from:{PAGES[source]}:{key}"
        self._relayed[(source, key)] = (target, relay_key)
        target.show_message(relay_key, message.level, f"{PAGES[source]} page: {message.text}", message.details,
                            title=message.title, action=(f"Go to {PAGES[source]}", lambda: self.go_to_page(source)))

    def _drop_relay(self, source: int, key: str) -> None:
        target, relay_key = self._relayed.pop((source, key), (None, ""))
        if target is not None:
            target.clear(relay_key)

    @Slot(int)
    def _page_shown(self, index: int) -> None:
        """On its own page a message is shown once: the copies elsewhere go."""
        for source, key in [k for k in self._relayed if k[0] == index]:
            self._drop_relay(source, key)

    @Slot(str)
    def show_status(self, text: str) -> None:
        self.statusBar().showMessage(text, 8000)

    # ------------------------------------------------------------------ recent items
    def _cohort_opened(self, source: str) -> None:
        self.settings.add_recent_cohort(source)
        if source != "demo":
            self.settings.set_last_dir(source)
        self.data_page.set_recent(self.settings.recent_cohorts())
        self._rebuild_recent_menus()
        info = self.state.info
        if info is not None:
            self.cohort_status.setText(f"{source_label(source)}: {len(info.subjects)} subjects, {len(info.modalities)} modalities")
            self.setWindowTitle(f"mmvae workbench — {source_label(source)}")

    def _run_file_used(self, path: str) -> None:
        self.settings.add_recent_run(path)
        self.settings.set_last_dir(path)
        self._rebuild_recent_menus()

    def _rebuild_recent_menus(self) -> None:
        self.recent_cohorts_menu.clear()
        for source in self.settings.recent_cohorts():
            action = self.recent_cohorts_menu.addAction(source_label(source) if source == "demo" else source)
            action.triggered.connect(lambda checked=False, s=source: self.data_page.open_source(s))
        self.recent_cohorts_menu.setEnabled(bool(self.settings.recent_cohorts()))
        self.recent_runs_menu.clear()
        for path in self.settings.recent_runs():
            action = self.recent_runs_menu.addAction(path)
            action.triggered.connect(lambda checked=False, p=path: self.open_run_path(p))
        self.recent_runs_menu.setEnabled(bool(self.settings.recent_runs()))

    def open_run_path(self, path: str | Path) -> None:
        """A run YAML loads into the Model page; a run folder also selects the run on the Train page."""
        path = Path(path)
        if path.is_dir():
            self.model_page.load_yaml(path / "config.yaml")
            self.train_page.refresh_runs()
            self.train_page.select_run(path)
            self.go_to_page(2)
        elif path.is_file():
            if self.model_page.load_yaml(path):
                self.go_to_page(1)
        else:
            self.messages.warning("recent", f"{path} no longer exists.")

    def restore_session(self, open_demo: bool = True) -> str | None:
        """Reopen the last cohort (with the last run on it, when there is one), else the demo.

        Returns what was opened: a run folder, a cohort source, or None when nothing was.
        """
        cohorts = [c for c in self.settings.recent_cohorts() if c == "demo" or Path(c).exists()]
        cohort = cohorts[0] if cohorts else ("demo" if open_demo else None)
        if cohort is None:
            return None
        run = self._last_run_on(cohort)
        if run is not None and self.model_page.load_yaml(run / "config.yaml"):
            self.train_page.select_run(run)
            return str(run)
        self.data_page.open_source(cohort)
        return cohort

    def _last_run_on(self, cohort: str) -> Path | None:
        """The most recently used run folder if it was trained on ``cohort``."""
        for recent in self.settings.recent_runs()[:1]:
            path = Path(recent)
            folder = path.parent if path.name == "config.yaml" else path
            if not (folder / "status.json").is_file():
                return None
            try:
                source = load_run_config(folder / "config.yaml").data.source
            except (ConfigError, OSError, ValueError):
                return None
            return folder if source == cohort else None
        return None

    @Slot()
    def choose_runs_root(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for new runs", str(self.settings.runs_root()))
        if path:
            self.settings.set_runs_root(path)
            self.model_page.set_runs_root(Path(path))
            self.train_page.set_runs_root(Path(path))

    # ------------------------------------------------------------------ training state
    @Slot(str)
    def _training_state_changed(self, phase: str) -> None:
        labels = {"idle": "", "loading": "Preparing data…", "running": "Training…", "paused": "Training paused",
                  "stopping": "Stopping…", "cancelling": "Cancelling…"}
        self.training_status.setText(labels.get(phase, phase))
        self._update_run_actions()
        if phase == "idle" and self._closing:
            QTimer.singleShot(0, self.close)

    @Slot()
    def _update_run_actions(self) -> None:
        t = self.train_page
        self.act_start.setEnabled(t.start_button.isEnabled())
        self.act_start.setToolTip(t.start_button.toolTip())
        self.act_pause.setEnabled(t.pause_button.isEnabled())
        self.act_stop.setEnabled(t.stop_button.isEnabled())
        self.act_cancel.setEnabled(t.cancel_button.isEnabled())

    # ------------------------------------------------------------------ theme
    def set_theme(self, theme: str) -> None:
        app = QApplication.instance()
        if isinstance(app, QApplication):
            apply_theme(app, theme)
        for widget in self.findChildren(QWidget):
            refresh = getattr(widget, "apply_plot_theme", None)
            if callable(refresh):
                refresh()
        self.theme_actions[theme].setChecked(True)
        self.settings.set_theme(theme)

    # ------------------------------------------------------------------ errors
    @Slot(str, str)
    def show_uncaught_error(self, summary: str, details: str) -> None:
        """An exception nobody caught: show it in the window, keep the application running."""
        self.messages.error("uncaught", f"Something went wrong: {summary}. The workbench keeps running; if this "
                            "repeats, copy the details into a bug report.", details, title="Unexpected error")

    # ------------------------------------------------------------------ about
    def about_text(self) -> str:
        rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in versions().items())
        device = f"<p><b>Compute device:</b> {self.device.name} — {self.device.detail}</p>"
        warning = f"<p style='color:#c62828'><b>Warning:</b> {self.device.warning}</p>" if self.device.warning else ""
        return (f"<h3>mmvae workbench</h3><p>Multimodal VAEs on partially observed medical images: train, explore "
                f"and impute missing modalities.</p>{device}{warning}<table>{rows}</table>"
                f"<p>Settings: {self.settings.file_name()}<br>Runs: {self.settings.runs_root()}</p>")

    @Slot()
    def show_about(self) -> None:
        QMessageBox.about(self, "About mmvae workbench", self.about_text())

    def shortcuts_text(self) -> str:
        actions = [self.act_open_folder, self.act_open_manifest, self.act_open_demo, self.act_load, self.act_save,
                   *self.page_actions, self.act_start, self.act_pause, self.act_stop, self.act_cancel, self.act_refresh,
                   self.act_shortcuts, self.act_quit]
        rows = "".join(f"<tr><td><b>{a.shortcut().toString(QKeySequence.SequenceFormat.NativeText)}</b></td>"
                       f"<td>{a.text().replace('&', '')}</td></tr>" for a in actions if not a.shortcut().isEmpty())
        return f"<table cellspacing='6'>{rows}</table>"

    @Slot()
    def show_shortcuts(self) -> None:
        QMessageBox.information(self, "Keyboard shortcuts", self.shortcuts_text())

    # ------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            path = Path(url.toLocalFile())
            if path.suffix.lower() in (".yaml", ".yml"):
                self.open_run_path(path)
            elif path.is_dir() and (path / "config.yaml").is_file() and (path / "status.json").is_file():
                self.open_run_path(path)
            else:
                self.data_page.open_source(str(path))
                self.go_to_page(0)
            break

    # ------------------------------------------------------------------ persistence and closing
    def _restore(self) -> None:
        geometry, state = self.settings.window_geometry(), self.settings.window_state()
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)
        self.fit_to_screen()
        self.set_theme(self.settings.theme())
        self.go_to_page(min(max(0, self.settings.last_page()), len(PAGES) - 1))

    def fit_to_screen(self) -> None:
        """Keep the window inside its screen's available area (a saved layout may come from a larger screen)."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is not None:
            self.setGeometry(fit_inside(self.geometry(), screen.availableGeometry()))

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.train_page.is_training and not self._closing:
            if self.confirm_close:
                answer = QMessageBox.question(
                    self, "Training is running",
                    "A run is training. Stop it and keep it (you can resume it later), then quit?",
                    QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
                if answer != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return
                self._closing = True
                self.train_page.stop()
                self.show_status("Stopping the run before closing…")
                event.ignore()
                return
        self.settings.save_window(self.saveGeometry(), self.saveState())
        self.settings.sync()
        for page in self.pages:
            shutdown = getattr(page, "shutdown", None)
            if shutdown is not None:
                shutdown()
        event.accept()
