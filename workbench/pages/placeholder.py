"""A page that says what will come there (Explore and Synthesize arrive in part 2)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from workbench.pages._common import page_header

__all__ = ["PlaceholderPage"]


class PlaceholderPage(QWidget):
    def __init__(self, title: str, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(page_header(title, "Coming in the next part of the workbench."))
        body = QLabel(text)
        body.setWordWrap(True)
        body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        body.setObjectName("PageHint")
        layout.addWidget(body, 1)

    def shutdown(self) -> bool:
        return True
