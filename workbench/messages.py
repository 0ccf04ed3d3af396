"""Messages shown inside the window, never only in the terminal.

* :class:`MessageBar`: one inline message (error, warning or information) with an optional
  "Details" pane (a traceback, a list of issues), an optional action button and a close button.
* :class:`MessageArea`: a column of message bars that a page owns. Messages have keys, so the same
  problem shown twice replaces the first bar instead of stacking up (no dialog storms).
* :class:`ErrorReporter` + :func:`install_excepthooks`: uncaught exceptions in the UI thread
  (``sys.excepthook``) and in Python threads (``threading.excepthook``) become a readable message in the
  main window, with the traceback in the details; the application stays up.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["Level", "Message", "MessageBar", "MessageArea", "ErrorReporter", "install_excepthooks", "format_exception",
           "plain_task_error", "gui_advice"]

log = logging.getLogger(__name__)

Level = Literal["error", "warning", "info"]
#: The style's own message icons: always drawable, where emoji such as U+26D4 render as an empty box.
_ICONS = {"error": QStyle.StandardPixmap.SP_MessageBoxCritical, "warning": QStyle.StandardPixmap.SP_MessageBoxWarning,
          "info": QStyle.StandardPixmap.SP_MessageBoxInformation}


@dataclass(frozen=True)
class Message:
    """What a bar shows: ``text`` (one or two sentences saying what happened and what to do) and
    optional ``details`` (traceback, full issue list)."""

    level: Level
    text: str
    details: str = ""
    title: str = ""


def format_exception(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


_TRACEBACK = "Traceback (most recent call last)"
#: Advice written for the command line or Python, and what a person does in the window instead.
_GUI_ADVICE = [
    (re.compile(r"pass modality_patterns \(e\.g\. \{[^}]*\}\) or a manifest CSV"),
     "say which files hold which modality with 'Map file names to modalities…' on the Data page (for example "
     "*_T1.nii.gz is T1), or list each subject's files in a manifest CSV and open it with File > Open manifest"),
    (re.compile(r"pass modality_patterns to map them, e\.g\. \{[^}]*\}"),
     "say which modality they hold with 'Map file names to modalities…' on the Data page (for example "
     "*-US-before* is US)"),
    (re.compile(r"give modality_patterns that tell them apart"),
     "tell them apart with 'Map file names to modalities…' on the Data page, or rename the files"),
]
#: Exceptions that mean a fault in the program, not in what the user gave it.
_INTERNAL = ("KeyError", "IndexError", "AttributeError", "TypeError", "NameError", "AssertionError",
             "ZeroDivisionError", "UnboundLocalError", "NotImplementedError", "RecursionError", "ImportError")


class _TaskErrorLike(Protocol):
    type_name: str
    message: str
    details: str
    exception: BaseException | None


def gui_advice(text: str) -> str:
    """``text`` with command-line advice (``pass modality_patterns ...``) replaced by what to do in the window."""
    for pattern, replacement in _GUI_ADVICE:
        text = pattern.sub(replacement, text)
    return text


def plain_task_error(what: str, error: _TaskErrorLike) -> tuple[str, str]:
    """A failed task as (message, details): ``what`` failed, why in plain words and what to do; the
    exception and its traceback go to the details, which a second click reveals."""
    exception = error.exception
    message = error.message
    if isinstance(exception, MemoryError) or "out of memory" in message.lower():
        why = ("the computer ran out of memory. Close other programs, or use a smaller batch size, a smaller "
               "image size or fewer subjects")
    elif isinstance(exception, PermissionError):
        why = (f"the workbench is not allowed to use {exception.filename or 'a file'}. Choose a folder you can "
               "write to, or ask for access")
    elif isinstance(exception, FileNotFoundError):
        why = (f"{exception.filename or 'a file'} was not found. Check that it still exists and that its drive or "
               "share is connected")
    elif isinstance(exception, OSError) and getattr(exception, "errno", None) == errno.ENOSPC:
        why = "the disk is full. Free some space or choose another folder"
    elif error.type_name in _INTERNAL:
        why = (f"of an internal error ({error.type_name}). Nothing you entered is lost. Please copy the details "
               "(Details, then Copy) into a bug report")
    else:  # the library's own errors are written for people: the problem and its fix
        return f"{what}: {gui_advice(message)}", _details(error)
    return f"{what} because {why}.", _details(error)


def _details(error: _TaskErrorLike) -> str:
    return f"{error.type_name}: {error.message}\n\n{error.details}".strip()


class MessageBar(QFrame):
    """One inline message. ``closed`` is emitted when the user dismisses it."""

    closed = Signal()
    action_triggered = Signal()

    def __init__(self, message: Message, action_text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("MessageBar")
        self.setProperty("level", message.level)
        self.message = message
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(10, 6, 6, 6)
        outer.setSpacing(4)
        row = QHBoxLayout()
        self.icon = QLabel()
        self.icon.setPixmap(self.style().standardIcon(_ICONS[message.level]).pixmap(18, 18))
        self.icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.icon)
        text = f"<b>{_escape(message.title)}</b> " if message.title else ""
        self.label = QLabel(text + _escape(message.text))
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        row.addWidget(self.label, 1)
        self.action_button: QPushButton | None = None
        if action_text:
            self.action_button = QPushButton(action_text)
            self.action_button.clicked.connect(self.action_triggered)
            row.addWidget(self.action_button, 0, Qt.AlignmentFlag.AlignTop)
        self.details_button: QToolButton | None = None
        self.details: QPlainTextEdit | None = None
        if message.details:
            self.details_button = QToolButton()
            self.details_button.setText("Details")
            self.details_button.setCheckable(True)
            self.details_button.setToolTip("Show the technical details (traceback or full list)")
            row.addWidget(self.details_button, 0, Qt.AlignmentFlag.AlignTop)
            copy = QToolButton()
            copy.setText("Copy")
            copy.setToolTip("Copy the message and its details to the clipboard, e.g. for a bug report")
            copy.clicked.connect(self.copy_to_clipboard)
            row.addWidget(copy, 0, Qt.AlignmentFlag.AlignTop)
        close = QToolButton()
        close.setText("\u2715")
        close.setToolTip("Dismiss this message")
        close.setAutoRaise(True)
        close.clicked.connect(self._close)
        row.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        outer.addLayout(row)
        self.traceback: QPlainTextEdit | None = None
        self.traceback_button: QToolButton | None = None
        if message.details:
            # First click: what happened, in a line or a list. A Python traceback waits behind a second one.
            summary, found, trace = message.details.partition(_TRACEBACK)
            self.details = QPlainTextEdit(summary.strip() if found and summary.strip() else message.details)
            self.details.setReadOnly(True)
            self.details.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
            self.details.setMaximumHeight(220 if not found else 90)
            self.details.setVisible(False)
            outer.addWidget(self.details)
            assert self.details_button is not None
            self.details_button.toggled.connect(self.details.setVisible)
            if found and summary.strip():
                self.traceback_button = QToolButton()
                self.traceback_button.setText("Technical details (traceback)")
                self.traceback_button.setCheckable(True)
                self.traceback_button.setVisible(False)
                self.traceback = QPlainTextEdit(found + trace)
                self.traceback.setReadOnly(True)
                self.traceback.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
                self.traceback.setMaximumHeight(220)
                self.traceback.setVisible(False)
                outer.addWidget(self.traceback_button, 0, Qt.AlignmentFlag.AlignLeft)
                outer.addWidget(self.traceback)
                self.traceback_button.toggled.connect(self.traceback.setVisible)
                self.details_button.toggled.connect(self._details_toggled)

    @Slot(bool)
    def _details_toggled(self, on: bool) -> None:
        assert self.traceback_button is not None and self.traceback is not None
        self.traceback_button.setVisible(on)
        self.traceback.setVisible(on and self.traceback_button.isChecked())

    @Slot()
    def copy_to_clipboard(self) -> None:
        QGuiApplication.clipboard().setText(f"{self.message.text}\n\n{self.message.details}".strip())

    @Slot()
    def _close(self) -> None:
        self.hide()
        self.closed.emit()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")


class MessageArea(QWidget):
    """The message bars of one page, keyed so that a repeated message replaces the earlier one.

    Signals: ``shown(key, Message)`` and ``cleared(key)``, so the window can bring a message to the page
    the user is on when it arrives on another one."""

    shown = Signal(str, object)
    cleared = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(4)
        self._bars: dict[str, MessageBar] = {}
        self.setVisible(False)

    def show_message(
        self,
        key: str,
        level: Level,
        text: str,
        details: str = "",
        *,
        title: str = "",
        action: tuple[str, Callable[[], None]] | None = None,
    ) -> MessageBar:
        """Show (or replace) the message ``key``; returns its bar."""
        self.clear(key)
        bar = MessageBar(Message(level, text, details, title), action[0] if action else "", self)
        if action is not None:
            bar.action_triggered.connect(action[1])
        bar.closed.connect(lambda k=key: self.clear(k))
        self._bars[key] = bar
        self._layout.addWidget(bar)
        self.setVisible(True)
        self.shown.emit(key, bar.message)
        return bar

    def error(self, key: str, text: str, details: str = "", **kw: object) -> MessageBar:
        return self.show_message(key, "error", text, details, **kw)  # type: ignore[arg-type]

    def warning(self, key: str, text: str, details: str = "", **kw: object) -> MessageBar:
        return self.show_message(key, "warning", text, details, **kw)  # type: ignore[arg-type]

    def info(self, key: str, text: str, details: str = "", **kw: object) -> MessageBar:
        return self.show_message(key, "info", text, details, **kw)  # type: ignore[arg-type]

    def clear(self, key: str | None = None) -> None:
        """Remove the message ``key`` (all messages when None)."""
        keys = list(self._bars) if key is None else [key]
        for k in keys:
            bar = self._bars.pop(k, None)
            if bar is not None:
                bar.hide()
                self._layout.removeWidget(bar)
                bar.deleteLater()
                self.cleared.emit(k)
        self.setVisible(bool(self._bars))

    def has(self, key: str) -> bool:
        return key in self._bars

    def bar(self, key: str) -> MessageBar | None:
        return self._bars.get(key)

    def keys(self) -> list[str]:
        return list(self._bars)

    def texts(self) -> list[str]:
        return [b.message.text for b in self._bars.values()]


class ErrorReporter(QObject):
    """Receives uncaught exceptions from any thread and re-emits them on the UI thread.

    ``error`` carries ``(summary, details)``. Emitting from another thread is safe: the connection to a
    receiver living in the UI thread is queued by Qt.
    """

    error = Signal(str, str)

    def report(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, where: str = "") -> None:
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        log.error("Uncaught exception%s:\n%s", f" in {where}" if where else "", details)
        summary = f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__
        if where:
            summary = f"{summary} (in {where})"
        self.error.emit(summary, details)


def install_excepthooks(reporter: ErrorReporter) -> Callable[[], None]:
    """Route uncaught exceptions (UI thread and Python threads) to ``reporter``; returns an uninstaller.

    KeyboardInterrupt still goes to the previous hook so Ctrl-C in the terminal behaves as usual.
    """
    previous_sys = sys.excepthook
    previous_thread = threading.excepthook

    def sys_hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            previous_sys(exc_type, exc, tb)
            return
        reporter.report(exc_type, exc, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or issubclass(args.exc_type, SystemExit):
            return
        name = args.thread.name if args.thread is not None else "a background thread"
        reporter.report(args.exc_type, args.exc_value, args.exc_traceback, where=name)

    sys.excepthook = sys_hook
    threading.excepthook = thread_hook

    def uninstall() -> None:
        sys.excepthook = previous_sys
        threading.excepthook = previous_thread

    return uninstall
