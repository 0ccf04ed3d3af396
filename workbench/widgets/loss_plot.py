"""Live loss curves (pyqtgraph): total loss and every named term, train and validation, several runs.

Data arrive as epoch rows (``EpochRecord.flat()`` or a ``metrics.csv`` row: ``epoch``,
``train/<term>``, ``val/<term>``). Plot items are created once per (run, split, term) and updated with
``setData`` from a throttled timer, never once per event. Smoothing and the relative view (% of the
first epoch, for a loss whose raw size, 1.8e5, says nothing by itself) are display only (the EMA is
debiased, with the raw points drawn faint behind it); exports always write the raw values.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QColor, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QScrollArea,
    QSlider,
    QSplitter,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
    QWidgetAction,
)

from core.training import read_metrics_csv
from workbench.resources import plot_colors

__all__ = ["LossPlot", "CurveLegend", "LegendEntry", "debiased_ema", "percent_of_first",
           "change_since_first", "SPLITS"]

SPLITS = {"train": "train", "val": "validation"}
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
_DEFAULT_TERMS = ("loss",)
_NOT_LOSSES = ("grad_norm", "beta", "lr")
#: Curves longer than this are clipped to the view and downsampled (see _redraw).
LONG_CURVE = 2000


def debiased_ema(values: Iterable[float], weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average divided by ``1 - weight^n`` so that the
    first points are not pulled towards zero. Non-finite values are passed through as NaN."""
    out = []
    last, n = 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(math.nan)
            continue
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n) if weight > 0 else v)
    return np.asarray(out, dtype=float)


def _compact(value: float) -> str:
    text = f"{value:.4g}"
    return text.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


class LossAxis(pg.AxisItem):
    """A value axis whose log mode labels values (not exponents) and keeps ticks inside one decade."""

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, list[float]]]:
        if self.logMode and maxVal - minVal < 1.0:
            self.logMode = False  # linear ticks in value space, placed at their logarithms
            try:
                levels = super().tickValues(10**minVal, 10**maxVal, size)
            finally:
                self.logMode = True
            return [(spacing, [math.log10(v) for v in values if v > 0]) for spacing, values in levels]
        return super().tickValues(minVal, maxVal, size)

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        if self.logMode:
            return [_compact(10**v) for v in values]
        return super().tickStrings(values, scale, spacing)


class EpochAxis(pg.AxisItem):
    """An epoch axis: whole epochs only (no 1.5, 2.5 ticks on a short run)."""

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, list[float]]]:
        levels = super().tickValues(minVal, maxVal, size)
        out = [(max(1.0, spacing), [v for v in values if float(v).is_integer()]) for spacing, values in levels]
        return [level for level in out if level[1]] or [(1.0, [float(v) for v in range(math.ceil(minVal), math.floor(maxVal) + 1)])]


def percent_of_first(values: np.ndarray) -> np.ndarray:
    """``values`` as a percentage of the first finite one (100 % = the first epoch), so a loss of 1.8e5
    reads as "92 % of where it started". NaN when there is no usable first value."""
    y = np.asarray(values, dtype=float)
    finite = y[np.isfinite(y)]
    if finite.size == 0 or finite[0] == 0:
        return np.full_like(y, math.nan)
    return 100.0 * y / abs(finite[0])


def change_since_first(first: float, value: float) -> str:
    """A loss change in plain words: ``'−8.4 % since epoch 1'`` (empty when it cannot be said)."""
    if not (math.isfinite(first) and math.isfinite(value)) or first == 0:
        return ""
    change = 100.0 * (value - first) / abs(first)
    sign = "\u2212" if change < 0 else "+"
    return f"{sign}{abs(change):.1f} % since epoch 1"


@dataclass
class _Run:
    label: str
    color_index: int
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    best_epochs: set[int] = field(default_factory=set)
    visible: bool = True


@dataclass(frozen=True)
class LegendEntry:
    """One line of the legend: its text and how the line is drawn."""

    text: str
    color: str
    dashed: bool
    symbol: str | None  # "o" filled (train), "s" hollow (validation), "star" (best), None


