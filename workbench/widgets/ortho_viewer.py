"""Linked orthogonal slice views of several volumes side by side (real, synthesized, difference, uncertainty).

Every column is one volume, every row one plane (axial, coronal, sagittal), as in ITK-SNAP or 3D Slicer's
Compare Volumes:

* **one crosshair** for all views: a left click in any view moves the cursor to that voxel, and every
  view shows the slices through it (the X/Y/Z boxes and the arrow keys move it too);
* **one window/level** for the intensity columns (real and synthesized, so they are comparable):
  right-drag on any image (horizontal: window width, vertical: level), the Window/Level boxes, or Auto
  (1st..99th percentile); the difference column uses a symmetric diverging map around 0 and the
  uncertainty column its own 0..99th-percentile window, each with a colour bar under the column labelled
  with the panel's units;
* **linked zoom and pan** per plane (mouse wheel, left-drag);
* **an overlay** of the second intensity column over the first (synthesized over real) in an extra column:
  a blend with a slider for the top volume's weight, or a checkerboard with a slider for the tile size;
* **the value under the crosshair** of every column, with its units (``Panel.units``, and the viewer's
  ``units_note`` saying which space is displayed), on one line (all of it in its tooltip);
* **which columns to show**: a check box per column. Two columns or fewer are laid out one row per volume with
  its three planes side by side (3D Slicer's compare view), so the planes get the width and at most two rows
  share the height; more columns are a grid, one column per volume and one row per plane. Every column's value
  stays in the readout, shown or not. The crosshair and window boxes fold away (``controls_expanded``).

A single volume (the Data page's viewer) shows its three planes side by side under its title.

Volumes are arrays ``(X, Y, Z)`` in RAS order (``(1, X, Y, Z)`` accepted); axial slices show X to the
right and Y (anterior) up, coronal X and Z, sagittal Y and Z. Images ``(H, W)`` or ``(1, H, W)`` are shown
in a single view per column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, QSizeF, Qt, Signal, Slot
from PySide6.QtGui import QFont, QFontMetrics, QKeyEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGraphicsRectItem,
    QGraphicsSimpleTextItem,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.display import COLORMAPS, display_window
from workbench.resources import plot_colors
from workbench.widgets.elided_label import ElidedLabel

__all__ = ["OrthoViewer", "Panel", "as_spatial", "KINDS"]

PLANES = ("axial", "coronal", "sagittal")
#: What a column shows, which decides its colour map and window ("overlay" is the viewer's own column).
KINDS = ("intensity", "difference", "uncertainty", "overlay")
#: How the overlay column combines the first two intensity columns (None: no overlay column).
COMPARE_MODES = {"Side by side": None, "Blend": "blend", "Checkerboard": "checkerboard"}
_CMAPS = {"difference": "diverging", "uncertainty": "inferno"}  # core.display.COLORMAPS, as in the report


def _colormap(name: str) -> pg.ColorMap:
    """A pyqtgraph colour map of the same colours the HTML report uses."""
    colours = COLORMAPS[name]
    return pg.ColorMap(np.linspace(0.0, 1.0, len(colours)), colours, name=name)


#: The widest a note under a grid column's title is drawn (the whole note is the title's tooltip): pyqtgraph sizes
#: a label to its text, so a long note would widen its column and squeeze the others.
GRID_NOTE_WIDTH_PX = 140


def _elided_note(note: str) -> str:
    font = QFont()
    font.setPointSizeF(8.0)
    return QFontMetrics(font).elidedText(note, Qt.TextElideMode.ElideRight, GRID_NOTE_WIDTH_PX)


class _ColumnTitle(pg.LabelItem):
    """A title that asks for its height only: pyqtgraph sizes a label to its text, so a long title or note would
    widen its column and squeeze the others (grid notes are elided to :data:`GRID_NOTE_WIDTH_PX`). Its text
    starts at the top of the row, so a one-line title lines up with a neighbour's two lines (title and note)
    instead of sitting half a line lower, centred."""

    def resizeEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.item.moveBy(0.0, -self.itemRect().top())

    def updateMin(self) -> None:  # noqa: N802 - pyqtgraph's name
        super().updateMin()
        self.setMinimumWidth(0.0)

    def sizeHint(self, which: Qt.SizeHint, constraint: QSizeF = QSizeF()) -> QSizeF:  # noqa: B008, N802 - Qt's signature
        hint = super().sizeHint(which, constraint)
        if which in (Qt.SizeHint.MinimumSize, Qt.SizeHint.PreferredSize):
            return QSizeF(0.0, hint.height())
        return hint


def as_spatial(array: np.ndarray | None) -> np.ndarray | None:
    """``(X, Y, Z)`` or ``(H, W)`` float32 from model-space arrays (leading channel axes of size 1 dropped)."""
    if array is None:
        return None
    a = np.asarray(array, dtype=np.float32)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 4:  # several channels: the first
        a = a[0]
    if a.ndim not in (2, 3):
        raise ValueError(f"Expected an image or a volume, got shape {np.shape(array)}.")
    return a


@dataclass
class Panel:
    """One column: a title, the array (None: nothing to show, e.g. no real volume), its kind, a note and the
    units of its values (the label of a difference or uncertainty column's colour bar)."""

    title: str
    array: np.ndarray | None
    kind: str = "intensity"
    note: str = ""
    units: str = ""


class _SliceBox(pg.ViewBox):
    """A view box where a left click moves the crosshair and a right-drag changes window/level."""

    def __init__(self, viewer: OrthoViewer, plane: str) -> None:
        super().__init__(lockAspect=True, enableMouse=True, invertY=False, enableMenu=False)  # no menu: it is costly to build
        self.viewer, self.plane = viewer, plane

    def mouseClickEvent(self, ev: object) -> None:
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            point = self.mapSceneToView(ev.scenePos())
            self.viewer.click(self.plane, point.x(), point.y())
        else:
            super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev: object, axis: int | None = None) -> None:
        if ev.button() == Qt.MouseButton.RightButton:
            ev.accept()
            delta = ev.screenPos() - ev.lastScreenPos()
            self.viewer.drag_window_level(delta.x(), delta.y())
        else:
            super().mouseDragEvent(ev, axis)


