"""Small building blocks shared by the pages: headers, cards and the background-task progress row."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from core.training import format_seconds
from workbench.widgets.elided_label import ElidedLabel

__all__ = ["page_header", "Card", "ProgressRow", "badge"]


def page_header(title: str, hint: str, compact: bool = False) -> QWidget:
    """The page's title over its hint; ``compact``: the hint on the title's line, elided (in full in its tooltip), for
    a page whose content needs the height (Synthesize's viewer)."""
    widget = QWidget()
    layout: QHBoxLayout | QVBoxLayout = QHBoxLayout(widget) if compact else QVBoxLayout(widget)
    layout.setContentsMargins(0, 0, 0, 4)
    layout.setSpacing(12 if compact else 2)
    heading = QLabel(title)
    heading.setObjectName("PageTitle")
    layout.addWidget(heading)
    text = ElidedLabel(hint, Qt.TextElideMode.ElideRight) if compact else QLabel(hint)
    text.setObjectName("PageHint")
    if compact:
        layout.addWidget(text, 1, Qt.AlignmentFlag.AlignVCenter)
    else:
        text.setWordWrap(True)
        layout.addWidget(text)
    return widget


class Card(QFrame):
    """A titled panel; add widgets to ``body``."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Card")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(10, 8, 10, 10)
        outer.setSpacing(6)
        self.title = QLabel(title)
        self.title.setObjectName("CardTitle")
        self.title.setVisible(bool(title))
        outer.addWidget(self.title)
        self.body = QVBoxLayout()
        self.body.setSpacing(6)
        outer.addLayout(self.body, 1)


def badge(text: str, level: str = "") -> QLabel:
    label = QLabel(text)
    label.setObjectName("Badge")
    label.setProperty("level", level)
    return label


class ProgressRow(QWidget):
    """Progress of a background task: what it is doing, a bar (busy until the total is known), an
    estimate of the time left and a Cancel button. Hidden while idle.

    The bar shows only its count, which always fits inside it; what the task is doing (and the step it is
    on) is one elided line beside it, in full in its tooltip, so a long step never widens the window or
    spills over the bar. ``stacked`` puts that line above the bar, for a narrow column (an export card)."""

    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None, stacked: bool = False) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        layout = QHBoxLayout()
        self.status = ElidedLabel("", Qt.TextElideMode.ElideRight)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.bar.setFormat("%v / %m")
        self.bar.setMinimumWidth(self.bar.fontMetrics().horizontalAdvance("00000 / 00000") + 16)
        self.eta = QLabel()
        self.eta.setObjectName("PageHint")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop this task; nothing half-written is kept")
        self.cancel_button.clicked.connect(self.cancel_requested)
        if stacked:
            outer.addWidget(self.status)
        else:
            layout.addWidget(self.status, 2)
        layout.addWidget(self.bar, 1)
        layout.addWidget(self.eta)
        layout.addWidget(self.cancel_button)
        outer.addLayout(layout)
        self._started = 0.0
        self._text = ""
        self.setVisible(False)

    def start(self, text: str) -> None:
        self._started = time.monotonic()
        self._text = text
        self.status.setText(text)
        self.bar.setRange(0, 0)
        self.eta.setText("")
        self.cancel_button.setEnabled(True)
        self.setVisible(True)

    @Slot(str)
    def set_status(self, text: str) -> None:
        self._text = text
        self.status.setText(text)

    @Slot(int, int, str)
    def set_progress(self, done: int, total: int, message: str = "") -> None:
        if total <= 0:
            self.bar.setRange(0, 0)
            return
        self.bar.setRange(0, total)
        self.bar.setValue(done)
        self.status.setText(f"{self._text} · {message}" if message and self._text else message or self._text)
        elapsed = time.monotonic() - self._started
        if 0 < done < total:
            self.eta.setText(f"about {format_seconds(elapsed / done * (total - done))} left")
        else:
            self.eta.setText("")

    def finish(self) -> None:
        self.setVisible(False)