class CurveLegend(QWidget):
    """The legend beside the plot, not over it: a swatch drawn like the curve (solid or dashed, filled or
    hollow marker) and a text that wraps, so it never covers a curve at any window width."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(2)
        self._layout.addStretch(1)
        self.entries: list[LegendEntry] = []

    def set_entries(self, entries: list[LegendEntry]) -> None:
        if entries == self.entries:
            return
        self.entries = list(entries)
        while self._layout.count() > 1:
            item = self._layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for i, entry in enumerate(entries):
            row = QWidget()
            row_layout = QHBoxLayout(row)
            row_layout.setContentsMargins(0, 0, 0, 0)
            row_layout.setSpacing(6)
            swatch = QLabel()
            swatch.setPixmap(self._swatch(entry))
            swatch.setAlignment(Qt.AlignmentFlag.AlignTop)
            text = QLabel(entry.text)
            text.setWordWrap(True)
            row_layout.addWidget(swatch)
            row_layout.addWidget(text, 1)
            self._layout.insertWidget(i, row)

    def _swatch(self, entry: LegendEntry) -> QPixmap:
        ratio = self.devicePixelRatioF()
        pixmap = QPixmap(int(34 * ratio), int(14 * ratio))
        pixmap.setDevicePixelRatio(ratio)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        color = QColor(entry.color)
        if entry.symbol != "star":
            painter.setPen(QPen(color, 2, Qt.PenStyle.DashLine if entry.dashed else Qt.PenStyle.SolidLine))
            painter.drawLine(1, 7, 33, 7)
        painter.setPen(QPen(color, 1.5))
        painter.setBrush(color if entry.symbol in ("o", "star") else QColor(plot_colors()["background"]))
        if entry.symbol == "o":
            painter.drawEllipse(QPointF(17, 7), 3.5, 3.5)
        elif entry.symbol == "s":
            painter.drawRect(QRectF(13.5, 3.5, 7, 7))
        elif entry.symbol == "star":
            painter.drawText(QRectF(0, -3, 34, 20), Qt.AlignmentFlag.AlignCenter, "\u2605")
        painter.end()
        return pixmap


class LossPlot(QWidget):
    """Loss curves with term and split selection, log scale, relative values, smoothing, best marker,
    following new epochs, and exports.

    Train curves are solid with filled dots, validation curves dashed with hollow squares in a darker shade
    of the same colour; the legend sits beside the plot and says so. A drag or zoom stops the view from
    following new epochs (so the user can look at one part); Follow, or the 'A' button, brings it back.

    Signals:
        terms_changed(list): the names of the terms seen so far (for tests and menus).
    """

    terms_changed = Signal(list)

    def __init__(self, parent: QWidget | None = None, refresh_ms: int = 250) -> None:
        super().__init__(parent)
        self._runs: dict[str, _Run] = {}
        self._items: dict[tuple[str, str, str], tuple[pg.PlotDataItem, pg.PlotDataItem]] = {}
        self._best_items: dict[str, pg.PlotDataItem] = {}
        self._terms: list[str] = []
        self._checked_terms: set[str] = set(_DEFAULT_TERMS)
        self._dirty = False
        self._refresh = QTimer(self)
        self._refresh.setSingleShot(True)
        self._refresh.setInterval(refresh_ms)
        self._refresh.timeout.connect(self._redraw)
        self._legend_items: list[tuple[pg.PlotDataItem, str]] = []

        self.plot_widget = pg.PlotWidget(axisItems={"left": LossAxis("left"), "bottom": EpochAxis("bottom")})
        self.plot_item = self.plot_widget.getPlotItem()
        self.plot_item.getAxis("left").setWidth(64)
        self.plot_item.showGrid(x=True, y=True)
        self.plot_item.setLabel("bottom", "epoch")
        self.plot_item.setMenuEnabled(True)
        self.plot_item.getViewBox().setLimits(xMin=0)
        self.plot_widget.setToolTip("Drag to pan, wheel to zoom (the view then stops following new epochs: press "
                                    "Follow, or 'A' in the corner, to bring it back); right-click for more")
        self.plot_widget.setMinimumWidth(240)
        self.legend = CurveLegend()

        # -- controls ----------------------------------------------------------------------------------
        self.terms_button = QToolButton()
        self.terms_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.terms_button.setToolTip("Loss terms to draw: the total loss and each named term of the model's objective")
        self.terms_menu = QMenu(self.terms_button)
        self.terms_menu.triggered.connect(self._term_toggled)
        self.terms_button.setMenu(self.terms_menu)
        self.train_box = QCheckBox("Train")
        self.train_box.setChecked(True)
        self.train_box.setToolTip("Draw the training curves (solid lines, filled dots)")
        self.val_box = QCheckBox("Validation")
        self.val_box.setChecked(True)
        self.val_box.setToolTip("Draw the validation curves (dashed lines, hollow squares): subjects the model does "
                                "not train on")
        self.log_box = QCheckBox("Log")
        self.log_box.setChecked(True)
        self.log_box.setToolTip("Logarithmic loss axis; terms with zero or negative values are hidden while it is on")
        self.best_box = QCheckBox("Best \u2605")
        self.best_box.setChecked(True)
        self.best_box.setToolTip("Mark the epoch with the lowest validation loss (the weights kept as the final model)")
        for box in (self.train_box, self.val_box, self.log_box, self.best_box):
            box.toggled.connect(self._schedule)
        self.values_combo = QComboBox()
        self.values_combo.addItem("raw loss", "raw")
        self.values_combo.addItem("% of epoch 1", "relative")
        self.values_combo.setToolTip("Raw loss values (a sum over voxels and modalities, so large), or each curve as a "
                                     "percentage of its first epoch: 90 % means 10 % lower than at the start")
        self.values_combo.currentIndexChanged.connect(self._schedule)
        self.follow_button = QPushButton("Follow")
        self.follow_button.setCheckable(True)
        self.follow_button.setChecked(True)
        self.follow_button.setToolTip("Follow new epochs: fit the view to every curve as epochs arrive. A drag or a "
                                      "zoom turns it off, to look closely at one part; press it to follow again")
        self.follow_button.toggled.connect(self._follow_toggled)
        view_box = self.plot_item.getViewBox()
        view_box.sigRangeChangedManually.connect(self._moved_by_user)
        view_box.sigStateChanged.connect(self._sync_follow)
        self.smoothing = QSlider(Qt.Orientation.Horizontal)
        self.smoothing.setRange(0, 99)
        self.smoothing.setMinimumWidth(120)
        self.smoothing.setToolTip("Smoothing (debiased moving average, display only; exports keep the raw values)")
        self.smoothing.valueChanged.connect(self._smoothing_changed)
        self.smoothing_label = QLabel("0.00")
        self.note = QLabel()
        self.note.setObjectName("PageHint")
        self.note.setWordWrap(True)
        self.note.setVisible(False)

        # Less used: smoothing and exports, one click away in a menu.
        smooth_widget = QWidget()
        smooth_row = QHBoxLayout(smooth_widget)
        smooth_row.setContentsMargins(8, 4, 8, 4)
        smooth_row.addWidget(QLabel("Smoothing"))
        smooth_row.addWidget(self.smoothing, 1)
        smooth_row.addWidget(self.smoothing_label)
        smooth_action = QWidgetAction(self)
        smooth_action.setDefaultWidget(smooth_widget)
        self.more_menu = QMenu(self)
        self.more_menu.addAction(smooth_action)
        self.more_menu.addSeparator()
        self.export_csv_action = self.more_menu.addAction("Export the curves as CSV…")
        self.export_csv_action.setToolTip("Export the raw values of every run shown to a CSV file")
        self.export_png_action = self.more_menu.addAction("Save the plot as PNG…")
        self.more_button = QToolButton()
        self.more_button.setText("More \u25be")
        self.more_button.setToolTip("Smoothing, and exports as CSV or PNG")
        self.more_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.more_button.setMenu(self.more_menu)

        # A tool bar: when the panel is narrow, what does not fit goes behind its >> button instead of
        # setting the window's minimum width.
        self.controls = QToolBar()
        self.controls.setObjectName("PlotControls")
        self.controls.setMovable(False)
        self.controls.setFloatable(False)
        for widget in (self.terms_button, self.follow_button, self.values_combo, self.train_box, self.val_box,
                       self.best_box, self.log_box, self.more_button):
            self.controls.addWidget(widget)

        legend_scroll = QScrollArea()
        legend_scroll.setWidget(self.legend)
        legend_scroll.setWidgetResizable(True)
        legend_scroll.setFrameShape(QFrame.Shape.NoFrame)
        legend_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        side = QWidget()
        side.setMinimumWidth(140)
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.setSpacing(4)
        side_layout.addWidget(legend_scroll, 1)
        side_layout.addWidget(self.note)

        splitter = QSplitter()
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self.plot_widget)
        splitter.addWidget(side)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 0)
        splitter.setSizes([700, 190])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.controls)
        layout.addWidget(splitter)
        self._rebuild_term_list()
        self._apply_colors()

    # ------------------------------------------------------------------ data in
    def add_run(self, run_id: str, label: str, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        """Add (or reset) a run; ``rows`` are epoch rows (see module docstring). The view follows again."""
        if run_id in self._runs:
            self.remove_run(run_id)
        used = {r.color_index for r in self._runs.values()}
        index = next(i for i in range(len(used) + 1) if i not in used)
        self._runs[run_id] = _Run(label, index)
        for row in rows:
            self._add_row(run_id, dict(row))
        self.follow_button.setChecked(True)
        self._schedule()

    def has_run(self, run_id: str) -> bool:
        return run_id in self._runs

    def add_epoch(self, run_id: str, row: Mapping[str, Any], is_best: bool = False) -> None:
        """Add one epoch row to ``run_id`` (created on first use); a repeated epoch replaces the old row."""
        if run_id not in self._runs:
            self.add_run(run_id, run_id)
        self._add_row(run_id, dict(row), is_best)
        self._schedule()

    def add_record(self, run_id: str, record: Any) -> None:
        """Add an :class:`~core.training.EpochRecord`."""
        self.add_epoch(run_id, record.flat(), bool(record.is_best))

    def load_metrics_csv(self, run_id: str, label: str, path: str | Path) -> int:
        """Show a finished or earlier run from its ``metrics.csv``; returns the number of epochs read."""
        rows = read_metrics_csv(path, missing=math.nan)
        self.add_run(run_id, label, rows)
        return len(rows)

    def _add_row(self, run_id: str, row: dict[str, Any], is_best: bool = False) -> None:
        run = self._runs[run_id]
        epoch = int(row["epoch"])
        if any(e >= epoch for e in run.rows):  # a resumed run re-does epochs after its checkpoint
            run.rows = {e: r for e, r in run.rows.items() if e < epoch}
            run.best_epochs = {e for e in run.best_epochs if e < epoch}
        run.rows[epoch] = row
        if is_best:
            run.best_epochs.add(epoch)
        new_terms = []
        for key in row:
            if "/" in key:
                term = key.split("/", 1)[1]
                if term not in self._terms:
                    self._terms.append(term)
                    new_terms.append(term)
        if new_terms:
            self._rebuild_term_list()
            self.terms_changed.emit(list(self._terms))

    def remove_run(self, run_id: str) -> None:
        self._runs.pop(run_id, None)
        for key in [k for k in self._items if k[0] == run_id]:
            for item in self._items.pop(key):
                self.plot_item.removeItem(item)
        best = self._best_items.pop(run_id, None)
        if best is not None:
            self.plot_item.removeItem(best)
        self._schedule()

    def clear(self) -> None:
        for run_id in list(self._runs):
            self.remove_run(run_id)

    def set_run_visible(self, run_id: str, visible: bool) -> None:
        if run_id in self._runs:
            self._runs[run_id].visible = visible
            self._schedule()

    def is_run_visible(self, run_id: str) -> bool:
        return run_id in self._runs and self._runs[run_id].visible

    def run_ids(self) -> list[str]:
        return list(self._runs)

    def epochs(self, run_id: str) -> list[int]:
        return sorted(self._runs[run_id].rows)

    def first_value(self, run_id: str, split: str = "val", term: str = "loss") -> float:
        """The first finite value of a curve (NaN when none), the reference of the relative figures."""
        _, y = self._series(self._runs[run_id], split, term)
        finite = y[np.isfinite(y)]
        return float(finite[0]) if finite.size else math.nan

    # ------------------------------------------------------------------ term selection
    def terms(self) -> list[str]:
        return list(self._terms)

    def set_terms_visible(self, terms: Iterable[str]) -> None:
        self._checked_terms = set(terms)
        self._rebuild_term_list()
        self._schedule()

    def visible_terms(self) -> list[str]:
        return [t for t in self._terms if t in self._checked_terms]

    def _rebuild_term_list(self) -> None:
        self.terms_menu.clear()
        for term in self._display_order():
            action = self.terms_menu.addAction(term)
            action.setCheckable(True)
            action.setChecked(term in self._checked_terms)
            action.setToolTip("The total objective" if term == "loss" else f"Named term '{term}' of the objective")
        shown = len(self.visible_terms())
        self.terms_button.setText(f"Terms: {shown} of {len(self._terms)} \u25be" if self._terms else "Terms \u25be")

    @Slot(QAction)
    def _term_toggled(self, action: QAction) -> None:
        if action.isChecked():
            self._checked_terms.add(action.text())
        else:
            self._checked_terms.discard(action.text())
        self._rebuild_term_list()
        self._schedule()

    # ------------------------------------------------------------------ options
    def set_log_y(self, on: bool) -> None:
        self.log_box.setChecked(on)

    def set_relative(self, on: bool) -> None:
        """Draw every curve as a percentage of its first epoch (True) or as raw loss values."""
        self.values_combo.setCurrentIndex(self.values_combo.findData("relative" if on else "raw"))

    def is_relative(self) -> bool:
        return self.values_combo.currentData() == "relative"

    def set_smoothing(self, weight: float) -> None:
        self.smoothing.setValue(int(round(min(0.99, max(0.0, weight)) * 100)))

    def smoothing_weight(self) -> float:
        return self.smoothing.value() / 100.0

    @Slot(int)
    def _smoothing_changed(self, value: int) -> None:
        self.smoothing_label.setText(f"{value / 100:.2f}")
        self._schedule()

    # ------------------------------------------------------------------ following new epochs
    def is_following(self) -> bool:
        return self.follow_button.isChecked()

    @Slot(bool)
    def _follow_toggled(self, on: bool) -> None:
        view_box = self.plot_item.getViewBox()
        if on:
            view_box.enableAutoRange(axis=pg.ViewBox.XYAxes, enable=True)
        elif all(view_box.autoRangeEnabled()):
            view_box.disableAutoRange()
        self._schedule()

    @Slot()
    def _moved_by_user(self) -> None:
        """A drag or a zoom: keep the user's view until Follow (or 'A') is pressed."""
        self.follow_button.setChecked(False)

    @Slot()
    def _sync_follow(self) -> None:
        """pyqtgraph's own 'A' button and menu re-enable auto-range: Follow shows it."""
        following = all(self.plot_item.getViewBox().autoRangeEnabled())
        if following and not self.follow_button.isChecked():
            self.follow_button.setChecked(True)

    # ------------------------------------------------------------------ drawing
    @Slot()
    def _schedule(self) -> None:
        self._dirty = True
        if not self._refresh.isActive():
            self._refresh.start()

    def flush(self) -> None:
        """Draw pending changes now (tests, exports)."""
        self._refresh.stop()
        self._redraw()

    def _series(self, run: _Run, split: str, term: str) -> tuple[np.ndarray, np.ndarray]:
        key = f"{split}/{term}"
        epochs = sorted(e for e, r in run.rows.items() if key in r)
        values = [run.rows[e][key] for e in epochs]
        y = np.array([v if isinstance(v, (int, float)) else math.nan for v in values], dtype=float)
        return np.array(epochs, dtype=float), y

    def curve_data(self, run_id: str, split: str, term: str) -> tuple[np.ndarray, np.ndarray]:
        """The raw (x, y) of a curve, for tests and exports."""
        return self._series(self._runs[run_id], split, term)

    def shown_curves(self) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]:
        """What is drawn now, (run, split, term) -> (x, y) as displayed (relative, smoothed), for tests."""
        shown = {}
        for key, (_, smooth) in self._items.items():
            if smooth.isVisible():  # xData/yData: before the log transform of the view
                shown[key] = (np.asarray(smooth.xData, dtype=float), np.asarray(smooth.yData, dtype=float))
        return shown

    def _item(self, run_id: str, split: str, term: str) -> tuple[pg.PlotDataItem, pg.PlotDataItem]:
        key = (run_id, split, term)
        if key not in self._items:
            raw = pg.PlotDataItem()
            smooth = pg.PlotDataItem()
            self.plot_item.addItem(raw)
            self.plot_item.addItem(smooth)
            self._items[key] = (raw, smooth)
        return self._items[key]

    def _legend_name(self, run_id: str, split: str, term: str) -> str:
        label = self._runs[run_id].label
        multi = len(self._runs) > 1
        how = "solid" if split == "train" else "dashed"
        return f"{label + ' · ' if multi else ''}{term}, {SPLITS[split]} ({how})"

    def _display_order(self) -> list[str]:
        return sorted(self._terms, key=lambda t: (t != "loss", t in _NOT_LOSSES, t))

    def _color(self, run: _Run, term: str, split: str = "train") -> QColor:
        """Each run starts at its own colour; a run's terms take the next ones (the total loss the first).
        Validation takes a darker shade (a lighter one on a dark background) of the train colour."""
        order = self._display_order()
        rank = order.index(term) if term in order else 0
        color = QColor(_PALETTE[(run.color_index * 3 + rank) % len(_PALETTE)])
        if split == "val":
            color = color.lighter(150) if QColor(plot_colors()["background"]).lightness() < 128 else color.darker(165)
        return color

    @Slot()
    def _redraw(self) -> None:
        self._dirty = False
        log_y = self.log_box.isChecked()
        relative = self.is_relative()
        weight = self.smoothing_weight()
        splits = [s for s, box in (("train", self.train_box), ("val", self.val_box)) if box.isChecked()]
        background = QColor(plot_colors()["background"])
        hidden_nonpositive: set[str] = set()
        entries: list[LegendEntry] = []
        self._legend_items: list[tuple[pg.PlotDataItem, str]] = []
        for run_id, run in self._runs.items():
            for term in self._terms:
                for split in SPLITS:
                    x, y = self._series(run, split, term)
                    show = run.visible and term in self._checked_terms and split in splits and x.size > 0
                    if not show and (run_id, split, term) not in self._items:
                        continue
                    raw, smooth = self._item(run_id, split, term)
                    if not show:
                        raw.setVisible(False)
                        smooth.setVisible(False)
                        continue
                    if relative:
                        y = percent_of_first(y)
                    if log_y and np.any(y[np.isfinite(y)] <= 0):
                        hidden_nonpositive.add(term)
                        y = np.where(y > 0, y, np.nan)
                    # Clipping and downsampling redo the curve (and its symbols) on every change of the view:
                    # worth it for long curves only, never for the few hundred epochs of a run.
                    long_curve = x.size > LONG_CURVE
                    for item in (raw, smooth):
                        item.setClipToView(long_curve)
                        item.setDownsampling(auto=long_curve, method="peak")
                    color = self._color(run, term, split)
                    train = split == "train"
                    style = Qt.PenStyle.SolidLine if train else Qt.PenStyle.DashLine
                    faint = QColor(color)
                    faint.setAlpha(70)
                    symbol = ("o" if train else "s") if x.size < 40 else None
                    if weight > 0:
                        raw.setData(x, y, pen=pg.mkPen(faint, width=1, style=style), symbol=None)
                        raw.setVisible(True)
                        smooth.setData(x, debiased_ema(y, weight), pen=pg.mkPen(color, width=2, style=style), symbol=None)
                    else:
                        raw.setVisible(False)
                        smooth.setData(x, y, pen=pg.mkPen(color, width=2, style=style), symbol=symbol,
                                       symbolSize=6 if train else 7, symbolBrush=color if train else background,
                                       symbolPen=pg.mkPen(color, width=1.5))
                    smooth.setVisible(True)
                    name = self._legend_name(run_id, split, term)
                    entries.append(LegendEntry(name, color.name(), not train, symbol if weight == 0 else None))
                    self._legend_items.append((smooth, name))
            best = self._draw_best(run_id, run, log_y, relative)
            if best is not None:
                entries.append(best)
                self._legend_items.append((self._best_items[run_id], best.text))
        self.legend.set_entries(entries)
        self.plot_item.setLogMode(y=log_y)
        self.plot_item.setLabel("left", "% of epoch 1" if relative else "loss")
        notes = []
        if hidden_nonpositive:
            notes.append("Log scale hides zero or negative values of: " + ", ".join(sorted(hidden_nonpositive)) + ".")
        if weight > 0:
            notes.append("Smoothed lines are for display; raw values are faint.")
        if not self.is_following() and self._beyond_view():
            notes.append("New epochs are outside the view: press Follow.")
        self.note.setText(" ".join(notes))
        self.note.setVisible(bool(notes))

    def _beyond_view(self) -> bool:
        """Whether a visible run has epochs to the right of what the view shows."""
        right = self.plot_item.getViewBox().viewRange()[0][1]
        return any(run.visible and run.rows and max(run.rows) > right for run in self._runs.values())

    def _draw_best(self, run_id: str, run: _Run, log_y: bool, relative: bool) -> LegendEntry | None:
        item = self._best_items.get(run_id)
        show = (run.visible and self.best_box.isChecked() and self.val_box.isChecked() and "loss" in self._checked_terms)
        x, y = self._series(run, "val", "loss")
        finite = np.isfinite(y) & ((y > 0) if log_y else True)
        if not show or not finite.any():
            if item is not None:
                item.setVisible(False)
            return None
        candidates = [e for e in run.best_epochs if e in run.rows and math.isfinite(run.rows[e].get("val/loss", math.nan))]
        if candidates:
            best_epoch = max(candidates)
        else:
            best_epoch = int(x[finite][np.argmin(y[finite])])
        best_value = float(run.rows[best_epoch]["val/loss"])
        first = self.first_value(run_id)
        shown_value = float(percent_of_first(np.array([first, best_value]))[1]) if relative else best_value
        if item is None:
            item = pg.PlotDataItem()
            self.plot_item.addItem(item)
            self._best_items[run_id] = item
        color = self._color(run, "loss", "val")
        item.setData([best_epoch], [shown_value], pen=None, symbol="star", symbolSize=16, symbolBrush=color,
                     symbolPen=pg.mkPen("#000000" if plot_colors()["background"] == "#ffffff" else "#ffffff"))
        item.setVisible(True)
        change = change_since_first(first, best_value)
        text = (f"{run.label + ' · ' if len(self._runs) > 1 else ''}best validation {_compact(best_value)} "
                f"(epoch {best_epoch}{', ' + change if change and best_epoch != min(run.rows) else ''})")
        return LegendEntry(text, color.name(), False, "star")

    def best(self, run_id: str) -> tuple[int, float] | None:
        """The epoch and value of the best validation loss of ``run_id``, if any."""
        run = self._runs[run_id]
        x, y = self._series(run, "val", "loss")
        finite = np.isfinite(y)
        if not finite.any():
            return None
        candidates = [e for e in run.best_epochs if e in run.rows]
        epoch = max(candidates) if candidates else int(x[finite][np.argmin(y[finite])])
        return epoch, float(run.rows[epoch]["val/loss"])

    # ------------------------------------------------------------------ exports
    def export_csv(self, path: str | Path) -> Path:
        """Write every run's raw rows (one row per run and epoch, one column per split/term)."""
        path = Path(path)
        columns: list[str] = []
        for run in self._runs.values():
            for row in run.rows.values():
                columns += [c for c in row if c not in columns and c != "epoch"]
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["run", "epoch", *columns])
            for run in self._runs.values():
                for epoch in sorted(run.rows):
                    row = run.rows[epoch]
                    writer.writerow([run.label, epoch, *[_csv_value(row.get(c)) for c in columns]])
        return path

    def export_png(self, path: str | Path, width: int = 1600) -> Path:
        """Save the plot as a PNG image ``width`` pixels wide, with the legend drawn inside it (an image
        has no side panel; at export width it has the room)."""
        from pyqtgraph.exporters import ImageExporter

        self.flush()
        path = Path(path)
        legend = pg.LegendItem(offset=(-10, 10), labelTextSize="9pt", labelTextColor=plot_colors()["foreground"])
        legend.setParentItem(self.plot_item.getViewBox())
        for item, name in self._legend_items:
            legend.addItem(item, name)
        try:
            exporter = ImageExporter(self.plot_item)
            exporter.parameters()["width"] = width
            exporter.export(str(path))
        finally:
            self.plot_item.scene().removeItem(legend)
        return path

    # ------------------------------------------------------------------ theme
    def apply_plot_theme(self) -> None:
        """Re-read the theme's plot colours (called by the main window when the theme changes)."""
        self._apply_colors()
        self._schedule()

    def _apply_colors(self) -> None:
        colors = plot_colors()
        self.plot_widget.setBackground(colors["background"])
        self.legend.set_entries([])  # swatches are redrawn on the new background
        for name in ("left", "bottom"):
            axis = self.plot_item.getAxis(name)
            axis.setPen(colors["foreground"])
            axis.setTextPen(colors["foreground"])

    def changeEvent(self, event: QEvent) -> None:
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.apply_plot_theme()
        super().changeEvent(event)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value