class _View:
    """One plane of one column: view box, image and crosshair lines."""

    def __init__(self, viewer: OrthoViewer, layout: pg.GraphicsLayout, row: int, col: int, plane: str,
                 label: bool = False) -> None:
        self.plane = plane
        self.box = _SliceBox(viewer, plane)
        layout.addItem(self.box, row=row, col=col)
        self.label: QGraphicsSimpleTextItem | None = None
        if label:  # the plane's name in the view's corner (as in ITK-SNAP), not in a row or column of its own:
            # light text on a dark translucent tag, readable over the image and over the background
            font = QFont()
            font.setPointSizeF(max(6.0, font.pointSizeF() - 1))
            backdrop = QGraphicsRectItem(self.box)
            self.label = QGraphicsSimpleTextItem(plane, backdrop)
            self.label.setFont(font)
            self.label.setBrush(pg.mkColor(235, 235, 235))
            self.label.setPos(3, 0)
            text = self.label.boundingRect()
            backdrop.setRect(0, 0, text.width() + 6, text.height())
            backdrop.setBrush(pg.mkColor(0, 0, 0, 150))
            backdrop.setPen(pg.mkPen(None))
            backdrop.setPos(1, 1)
            backdrop.setZValue(20)
        self.image = pg.ImageItem(axisOrder="col-major")
        self.box.addItem(self.image)
        pen = pg.mkPen((255, 196, 0, 170), width=1)
        self.vline = pg.InfiniteLine(angle=90, movable=False, pen=pen)
        self.hline = pg.InfiniteLine(angle=0, movable=False, pen=pen)
        for line in (self.vline, self.hline):
            line.setZValue(10)
            self.box.addItem(line, ignoreBounds=True)


