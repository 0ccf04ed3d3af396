"""Middle slices of volumes with pyqtgraph in a labelled grid (:class:`SliceGrid`: real vs generated, before vs
after preprocessing). One volume to browse is shown in :class:`workbench.widgets.ortho_viewer.OrthoViewer`.

Volumes are arrays ``(X, Y, Z)`` in RAS order (``(C, X, Y, Z)`` and 2D ``(C, H, W)`` / ``(H, W)`` are
accepted). Axial slices show X (R) to the right and Y (A) up; coronal X, Z; sagittal Y, Z. The display
window is the 1st..99th percentile of the non-zero voxels unless ``levels`` are given, so that a real
and a generated volume can share one window.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt, QTimer, Slot
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from core.display import display_window
from workbench.resources import plot_colors

__all__ = ["SliceGrid", "middle_slices", "display_levels", "PLANES"]

PLANES = ("axial", "coronal", "sagittal")


def _as_volume(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array, dtype=np.float32)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 4:  # several channels: show the first
        a = a[0]
    if a.ndim == 3 and a.shape[0] == 1:  # (1, H, W) image
        a = a[0]
    return a


def middle_slices(array: np.ndarray, planes: Sequence[str] = PLANES) -> dict[str, np.ndarray]:
    """The middle slice of each plane, as 2D arrays indexed [horizontal, vertical]."""
    a = _as_volume(array)
    if a.ndim == 2:
        return {"image": a}
    x, y, z = (s // 2 for s in a.shape)
    cuts = {"axial": a[:, :, z], "coronal": a[:, y, :], "sagittal": a[x, :, :]}
    return {p: cuts[p] for p in planes}


def display_levels(*arrays: np.ndarray | None) -> tuple[float, float]:
    """A shared display window for ``arrays`` (see :func:`core.display.display_window`), sampled for speed."""
    return display_window(arrays, max_values=20_000) or (0.0, 1.0)


class _Cell:
    """One volume of a :class:`SliceGrid`: its view boxes (one per plane), images and caption."""

    def __init__(self, layout: pg.GraphicsLayout, planes: Sequence[str]) -> None:
        self.layout = layout
        self.array: np.ndarray | None = None
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.caption = layout.addLabel("", row=1, col=0, colspan=max(1, len(planes)), size="8pt")
        self.caption.setMaximumHeight(16)
        self.boxes: dict[str, pg.ViewBox] = {}
        self.images: dict[str, pg.ImageItem] = {}
        for col, plane in enumerate(planes):
            # No context menu: pyqtgraph builds it eagerly unless told not to, and it is most of a view box's cost.
            box = layout.addViewBox(row=0, col=col, lockAspect=True, enableMouse=True, enableMenu=False)
            box.enableAutoRange(enable=True)  # re-fit when the cell is resized, not only when the image changes
            image = pg.ImageItem(axisOrder="col-major")
            box.addItem(image)
            self.boxes[plane], self.images[plane] = box, image
        layout.layout.setRowStretchFactor(0, 1)
        layout.layout.setRowStretchFactor(1, 0)

    def set_volume(self, array: np.ndarray | None, levels: tuple[float, float] | None, note: str, color: str) -> None:
        self.caption.setText(note, color=color)
        if array is None:
            self.array = None
            for image in self.images.values():
                image.clear()
            return
        self.array = _as_volume(array)
        slices = middle_slices(self.array, tuple(self.images))
        lv = levels or display_levels(self.array)
        for plane, cut in zip(self.images, slices.values(), strict=False):
            self.images[plane].setImage(np.nan_to_num(cut), levels=lv, autoLevels=False)


class SliceGrid(QWidget):
    """Rows of labelled volumes under column headers (modality x real/generated, before/after), drawn in
    one pyqtgraph canvas so that a preview with many volumes stays cheap to build and to update."""

    def __init__(self, columns: Sequence[str], planes: Sequence[str] = ("axial", "coronal"),
                 transposed: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.columns = list(columns)
        self.planes = tuple(planes)
        #: Draw the rows across and the columns down (a wide, short panel: modalities side by side).
        self.transposed = transposed
        self._last: tuple[Sequence[tuple[str, Sequence[np.ndarray | None], str]], bool,
                          Sequence[Sequence[str]] | None] | None = None
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumHeight(120)
        self.message = QLabel("")
        self.message.setObjectName("PageHint")
        self.message.setWordWrap(True)
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.message, 1)
        self._views: dict[tuple[str, str], _Cell] = {}
        #: Cells still to build ((row, column), grid position): prepare_rows builds them a few per event-loop
        #: turn, since a pyqtgraph view box costs milliseconds and a grid of them would freeze the window.
        self._pending: list[tuple[tuple[str, str], tuple[int, int]]] = []
        self._build_timer = QTimer(self)
        self._build_timer.setInterval(0)
        self._build_timer.timeout.connect(self._build_some)
        self._rows: list[str] = []
        self._row_labels: list[pg.LabelItem] = []
        self.apply_plot_theme()
        self.show_message("")

    @property
    def views(self) -> dict[tuple[str, str], _Cell]:
        """Every cell, by (row, column): the ones still pending are built now."""
        self._finish_build()
        return self._views

    def _build(self, row_names: list[str], gradually: bool = False) -> None:
        self._build_timer.stop()
        self._pending = []
        self.graphics.clear()
        self._views.clear()
        fg = plot_colors()["foreground"]
        grid = self.graphics.ci
        grid.setContentsMargins(2, 2, 2, 2)
        grid.setSpacing(2)
        across, down = (row_names, self.columns) if self.transposed else (self.columns, row_names)
        for c, name in enumerate(across):
            header = self.graphics.addLabel(f"<b>{name}</b>", row=0, col=c + 1, color=fg)
            header.setMaximumHeight(18)
        self._row_labels = []
        for r, name in enumerate(down):
            label = self.graphics.addLabel(f"<b>{name}</b>", row=r + 1, col=0, color=fg)
            label.setMaximumWidth(100)
            self._row_labels.append(label)
            grid.layout.setRowStretchFactor(r + 1, 1)
        self._pending = [((row, column), (c + 1, r + 1) if self.transposed else (r + 1, c + 1))
                         for r, row in enumerate(row_names) for c, column in enumerate(self.columns)]
        if gradually:
            self._build_timer.start()
        else:
            self._finish_build()
        grid.layout.setRowStretchFactor(0, 0)
        grid.layout.setColumnStretchFactor(0, 0)
        for c in range(len(across)):
            grid.layout.setColumnStretchFactor(c + 1, 1)
        self._rows = list(row_names)

    def _build_cell(self) -> None:
        key, (row, col) = self._pending.pop(0)
        self._views[key] = _Cell(self.graphics.addLayout(row=row, col=col), self.planes)

    @Slot()
    def _build_some(self) -> None:
        """Build pending cells for a few milliseconds, then let the event loop run."""
        started = time.perf_counter()
        while self._pending and time.perf_counter() - started < 0.004:
            self._build_cell()
        if not self._pending:
            self._build_timer.stop()

    def _finish_build(self) -> None:
        while self._pending:
            self._build_cell()
        self._build_timer.stop()

    def prepare_rows(self, row_names: Sequence[str], message: str = "") -> None:
        """Build the cells for ``row_names`` (e.g. when a run starts) so the first update is cheap: in the
        background of the event loop, a few at a time, so that the window stays responsive meanwhile."""
        if list(row_names) != self._rows:
            self._build(list(row_names), gradually=True)
        for cell in self._views.values():
            cell.set_volume(None, None, "", plot_colors()["foreground"])
        self._last = None
        self.show_message(message)

    def set_rows(self, rows: Sequence[tuple[str, Sequence[np.ndarray | None], str]], shared_levels: bool = True,
                 notes: Sequence[Sequence[str]] | None = None) -> None:
        """``rows``: (label, one array per column (None: nothing to show), tooltip). Levels are shared per row."""
        self._last = (list(rows), shared_levels, notes)
        names = [label for label, _, _ in rows]
        if names != self._rows:
            self._build(names)
        fg = plot_colors()["foreground"]
        tips = []
        for r, (label, arrays, tip) in enumerate(rows):
            levels = display_levels(*arrays) if shared_levels else None
            for c, array in enumerate(arrays):
                note = notes[r][c] if notes is not None else ""
                self.views[(label, self.columns[c])].set_volume(array, levels, note or ("" if array is not None else "not available"), fg)
            if tip:
                tips.append(f"{label}: {tip}")
        self.graphics.setToolTip("\n".join(tips))
        self.show_message("" if rows else "Nothing to show.")

    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))
        self.graphics.setVisible(not text)

    def view(self, row: str, column: str) -> _Cell:
        return self.views[(row, column)]

    def apply_plot_theme(self) -> None:
        """New background and label colours; the images shown stay (they are drawn again, not dropped)."""
        self.graphics.setBackground(plot_colors()["background"])
        if self._rows:
            self._build(list(self._rows))
            if self._last is not None:
                rows, shared_levels, notes = self._last
                self.set_rows(rows, shared_levels, notes)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.graphics.setBackground(plot_colors()["background"])
        super().changeEvent(event)
