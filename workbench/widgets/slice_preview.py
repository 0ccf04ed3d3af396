"""Middle slices of volumes with pyqtgraph: one volume (:class:`SliceView`) or a labelled grid of them
(:class:`SliceGrid`: real vs generated, before vs after preprocessing).

Volumes are arrays ``(X, Y, Z)`` in RAS order (``(C, X, Y, Z)`` and 2D ``(C, H, W)`` / ``(H, W)`` are
accepted). Axial slices show X (R) to the right and Y (A) up; coronal X, Z; sagittal Y, Z. The display
window is the 1st..99th percentile of the non-zero voxels unless ``levels`` are given, so that a real
and a generated volume can share one window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from workbench.resources import plot_colors

__all__ = ["SliceView", "SliceGrid", "middle_slices", "display_levels", "PLANES"]

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
    """A shared display window: 1st..99th percentile of the non-zero finite voxels of all ``arrays``."""
    values = [np.asarray(a, dtype=np.float32).ravel() for a in arrays if a is not None]
    if not values:
        return 0.0, 1.0
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    nz = v[v != 0]
    v = nz if nz.size > 16 else v
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = (float(q) for q in np.percentile(v, [1, 99]))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


class SliceView(QWidget):
    """A title and the middle slices of one volume (one view per plane)."""

    def __init__(self, title: str = "", planes: Sequence[str] = PLANES, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.planes = tuple(planes)
        self.title = QLabel(title)
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title.setWordWrap(True)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(90, 90)
        self.graphics.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.images: dict[str, pg.ImageItem] = {}
        self.boxes: dict[str, pg.ViewBox] = {}
        self.placeholder = QLabel("")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setObjectName("PageHint")
        self.placeholder.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.placeholder, 1)
        self.array: np.ndarray | None = None
        self._layout_planes(self.planes)
        self.clear()
        self._apply_colors()

    def _layout_planes(self, planes: Sequence[str]) -> None:
        self.graphics.clear()
        self.images.clear()
        self.boxes.clear()
        for col, plane in enumerate(planes):
            if len(planes) > 1:
                self.graphics.addLabel(plane, row=1, col=col, size="8pt", color=plot_colors()["foreground"])
            box = self.graphics.addViewBox(row=0, col=col, lockAspect=True, enableMouse=True)
            box.setMenuEnabled(False)
            image = pg.ImageItem(axisOrder="col-major")
            box.addItem(image)
            self.images[plane] = image
            self.boxes[plane] = box
        self._shown_planes = tuple(planes)

    def set_volume(self, array: np.ndarray | None, title: str | None = None,
                   levels: tuple[float, float] | None = None, message: str = "") -> None:
        """Show ``array``'s middle slices (or ``message`` when ``array`` is None)."""
        if title is not None:
            self.title.setText(title)
        if array is None:
            self.clear(message)
            return
        self.array = _as_volume(array)
        slices = middle_slices(self.array, self.planes)
        planes = tuple(slices)
        if planes != self._shown_planes:
            self._layout_planes(planes)
        lv = levels or display_levels(self.array)
        for plane, cut in slices.items():
            self.images[plane].setImage(np.nan_to_num(cut), levels=lv, autoLevels=False)
            self.boxes[plane].autoRange(padding=0.02)
        self.graphics.setVisible(True)
        self.placeholder.setVisible(False)
        self.setToolTip(f"shape {tuple(self.array.shape)}, window {lv[0]:.3g} .. {lv[1]:.3g}. Drag to pan, wheel to zoom.")

    def clear(self, message: str = "") -> None:
        self.array = None
        for image in self.images.values():
            image.clear()
        self.graphics.setVisible(not message)
        self.placeholder.setText(message)
        self.placeholder.setVisible(bool(message))

    def apply_plot_theme(self) -> None:
        self.graphics.setBackground(plot_colors()["background"])

    _apply_colors = apply_plot_theme

    def changeEvent(self, event: QEvent) -> None:
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.apply_plot_theme()
        super().changeEvent(event)


class SliceGrid(QWidget):
    """Rows of labelled volumes with column headers, e.g. modality x (real, generated)."""

    def __init__(self, columns: Sequence[str], planes: Sequence[str] = ("axial", "coronal"),
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.columns = list(columns)
        self.planes = tuple(planes)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(4)
        self.views: dict[tuple[str, str], SliceView] = {}
        self._row_labels: list[QLabel] = []
        self.message = QLabel("")
        self.message.setObjectName("PageHint")
        self.message.setWordWrap(True)
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        for col, name in enumerate(self.columns):
            header = QLabel(f"<b>{name}</b>")
            header.setAlignment(Qt.AlignmentFlag.AlignCenter)
            self.grid.addWidget(header, 0, col + 1)
        self.grid.addWidget(self.message, 1, 0, 1, len(self.columns) + 1)

    def set_rows(self, rows: Sequence[tuple[str, Sequence[np.ndarray | None], str]], shared_levels: bool = True,
                 notes: Sequence[Sequence[str]] | None = None) -> None:
        """``rows``: (label, one array per column (None: nothing to show), tooltip). Levels are shared per row."""
        wanted = [label for label, _, _ in rows]
        for (row_label, col), view in list(self.views.items()):
            if row_label not in wanted:
                self.grid.removeWidget(view)
                view.deleteLater()
                del self.views[(row_label, col)]
        for label in self._row_labels:
            self.grid.removeWidget(label)
            label.deleteLater()
        self._row_labels = []
        self.message.setVisible(not rows)
        for r, (label, arrays, tip) in enumerate(rows):
            row_label = QLabel(f"<b>{label}</b>")
            row_label.setToolTip(tip)
            self.grid.addWidget(row_label, r + 2, 0)
            self._row_labels.append(row_label)
            levels = display_levels(*arrays) if shared_levels else None
            for c, array in enumerate(arrays):
                key = (label, self.columns[c])
                view = self.views.get(key)
                if view is None:
                    view = SliceView("", self.planes)
                    self.views[key] = view
                    self.grid.addWidget(view, r + 2, c + 1)
                note = notes[r][c] if notes is not None else ""
                view.set_volume(array, title=note, levels=levels, message=note or "not available")
            self.grid.setRowStretch(r + 2, 1)

    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def view(self, row: str, column: str) -> SliceView:
        return self.views[(row, column)]