class OrthoViewer(QWidget):
    """Columns of linked orthogonal views with a shared crosshair and window/level (module docstring).

    Signals: ``position_changed(x, y, z)``, ``levels_changed(low, high)``, ``shown_changed(titles)`` (the user
    ticked a column on or off).

    ``controls_expanded``: whether the crosshair and window/level boxes start unfolded.
    """

    position_changed = Signal(int, int, int)
    levels_changed = Signal(float, float)
    shown_changed = Signal(list)

    def __init__(self, parent: QWidget | None = None, controls_expanded: bool = True) -> None:
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.panels: list[Panel] = []
        self.arrays: list[np.ndarray | None] = []
        self.views: list[dict[str, _View]] = []  # per panel; empty for a column not shown
        self.shape: tuple[int, ...] = ()
        self.position: list[int] = [0, 0, 0]
        self.levels: tuple[float, float] = (0.0, 1.0)
        self._other_levels: dict[int, tuple[float, float]] = {}
        self._titles: list[pg.LabelItem | None] = []
        self.colour_bars: dict[int, pg.ColorBarItem] = {}
        self._given: list[Panel] = []  # the caller's panels, without the overlay column
        #: The titles of the columns to show (None: all of them).
        self.shown: set[str] | None = None
        self._built: tuple[object, ...] | None = None  # what the views were built for
        #: Which space the values are in, after the readout (e.g. that exports are in other units).
        self.units_note = ""

        # -- crosshair and window/level (a row that folds away)
        self.controls_row = QWidget()
        controls = QHBoxLayout(self.controls_row)
        controls.setContentsMargins(0, 0, 0, 0)
        self.coords: list[QSpinBox] = []
        for axis in "XYZ":
            controls.addWidget(QLabel(axis))
            box = QSpinBox()
            box.setRange(0, 0)
            box.setToolTip(f"Crosshair voxel index along {axis} (the slice shown in the planes across {axis})")
            box.valueChanged.connect(self._coords_edited)
            box.setMaximumWidth(64)
            self.coords.append(box)
            controls.addWidget(box)
        controls.addSpacing(12)
        controls.addWidget(QLabel("Window"))
        self.window_box = QDoubleSpinBox()
        self.level_box = QDoubleSpinBox()
        for box, tip in ((self.window_box, "Window width of the real and synthesized images (right-drag horizontally)"),
                         (self.level_box, "Window centre (level) of the real and synthesized images (right-drag vertically)")):
            box.setDecimals(3)
            box.setRange(-1e6, 1e6)
            box.setSingleStep(0.05)
            box.setKeyboardTracking(False)
            box.setToolTip(tip)
            box.valueChanged.connect(self._window_edited)
            box.setMaximumWidth(96)
        self.window_box.setMinimum(1e-6)
        controls.addWidget(self.window_box)
        controls.addWidget(QLabel("Level"))
        controls.addWidget(self.level_box)
        self.auto_button = QPushButton("Auto")
        self.auto_button.setToolTip("Window/level from the 1st to the 99th percentile of the real and synthesized volumes")
        self.auto_button.clicked.connect(self.auto_levels)
        controls.addWidget(self.auto_button)
        controls.addStretch(1)
        # -- one tool bar: which columns, the overlay (what does not fit goes behind its >> button instead of setting
        # the window's minimum width, as in the loss plot)
        self.bar = QToolBar()
        self.bar.setObjectName("PlotControls")
        self.bar.setMovable(False)
        self.bar.setFloatable(False)
        self.columns_row = QWidget()
        self.columns_layout = QHBoxLayout(self.columns_row)
        self.columns_layout.setContentsMargins(0, 0, 0, 0)
        self.columns_layout.setSpacing(6)
        self.columns_row.setToolTip("Which volumes to show. Two or fewer: one row each, its three planes side by side "
                                    "(the largest views); more: one column each. Every value stays in the readout; the "
                                    "overlay column shows while an overlay is chosen.")
        self.column_boxes: dict[str, QCheckBox] = {}
        self._columns_action = self.bar.addWidget(self.columns_row)
        self.bar.addSeparator()
        # The overlay of the second intensity column over the first.
        self.compare_row = QWidget()
        compare = QHBoxLayout(self.compare_row)
        compare.setContentsMargins(0, 0, 0, 0)
        compare.addWidget(QLabel("Overlay"))
        self.compare_box = QComboBox()
        self.compare_box.addItems(list(COMPARE_MODES))
        self.compare_box.setToolTip("Show the synthesized volume over the real one in an extra column: blended, or in a "
                                    "checkerboard of alternating tiles (edges that do not line up show at the tile borders)")
        self.compare_box.currentIndexChanged.connect(self._compare_changed)
        compare.addWidget(self.compare_box)
        self.compare_slider = QSlider(Qt.Orientation.Horizontal)
        self.compare_slider.setRange(0, 100)
        self.compare_slider.setValue(50)
        self.compare_slider.setMinimumWidth(60)
        self.compare_slider.setMaximumWidth(160)
        self.compare_slider.valueChanged.connect(self._compare_slider_moved)
        compare.addWidget(self.compare_slider, 1)
        self.compare_label = QLabel("")
        compare.addWidget(self.compare_label)
        self._compare_action = self.bar.addWidget(self.compare_row)
        self.controls_toggle = QToolButton()
        self.controls_toggle.setObjectName("AdvancedToggle")
        self.controls_toggle.setCheckable(True)
        self.controls_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.controls_toggle.setText("Window/level")
        self.controls_toggle.setToolTip("The window/level and the crosshair's voxel as numbers, and Auto (a right-drag in a "
                                        "view changes the window, a click moves the crosshair)")
        self.controls_toggle.toggled.connect(self.set_controls_visible)
        self._blend, self._tile = 50, 8
        self._compare_changed()
        self._show_bar(columns=False, compare=False)
        self.readout = ElidedLabel("", Qt.TextElideMode.ElideRight)
        self.readout.setObjectName("PageHint")
        bottom = QHBoxLayout()
        bottom.setContentsMargins(0, 0, 0, 0)
        bottom.addWidget(self.controls_toggle)
        bottom.addWidget(self.readout, 1)

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(240, 200)
        self.graphics.ci.layout.setSpacing(2)
        self.graphics.ci.layout.setContentsMargins(0, 0, 0, 0)  # the views get every pixel
        self.message = QLabel("")
        self.message.setObjectName("PageHint")
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.bar)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.message, 1)
        layout.addWidget(self.controls_row)
        layout.addLayout(bottom)
        self.set_controls_visible(controls_expanded)
        self.apply_plot_theme()
        self.show_message("Nothing to show yet.")

    def _show_bar(self, columns: bool | None = None, compare: bool | None = None) -> None:
        """Show or hide the tool bar's column boxes and overlay controls (the bar itself when it has neither)."""
        if columns is not None:
            self._columns_action.setVisible(columns)
        if compare is not None:
            self._compare_action.setVisible(compare)
        self.bar.setVisible(self._columns_action.isVisible() or self._compare_action.isVisible())

    @Slot(bool)
    def set_controls_visible(self, visible: bool) -> None:
        """Unfold (or fold away) the crosshair and window/level boxes."""
        self.controls_row.setVisible(visible)
        self.controls_toggle.blockSignals(True)
        self.controls_toggle.setChecked(visible)
        self.controls_toggle.blockSignals(False)
        self.controls_toggle.setArrowType(Qt.ArrowType.DownArrow if visible else Qt.ArrowType.RightArrow)

    # ------------------------------------------------------------------ content
    @property
    def is_2d(self) -> bool:
        return len(self.shape) == 2

    @property
    def planes(self) -> tuple[str, ...]:
        return ("image",) if self.is_2d else PLANES

    @property
    def compare_mode(self) -> str | None:
        return COMPARE_MODES[self.compare_box.currentText()]

    def _overlay_pair(self, panels: Sequence[Panel]) -> tuple[int, int] | None:
        """The first two intensity columns with a volume (real, synthesized): what the overlay combines."""
        shown = [i for i, p in enumerate(panels) if p.kind == "intensity" and p.array is not None]
        return (shown[0], shown[1]) if len(shown) >= 2 else None

    def set_panels(self, panels: Sequence[Panel], keep_position: bool = True, levels: tuple[float, float] | None = None,
                   shown: Sequence[str] | None = None) -> None:
        """Show ``panels`` side by side (arrays of one shape; None arrays show their note), and the overlay
        column when an overlay is chosen and there are two intensity volumes.

        ``shown``: the titles of the columns to show (the check boxes follow; the overlay column is shown while an
        overlay is chosen); None keeps the current choice (all columns at first)."""
        self._given = [p for p in panels if p.kind != "overlay"]
        pair = self._overlay_pair(self._given)
        self._show_bar(compare=pair is not None)
        panels = list(self._given)
        if pair is not None and self.compare_mode is not None:
            top, base = panels[pair[1]].title, panels[pair[0]].title
            panels.append(Panel("overlay", panels[pair[0]].array, "overlay", f"{top} over {base}", panels[pair[0]].units))
        if shown is not None:
            self.shown = set(shown)
        self._fill_column_boxes(self._given)
        arrays = [as_spatial(p.array) for p in panels]
        shapes = {a.shape for a in arrays if a is not None}
        if len(shapes) > 1:
            raise ValueError(f"All panels must have one shape; got {sorted(shapes)}.")
        if not shapes:
            self.show_message("Nothing to show.")
            return
        shape = shapes.pop()
        new_shape = shape != self.shape
        built = (shape, tuple((p.title, p.kind, p.units) for p in panels), tuple(self._shown_indices(panels)))
        rebuilt = built != self._built or not self.views
        if rebuilt:
            self.panels = list(panels)
            self.shape = shape
            self._build()
            self._built = built
        self.panels, self.arrays = list(panels), arrays
        if new_shape or not keep_position:
            self.position = [s // 2 for s in shape] + ([0] if len(shape) == 2 else [])
        for k, box in enumerate(self.coords):
            box.blockSignals(True)
            box.setRange(0, (shape[k] - 1) if k < len(shape) else 0)
            box.setValue(self.position[k])
            box.setEnabled(k < len(shape) and not (len(shape) == 2 and k == 2))
            box.blockSignals(False)
        self._other_levels = {}
        for i, (panel, array) in enumerate(zip(self.panels, arrays, strict=True)):
            if array is None or panel.kind in ("intensity", "overlay"):
                continue
            finite = np.abs(array[np.isfinite(array)])
            top = float(np.percentile(finite, 99)) if finite.size else 1.0
            top = top if top > 0 else max(float(finite.max()) if finite.size else 1.0, 1e-6)
            self._other_levels[i] = (-top, top) if panel.kind == "difference" else (0.0, top)
        for i, bar in self.colour_bars.items():
            bar.setVisible(i in self._other_levels)
            bar.setLevels(self._other_levels.get(i, (0.0, 1.0)))
        rows = self.arrangement == "rows"
        for i, panel in enumerate(self.panels):
            title = self._titles[i]
            if title is None:
                continue
            shown_note = panel.note if rows else _elided_note(panel.note)  # a grid column is as wide as its title
            note = f"{'  ·  ' if rows else '<br>'}<span style='font-size:8pt'>{shown_note}</span>" if panel.note else ""
            title.setText(f"<b>{panel.title}</b>{note}", color=plot_colors()["foreground"])
            title.setToolTip(panel.note)
        if levels is not None:
            self.set_levels(*levels)
        else:
            self.auto_levels()
        self._update_slices()
        self.show_message("")
        if rebuilt or not keep_position:
            self.reset_views()

    def _shown_indices(self, panels: Sequence[Panel]) -> list[int]:
        """The columns to draw: those ticked (all when nothing is chosen, or when nothing chosen is there), and the
        overlay column whenever an overlay is chosen."""
        chosen = [i for i, p in enumerate(panels) if p.kind != "overlay" and (self.shown is None or p.title in self.shown)]
        if not chosen:
            chosen = [i for i, p in enumerate(panels) if p.kind != "overlay"]
        return chosen + [i for i, p in enumerate(panels) if p.kind == "overlay"]

    @property
    def arrangement(self) -> str:
        """``"rows"``: one row per shown volume, its planes side by side (two volumes or fewer, 3D); ``"grid"``: one
        column per volume, one row per plane."""
        return "rows" if not self.is_2d and len(self._shown_indices(self.panels)) <= 2 else "grid"

    def _build(self) -> None:
        self.graphics.clear()
        self.views = [{} for _ in self.panels]
        self._titles = [None] * len(self.panels)
        self.colour_bars = {}
        fg = plot_colors()["foreground"]
        shown = self._shown_indices(self.panels)
        rows = self.arrangement == "rows"
        span = len(self.planes) if rows else 1
        # Rows: each volume's title above its three planes (a viewer's three views) and a colour bar at the row's end.
        # Grid: titles on top, colour bars below. The first row's (column's) views name their plane in a corner.
        for k, col in enumerate(shown):
            row, column = (2 * k + 1 if k else 0, 1) if rows else (0, k + 1)
            title = _ColumnTitle(f"<b>{self.panels[col].title}</b>", color=fg)
            self.graphics.addItem(title, row=row, col=column, colspan=span)
            self._titles[col] = title
            if not rows:  # every volume's column as wide as the others
                self.graphics.ci.layout.setColumnStretchFactor(column, 1)
        for k, col in enumerate(shown):
            panel = self.panels[col]
            views = {}
            for r, plane in enumerate(self.planes):
                view = _View(self, self.graphics.ci, *((2 * k + 2, r + 1) if rows else (r + 1, k + 1)), plane,
                             label=k == 0 and not self.is_2d)
                cmap = _CMAPS.get(panel.kind)
                if cmap:
                    view.image.setColorMap(_colormap(cmap))
                view.box.sigRangeChangedManually.connect(lambda *_, p=plane, c=col: self._sync_plane(p, c))
                views[plane] = view
            self.views[col] = views
            if panel.kind in _CMAPS:
                bar = pg.ColorBarItem(values=(0.0, 1.0), width=10, colorMap=_colormap(_CMAPS[panel.kind]),
                                      label=None if rows else panel.units or None, interactive=False,
                                      orientation="vertical" if rows else "horizontal", colorMapMenu=False)
                bar.axis.enableAutoSIPrefix(False)  # the label is the units, never "(x0.001)"
                if rows:  # beside the row, as narrow as its values allow (the width is the planes'), units outside
                    font = QFont()
                    font.setPointSizeF(max(6.0, font.pointSizeF() - 1))
                    metrics = QFontMetrics(font)
                    bar.axis.setStyle(tickFont=font, tickTextOffset=2, tickLength=4)
                    if panel.units:
                        bar.axis.setLabel(panel.units, **{"font-size": f"{font.pointSizeF():g}pt"})
                    bar.axis.setWidth(metrics.horizontalAdvance("-0.05") + 8 + (metrics.height() + 2 if panel.units else 0))
                    self.graphics.addItem(bar, row=2 * k + 2, col=len(self.planes) + 1)
                else:
                    self.graphics.addItem(bar, row=len(self.planes) + 1, col=k + 1)
                self.colour_bars[col] = bar

    def _fill_column_boxes(self, panels: Sequence[Panel]) -> None:
        """One check box per column the caller gave, ticked when it is shown (none for a single volume; the overlay
        column follows the overlay choice)."""
        titles = [p.title for p in panels]
        if list(self.column_boxes) != titles:
            for box in self.column_boxes.values():
                self.columns_layout.removeWidget(box)
                box.deleteLater()
            self.column_boxes = {}
            for panel in panels:
                box = QCheckBox(panel.title)
                box.setToolTip(f"Show the {panel.title} volume" + (f" ({panel.note})" if panel.note else ""))
                box.toggled.connect(self._column_toggled)
                self.columns_layout.addWidget(box)
                self.column_boxes[panel.title] = box
        shown = set(self._shown_indices(panels))
        for i, box in enumerate(self.column_boxes.values()):
            box.blockSignals(True)
            box.setChecked(i in shown)
            box.blockSignals(False)
        self._show_bar(columns=len(panels) > 1)

    @Slot()
    def _column_toggled(self) -> None:
        chosen = [t for t, box in self.column_boxes.items() if box.isChecked()]
        if not chosen:  # at least one column: the last one stays
            sender = self.sender()
            if isinstance(sender, QCheckBox):
                sender.blockSignals(True)
                sender.setChecked(True)
                sender.blockSignals(False)
            return
        self.set_shown(chosen)
        self.shown_changed.emit(chosen)

    def set_shown(self, titles: Sequence[str]) -> None:
        """Show only the columns ``titles`` (every value stays in the readout)."""
        self.shown = set(titles)
        if self._given:
            self.set_panels(self._given, levels=self.levels)

    def shown_titles(self) -> list[str]:
        """The titles of the columns drawn, in order."""
        return [self.panels[i].title for i in self._shown_indices(self.panels)] if self.panels else []

    def _sync_plane(self, plane: str, source: int) -> None:
        """Zoom and pan of one view apply to that plane in every column (the same data range, unlike pyqtgraph's
        links, which align side-by-side views in screen space)."""
        x_range, y_range = self.views[source][plane].box.viewRange()
        for col, views in enumerate(self.views):
            if col != source and plane in views:
                views[plane].box.setRange(xRange=x_range, yRange=y_range, padding=0)

    def reset_views(self) -> None:
        """Show every slice whole (after a resize or new volumes)."""
        for views in self.views:
            for plane, view in views.items():
                h, v = self._plane_size(plane)
                view.box.setRange(xRange=(0, h), yRange=(0, v), padding=0.02)

    def _plane_size(self, plane: str) -> tuple[int, int]:
        if self.is_2d:
            return self.shape[0], self.shape[1]
        x, y, z = self.shape
        return {"axial": (x, y), "coronal": (x, z), "sagittal": (y, z)}[plane]

    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))
        self.graphics.setVisible(not text)
        if text:
            self.readout.setText("")

    def clear(self, message: str = "Nothing to show yet.") -> None:
        self.panels, self.arrays, self.shape = [], [], ()
        self.graphics.clear()
        self.views, self._titles, self.colour_bars = [], [], {}
        self._built = None
        self._show_bar(columns=False, compare=False)
        self.show_message(message)

    # ------------------------------------------------------------------ slices and crosshair
    def _cuts(self, array: np.ndarray) -> dict[str, np.ndarray]:
        if array.ndim == 2:
            return {"image": array}
        x, y, z = self.position
        return {"axial": array[:, :, z], "coronal": array[:, y, :], "sagittal": array[x, :, :]}

    def _cross(self, plane: str) -> tuple[float, float]:
        x, y, z = self.position
        return {"image": (x, y), "axial": (x, y), "coronal": (x, z), "sagittal": (y, z)}[plane]

    def overlay_slice(self, plane: str) -> np.ndarray | None:
        """The overlay column's slice of ``plane``: the second intensity volume blended over, or in a
        checkerboard with, the first (None without an overlay)."""
        pair = self._overlay_pair(self.panels)
        mode = self.compare_mode
        if pair is None or mode is None:
            return None
        base = self._cuts(self.arrays[pair[0]])[plane]
        top = self._cuts(self.arrays[pair[1]])[plane]
        if mode == "blend":
            weight = self._blend / 100.0
            return (1.0 - weight) * base + weight * top
        rows, cols = np.indices(base.shape)
        tiles = ((rows // self._tile) + (cols // self._tile)) % 2 == 1
        return np.where(tiles, top, base)

    def _update_slices(self, only: str | None = None) -> None:
        for i, array in enumerate(self.arrays):
            kind = self.panels[i].kind
            if only is not None and kind != only:
                continue
            levels = self._other_levels.get(i, self.levels)
            for plane, view in self.views[i].items():
                if array is None:
                    view.image.clear()
                    view.vline.setVisible(False)
                    view.hline.setVisible(False)
                    continue
                cut = self.overlay_slice(plane) if kind == "overlay" else self._cuts(array)[plane]
                view.image.setImage(np.nan_to_num(cut), levels=levels, autoLevels=False)
                h, v = self._cross(plane)
                view.vline.setVisible(True)
                view.hline.setVisible(True)
                view.vline.setPos(h + 0.5)
                view.hline.setPos(v + 0.5)
        self._update_readout()

    def _update_readout(self) -> None:
        if not self.arrays:
            return
        index = tuple(self.position[: len(self.shape)])
        parts = [f"voxel ({', '.join(str(i) for i in index)})"]
        shown = [(p, a) for p, a in zip(self.panels, self.arrays, strict=True) if a is not None and p.kind != "overlay"]
        for k, (panel, array) in enumerate(shown):
            # Units after the last of a run of columns in the same units: "real 0.51 · synthesized 0.48 normalised intensity".
            last_of_run = k + 1 == len(shown) or shown[k + 1][0].units != panel.units
            units = f" {panel.units}" if panel.units and last_of_run else ""
            parts.append(f"{panel.title} {float(array[index]):.4g}{units}")
        note = f"  ({self.units_note})" if self.units_note else ""
        self.readout.setText("  ·  ".join(parts) + note)

    def value_at(self, title: str) -> float | None:
        """The value of column ``title`` under the crosshair."""
        for panel, array in zip(self.panels, self.arrays, strict=True):
            if panel.title == title and array is not None:
                return float(array[tuple(self.position[: len(self.shape)])])
        return None

    def set_position(self, x: int, y: int, z: int = 0) -> None:
        """Move the crosshair (clipped to the volume) and show the slices through it."""
        if not self.shape:
            return
        limits = list(self.shape) + ([1] if self.is_2d else [])
        new = [int(np.clip(v, 0, n - 1)) for v, n in zip((x, y, z), limits, strict=True)]
        if new == self.position:
            return
        self.position = new
        for box, value in zip(self.coords, new, strict=True):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        self._update_slices()
        self.position_changed.emit(*new)

    def click(self, plane: str, h: float, v: float) -> None:
        """A click at view coordinates (h, v) of ``plane`` moves the crosshair there."""
        x, y, z = self.position
        h, v = int(np.floor(h)), int(np.floor(v))
        if plane in ("axial", "image"):
            x, y = h, v
        elif plane == "coronal":
            x, z = h, v
        else:
            y, z = h, v
        self.set_position(x, y, z)

    @Slot()
    def _coords_edited(self) -> None:
        self.set_position(*(b.value() for b in self.coords))

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Up/Down move through axial slices (Z), Page Up/Down through coronal slices (Y)."""
        step = {Qt.Key.Key_Up: (2, 1), Qt.Key.Key_Down: (2, -1), Qt.Key.Key_PageUp: (1, 1), Qt.Key.Key_PageDown: (1, -1)}
        move = step.get(Qt.Key(event.key()))
        if move is not None and self.shape and not self.is_2d:
            position = list(self.position)
            position[move[0]] += move[1]
            self.set_position(*position)
            event.accept()
            return
        super().keyPressEvent(event)

    # ------------------------------------------------------------------ overlay
    @Slot()
    def _compare_changed(self) -> None:
        """Another overlay mode: the slider is the top volume's weight (blend) or the tile size (checkerboard)."""
        mode = self.compare_mode
        self.compare_slider.blockSignals(True)
        if mode == "checkerboard":
            self.compare_slider.setRange(2, 32)
            self.compare_slider.setValue(self._tile)
            self.compare_slider.setToolTip("Tile size of the checkerboard, in voxels")
        else:
            self.compare_slider.setRange(0, 100)
            self.compare_slider.setValue(self._blend)
            self.compare_slider.setToolTip("Weight of the synthesized volume in the blend (0 %: real only, 100 %: synthesized only)")
        self.compare_slider.blockSignals(False)
        self.compare_slider.setVisible(mode is not None)
        self.compare_label.setVisible(mode is not None)
        self._show_compare_value()
        if self._given:
            self.set_panels(self._given, levels=self.levels)

    @Slot(int)
    def _compare_slider_moved(self, value: int) -> None:
        if self.compare_mode == "checkerboard":
            self._tile = value
        else:
            self._blend = value
        self._show_compare_value()
        self._update_slices(only="overlay")

    def _show_compare_value(self) -> None:
        mode = self.compare_mode
        self.compare_label.setText({"blend": f"synthesized {self._blend} %", "checkerboard": f"tiles of {self._tile} voxels"}
                                   .get(mode or "", ""))

    def set_compare(self, mode: str, value: int | None = None) -> None:
        """Choose the overlay (one of :data:`COMPARE_MODES`' names) and, optionally, its slider value."""
        self.compare_box.setCurrentText(mode)
        if value is not None:
            self.compare_slider.setValue(value)

    # ------------------------------------------------------------------ window / level
    def set_levels(self, low: float, high: float) -> None:
        """The shared intensity window (real and synthesized columns)."""
        if not (np.isfinite(low) and np.isfinite(high)):
            return
        if high <= low:
            high = low + 1e-6
        self.levels = (float(low), float(high))
        for box, value in ((self.window_box, high - low), (self.level_box, (high + low) / 2)):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        for i in range(len(self.panels)):
            if i in self._other_levels or i >= len(self.views):
                continue
            for view in self.views[i].values():
                if self.arrays[i] is not None:
                    view.image.setLevels(self.levels)
        self.levels_changed.emit(*self.levels)

    @Slot()
    def auto_levels(self) -> None:
        window = display_window(
            (a for p, a in zip(self.panels, self.arrays, strict=True) if a is not None and p.kind == "intensity"),
            max_values=200_000,
        )
        if window is not None:
            self.set_levels(*window)

    @Slot()
    def _window_edited(self) -> None:
        width, centre = self.window_box.value(), self.level_box.value()
        self.set_levels(centre - width / 2, centre + width / 2)

    def drag_window_level(self, dx: float, dy: float) -> None:
        """Right-drag: horizontal movement widens the window, vertical movement raises the level."""
        low, high = self.levels
        width, centre = high - low, (high + low) / 2
        width = max(1e-6, width * float(np.exp(dx / 200.0)))
        centre -= dy * width / 200.0
        self.set_levels(centre - width / 2, centre + width / 2)

    # ------------------------------------------------------------------ theme
    def apply_plot_theme(self) -> None:
        self.graphics.setBackground(plot_colors()["background"])
        if self.panels and self.arrays:
            self._built = None
            self.set_panels(self.panels, levels=self.levels)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.graphics.setBackground(plot_colors()["background"])
        super().changeEvent(event)

    def view_center(self, column: int, plane: str) -> QPointF:
        """Scene position of the crosshair in one view (for tests driving clicks)."""
        view = self.views[column][plane]
        h, v = self._cross(plane)
        return view.box.mapViewToScene(QPointF(h + 0.5, v + 0.5))
