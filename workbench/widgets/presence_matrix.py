"""The subjects x modalities presence matrix: which subject has which modality, at a glance.

Cells are coloured present / missing / unreadable (present on disk but failing the cohort report);
the column headers carry the per-modality counts. Clicking (or pressing Enter on) a cell emits
``cell_activated(subject, modality)`` so the page can show that volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

__all__ = ["PresenceModel", "PresenceMatrix", "PRESENT", "MISSING", "UNREADABLE"]

MISSING, PRESENT, UNREADABLE = 0, 1, 2
_COLORS = {PRESENT: "#2a9d8f", MISSING: "#e9ecef", UNREADABLE: "#e63946"}
_DARK = {PRESENT: "#2a9d8f", MISSING: "#2b3139", UNREADABLE: "#c0392b"}
_TEXT = {PRESENT: "\u25cf", MISSING: "", UNREADABLE: "!"}
_WORD = {PRESENT: "present", MISSING: "missing", UNREADABLE: "unreadable"}

Index = QModelIndex | QPersistentModelIndex


class PresenceModel(QAbstractTableModel):
    """Table model over a (subjects, modalities) state matrix (0 missing, 1 present, 2 unreadable)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.subjects: list[str] = []
        self.modalities: list[str] = []
        self.states = np.zeros((0, 0), dtype=np.int8)
        self.tooltips: dict[tuple[int, int], str] = {}
        self.dark = False

    def set_matrix(self, subjects: Sequence[str], modalities: Sequence[str], states: np.ndarray,
                   tooltips: Mapping[tuple[str, str], str] | None = None) -> None:
        self.beginResetModel()
        self.subjects, self.modalities = list(subjects), list(modalities)
        self.states = np.asarray(states, dtype=np.int8).reshape(len(self.subjects), len(self.modalities))
        row = {s: i for i, s in enumerate(self.subjects)}
        col = {m: j for j, m in enumerate(self.modalities)}
        self.tooltips = {(row[s], col[m]): t for (s, m), t in (tooltips or {}).items() if s in row and m in col}
        self.endResetModel()

    def counts(self) -> dict[str, int]:
        return {m: int((self.states[:, j] == PRESENT).sum()) for j, m in enumerate(self.modalities)}

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.subjects)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.modalities)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        state = int(self.states[index.row(), index.column()])
        if role == Qt.ItemDataRole.DisplayRole:
            return _TEXT[state]
        if role == Qt.ItemDataRole.BackgroundRole:
            return QColor((_DARK if self.dark else _COLORS)[state])
        if role == Qt.ItemDataRole.ForegroundRole:
            return QColor("#ffffff") if state != MISSING else QColor("#9aa3ad")
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            subject, modality = self.subjects[index.row()], self.modalities[index.column()]
            extra = self.tooltips.get((index.row(), index.column()), "")
            hint = "Click to view this volume." if state != MISSING else "No file for this modality."
            return f"<b>{subject}</b> · {modality}: {_WORD[state]}<br>{extra + '<br>' if extra else ''}{hint}"
        if role == Qt.ItemDataRole.UserRole:
            return state
        return None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(self.modalities):
            modality = self.modalities[section]
            n = int((self.states[:, section] == PRESENT).sum())
            if role == Qt.ItemDataRole.DisplayRole:
                return f"{modality}\n{n}/{len(self.subjects)}"
            if role == Qt.ItemDataRole.ToolTipRole:
                return f"{modality}: present for {n} of {len(self.subjects)} subjects"
        if orientation == Qt.Orientation.Vertical and 0 <= section < len(self.subjects):
            if role == Qt.ItemDataRole.DisplayRole:
                return self.subjects[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                row = self.states[section]
                return f"{self.subjects[section]}: {int((row == PRESENT).sum())} of {len(self.modalities)} modalities"
        return None


class PresenceMatrix(QTableView):
    """A compact view of :class:`PresenceModel`; ``cell_activated(subject, modality)`` on click."""

    cell_activated = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.matrix_model = PresenceModel(self)
        self.setModel(self.matrix_model)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.horizontalHeader().setMinimumSectionSize(56)
        self.verticalHeader().setDefaultSectionSize(20)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.setShowGrid(True)
        self.setToolTip("Subjects (rows) by modalities (columns). Click a cell to view that volume.")
        self.clicked.connect(self._activated)
        self.activated.connect(self._activated)

    def set_matrix(self, subjects: Sequence[str], modalities: Sequence[str], states: np.ndarray,
                   tooltips: Mapping[tuple[str, str], str] | None = None) -> None:
        self.matrix_model.dark = self.palette().base().color().lightness() < 128
        self.matrix_model.set_matrix(subjects, modalities, states, tooltips)

    def counts(self) -> dict[str, int]:
        return self.matrix_model.counts()

    def state(self, subject: str, modality: str) -> int:
        m = self.matrix_model
        return int(m.states[m.subjects.index(subject), m.modalities.index(modality)])

    def index_of(self, subject: str, modality: str) -> QModelIndex:
        m = self.matrix_model
        return m.index(m.subjects.index(subject), m.modalities.index(modality))

    @Slot(QModelIndex)
    def _activated(self, index: QModelIndex) -> None:
        if index.isValid():
            m = self.matrix_model
            self.cell_activated.emit(m.subjects[index.row()], m.modalities[index.column()])
