"""The GUI way to say which file is which modality: a table of file-name patterns and the modality each names.

It writes ``data.modality_patterns`` (see :mod:`core.data.cohort`): a pattern such as ``*_MPRAGE.nii.gz``
is matched case-insensitively against each file name (or, with a ``/``, the path inside the cohort folder)
before the built-in rules. The files no rule recognised are offered as ready-made rows, so a person types
only the modality.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ModalityPatternDialog", "suggested_patterns"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
_COLUMNS = ("File-name pattern", "Modality", "Observation mask")


def suggested_patterns(file_names: Sequence[str], limit: int = 12) -> list[str]:
    """One pattern per distinct ending of ``file_names`` (``sub-01_MPRAGE.nii.gz`` -> ``*_MPRAGE.nii.gz``),
    most common first: the files of one modality usually share the part after the last ``_`` or ``-``."""
    counts: dict[str, int] = {}
    for name in file_names:
        lower = name.lower()
        suffix = next((s for s in _IMAGE_SUFFIXES if lower.endswith(s)), "")
        stem = name[: len(name) - len(suffix)] if suffix else name
        parts = re.split(r"([_-])", stem)
        pattern = f"*{parts[-2]}{parts[-1]}{name[len(stem):]}" if len(parts) >= 3 and parts[-1] else name
        counts[pattern] = counts.get(pattern, 0) + 1
    return [p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:limit]


class ModalityPatternDialog(QDialog):
    """Rows of (pattern, modality, observation mask); :meth:`patterns` is what ``modality_patterns`` takes.

    Rows without a pattern or a modality are left out (a suggested ending nobody typed a modality for)."""

    def __init__(self, patterns: Mapping[str, str] | None = None, unmatched: Sequence[str] = (),
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Map file names to modalities")
        intro = QLabel(
            "Say which files hold which modality when their names are not recognised. A pattern matches file "
            "names, ignoring case: <b>*</b> stands for any text, so <b>*_MPRAGE.nii.gz</b> matches "
            "sub-01_MPRAGE.nii.gz. Tick <i>Observation mask</i> for a file that marks where another image was "
            "recorded (an ultrasound sector). Rows without a modality are left out.")
        intro.setWordWrap(True)
        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(_COLUMNS))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setColumnWidth(1, 140)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        add = QPushButton("Add row")
        add.clicked.connect(lambda: self.add_row())
        remove = QPushButton("Remove row")
        remove.setToolTip("Remove the selected rows")
        remove.clicked.connect(self.remove_selected)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.open_button = buttons.addButton("Open with these patterns", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(remove)
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.table, 1)
        layout.addLayout(row)
        self.hint = QLabel("")
        self.hint.setObjectName("PageHint")
        self.hint.setWordWrap(True)
        layout.addWidget(self.hint)
        layout.addWidget(buttons)
        for pattern, target in (patterns or {}).items():
            modality, _, role = target.partition(":")
            self.add_row(pattern, modality, role.lower() in ("mask", "fov", "observation_mask"))
        known = {p.lower() for p in (patterns or {})}
        suggestions = [p for p in suggested_patterns(list(unmatched)) if p.lower() not in known]
        for pattern in suggestions:
            self.add_row(pattern)
        if unmatched:
            shown = ", ".join(list(unmatched)[:4]) + (" …" if len(unmatched) > 4 else "")
            self.hint.setText(f"{len(unmatched)} file(s) matched no modality, e.g. {shown}. "
                              + ("Their endings are listed above: type the modality of each." if suggestions else ""))
        if not self.table.rowCount():
            self.add_row()
        self.resize(640, 420)

    def add_row(self, pattern: str = "", modality: str = "", mask: bool = False) -> int:
        row = self.table.rowCount()
        self.table.insertRow(row)
        self.table.setItem(row, 0, QTableWidgetItem(pattern))
        self.table.setItem(row, 1, QTableWidgetItem(modality))
        box = QCheckBox()
        box.setChecked(mask)
        box.setToolTip("These files are observation masks of the modality (where it was recorded), not images")
        holder = QWidget()
        holder_layout = QHBoxLayout(holder)
        holder_layout.setContentsMargins(0, 0, 0, 0)
        holder_layout.addWidget(box, 0, Qt.AlignmentFlag.AlignCenter)
        self.table.setCellWidget(row, 2, holder)
        return row

    def mask_box(self, row: int) -> QCheckBox:
        holder = self.table.cellWidget(row, 2)
        box = holder.findChild(QCheckBox)
        assert box is not None
        return box

    def set_row(self, row: int, pattern: str, modality: str, mask: bool = False) -> None:
        self.table.item(row, 0).setText(pattern)
        self.table.item(row, 1).setText(modality)
        self.mask_box(row).setChecked(mask)

    @Slot()
    def remove_selected(self) -> None:
        for row in sorted({index.row() for index in self.table.selectedIndexes()}, reverse=True):
            self.table.removeRow(row)

    def patterns(self) -> dict[str, str]:
        """``{pattern: modality}`` (``modality:mask`` for an observation mask) in row order: the first row that
        matches a file wins."""
        out: dict[str, str] = {}
        for row in range(self.table.rowCount()):
            pattern = self.table.item(row, 0).text().strip()
            modality = self.table.item(row, 1).text().strip()
            if not pattern or not modality:
                continue
            out[pattern] = f"{modality}:mask" if self.mask_box(row).isChecked() else modality
        return out
