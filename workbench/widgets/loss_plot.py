"""Live loss curves (pyqtgraph): total loss and every named term, train and validation, several runs.

Data arrive as epoch rows (``EpochRecord.flat()`` or a ``metrics.csv`` row: ``epoch``,
``train/<term>``, ``val/<term>``). Plot items are created once per (run, split, term) and updated with
``setData`` from a throttled timer, never once per event. Smoothing is display only (a debiased EMA
with the raw points drawn faint behind it); exports always write the raw values.
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
from PySide6.QtCore import QEvent, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from workbench.resources import plot_colors

__all__ = ["LossPlot", "debiased_ema", "read_metrics_csv", "SPLITS"]

SPLITS = {"train": "train", "val": "validation"}
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
_DEFAULT_TERMS = ("loss",)
_NOT_LOSSES = ("grad_norm", "beta", "lr")


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


def read_metrics_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.csv`` with numeric values parsed (missing ones become NaN)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key is None:
                    continue
                if key == "stage":
                    row[key] = value
                    continue
                try:
                    row[key] = float(value) if value not in ("", None) else math.nan
                except ValueError:
                    row[key] = value
            if "epoch" in row and isinstance(row["epoch"], float) and math.isfinite(row["epoch"]):
                row["epoch"] = int(row["epoch"])
                rows.append(row)
    return rows


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


@dataclass
class _Run:
    label: str
    color_index: int
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    best_epochs: set[int] = field(default_factory=set)
    visible: bool = True


class LossPlot(QWidget):
    """Loss curves with term and split selection, log scale, smoothing, best marker and exports.

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

        self.plot_widget = pg.PlotWidget(axisItems={"left": LossAxis("left")})
        self.plot_item = self.plot_widget.getPlotItem()
        self.plot_item.getAxis("left").setWidth(64)
        self.plot_item.showGrid(x=True, y=True)
        self.plot_item.setLabel("bottom", "epoch")
        self.plot_item.setLabel("left", "loss")
        self.plot_item.setMenuEnabled(True)
        self.legend = self.plot_item.addLegend(offset=(-10, 10), labelTextSize="8pt")
        self.plot_widget.setToolTip("Drag to pan, wheel to zoom, right-click for more; 'A' in the corner re-fits")

        # -- controls ----------------------------------------------------------------------------------
        self.term_list = QListWidget()
        self.term_list.setToolTip("Loss terms to draw: the total loss and each named term of the model's objective")
        self.term_list.itemChanged.connect(self._term_toggled)
        self.train_box = QCheckBox("Train")
        self.train_box.setChecked(True)
        self.train_box.setToolTip("Draw the training curves (solid lines)")
        self.val_box = QCheckBox("Validation")
        self.val_box.setChecked(True)
        self.val_box.setToolTip("Draw the validation curves (dashed lines)")
        self.log_box = QCheckBox("Log scale")
        self.log_box.setChecked(True)
        self.log_box.setToolTip("Logarithmic loss axis; terms with zero or negative values are hidden while it is on")
        self.best_box = QCheckBox("Best validation")
        self.best_box.setChecked(True)
        self.best_box.setToolTip("Mark the epoch with the lowest validation loss (the weights kept as the final model)")
        for box in (self.train_box, self.val_box, self.log_box, self.best_box):
            box.toggled.connect(self._schedule)
        self.smoothing = QSlider(Qt.Orientation.Horizontal)
        self.smoothing.setRange(0, 99)
        self.smoothing.setToolTip("Smoothing (debiased moving average, display only; exports keep the raw values)")
        self.smoothing.valueChanged.connect(self._smoothing_changed)
        self.smoothing_label = QLabel("0.00")
        self.export_csv_button = QPushButton("CSV…")
        self.export_csv_button.setToolTip("Export the raw values of every run shown to a CSV file")
        self.export_png_button = QPushButton("PNG…")
        self.export_png_button.setToolTip("Save the plot as a PNG image")
        self.note = QLabel()
        self.note.setObjectName("PageHint")
        self.note.setWordWrap(True)

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(QLabel("Terms"))
        side_layout.addWidget(self.term_list, 1)
        for box in (self.train_box, self.val_box, self.log_box, self.best_box):
            side_layout.addWidget(box)
        smooth_row = QHBoxLayout()
        smooth_row.addWidget(QLabel("Smoothing"))
        smooth_row.addWidget(self.smoothing, 1)
        smooth_row.addWidget(self.smoothing_label)
        side_layout.addLayout(smooth_row)
        export_row = QHBoxLayout()
        export_row.addWidget(QLabel("Export"))
        export_row.addWidget(self.export_csv_button)
        export_row.addWidget(self.export_png_button)
        side_layout.addLayout(export_row)
        side_layout.addWidget(self.note)

        splitter = QSplitter()
        splitter.addWidget(self.plot_widget)
        splitter.addWidget(side)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 0)
        splitter.setSizes([700, 190])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)
        self._apply_colors()

    # ------------------------------------------------------------------ data in
    def add_run(self, run_id: str, label: str, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        """Add (or reset) a run; ``rows`` are epoch rows (see module docstring)."""
        if run_id in self._runs:
            self.remove_run(run_id)
        used = {r.color_index for r in self._runs.values()}
        index = next(i for i in range(len(used) + 1) if i not in used)
        self._runs[run_id] = _Run(label, index)
        for row in rows:
            self._add_row(run_id, dict(row))
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
        rows = read_metrics_csv(path)
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

    def run_ids(self) -> list[str]:
        return list(self._runs)

    def epochs(self, run_id: str) -> list[int]:
        return sorted(self._runs[run_id].rows)

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
        self.term_list.blockSignals(True)
        self.term_list.clear()
        for term in self._display_order():
            item = QListWidgetItem(term)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if term in self._checked_terms else Qt.CheckState.Unchecked)
            item.setToolTip("The total objective" if term == "loss" else f"Named term '{term}' of the objective")
            self.term_list.addItem(item)
        self.term_list.blockSignals(False)

    @Slot(QListWidgetItem)
    def _term_toggled(self, item: QListWidgetItem) -> None:
        if item.checkState() == Qt.CheckState.Checked:
            self._checked_terms.add(item.text())
        else:
            self._checked_terms.discard(item.text())
        self._schedule()

    # ------------------------------------------------------------------ options
    def set_log_y(self, on: bool) -> None:
        self.log_box.setChecked(on)

    def set_smoothing(self, weight: float) -> None:
        self.smoothing.setValue(int(round(min(0.99, max(0.0, weight)) * 100)))

    def smoothing_weight(self) -> float:
        return self.smoothing.value() / 100.0

    @Slot(int)
    def _smoothing_changed(self, value: int) -> None:
        self.smoothing_label.setText(f"{value / 100:.2f}")
        self._schedule()

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

    def _item(self, run_id: str, split: str, term: str) -> tuple[pg.PlotDataItem, pg.PlotDataItem]:
        key = (run_id, split, term)
        if key not in self._items:
            raw = pg.PlotDataItem()
            smooth = pg.PlotDataItem()
            for item in (raw, smooth):
                item.setClipToView(True)
                item.setDownsampling(auto=True, method="peak")
            self.plot_item.addItem(raw)
            self.plot_item.addItem(smooth)
            self._items[key] = (raw, smooth)
        return self._items[key]

    def _legend_name(self, run_id: str, split: str, term: str) -> str:
        label = self._runs[run_id].label
        multi = len(self._runs) > 1
        return f"{label + ' · ' if multi else ''}{term} ({SPLITS[split]})"

    def _display_order(self) -> list[str]:
        return sorted(self._terms, key=lambda t: (t != "loss", t in _NOT_LOSSES, t))

    def _color(self, run: _Run, term: str) -> QColor:
        """Each run starts at its own colour; a run's terms take the next ones (the total loss the first)."""
        order = self._display_order()
        rank = order.index(term) if term in order else 0
        return QColor(_PALETTE[(run.color_index * 3 + rank) % len(_PALETTE)])

    @Slot()
    def _redraw(self) -> None:
        self._dirty = False
        log_y = self.log_box.isChecked()
        weight = self.smoothing_weight()
        splits = [s for s, box in (("train", self.train_box), ("val", self.val_box)) if box.isChecked()]
        hidden_nonpositive: set[str] = set()
        self.legend.clear()
        wanted = set()
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
                    wanted.add((run_id, split, term))
                    if log_y and np.any(y[np.isfinite(y)] <= 0):
                        hidden_nonpositive.add(term)
                        y = np.where(y > 0, y, np.nan)
                    color = self._color(run, term)
                    style = Qt.PenStyle.SolidLine if split == "train" else Qt.PenStyle.DashLine
                    faint = QColor(color)
                    faint.setAlpha(70)
                    symbol = "o" if x.size < 40 else None
                    if weight > 0:
                        raw.setData(x, y, pen=pg.mkPen(faint, width=1, style=style), symbol=None)
                        raw.setVisible(True)
                        smooth.setData(x, debiased_ema(y, weight), pen=pg.mkPen(color, width=2, style=style), symbol=None)
                    else:
                        raw.setVisible(False)
                        smooth.setData(x, y, pen=pg.mkPen(color, width=2, style=style), symbol=symbol, symbolSize=5,
                                       symbolBrush=color, symbolPen=None)
                    smooth.setVisible(True)
                    self.legend.addItem(smooth, self._legend_name(run_id, split, term))
            self._draw_best(run_id, run, log_y)
        self.plot_item.setLogMode(y=log_y)
        notes = []
        if hidden_nonpositive:
            notes.append("Log scale hides zero or negative values of: " + ", ".join(sorted(hidden_nonpositive)) + ".")
        if weight > 0:
            notes.append("Smoothed lines are for display; raw values are faint.")
        self.note.setText(" ".join(notes))

    def _draw_best(self, run_id: str, run: _Run, log_y: bool) -> None:
        item = self._best_items.get(run_id)
        show = (run.visible and self.best_box.isChecked() and self.val_box.isChecked() and "loss" in self._checked_terms)
        x, y = self._series(run, "val", "loss")
        finite = np.isfinite(y) & ((y > 0) if log_y else True)
        if not show or not finite.any():
            if item is not None:
                item.setVisible(False)
            return
        candidates = [e for e in run.best_epochs if e in run.rows and math.isfinite(run.rows[e].get("val/loss", math.nan))]
        if candidates:
            best_epoch = max(candidates)
        else:
            best_epoch = int(x[finite][np.argmin(y[finite])])
        best_value = float(run.rows[best_epoch]["val/loss"])
        if item is None:
            item = pg.PlotDataItem()
            self.plot_item.addItem(item)
            self._best_items[run_id] = item
        color = self._color(run, "loss")
        item.setData([best_epoch], [best_value], pen=None, symbol="star", symbolSize=16, symbolBrush=color,
                     symbolPen=pg.mkPen("#000000" if plot_colors()["background"] == "#ffffff" else "#ffffff"))
        item.setVisible(True)
        self.legend.addItem(item, f"{run.label + ' · ' if len(self._runs) > 1 else ''}best validation {best_value:.4g} (epoch {best_epoch})")

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
        """Save the plot (as shown, with legend) as a PNG image ``width`` pixels wide."""
        from pyqtgraph.exporters import ImageExporter

        self.flush()
        path = Path(path)
        exporter = ImageExporter(self.plot_item)
        exporter.parameters()["width"] = width
        exporter.export(str(path))
        return path

    # ------------------------------------------------------------------ theme
    def apply_plot_theme(self) -> None:
        """Re-read the theme's plot colours (called by the main window when the theme changes)."""
        self._apply_colors()
        self._schedule()

    def _apply_colors(self) -> None:
        colors = plot_colors()
        self.plot_widget.setBackground(colors["background"])
        self.legend.setLabelTextColor(colors["foreground"])
        legend_bg = QColor(colors["background"])
        legend_bg.setAlpha(200)
        self.legend.setBrush(legend_bg)
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
