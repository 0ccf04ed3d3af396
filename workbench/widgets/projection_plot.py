"""Scatter plots of a latent projection (:class:`core.workflows.projection.Projection`): the subjects encoded from all
their modalities in a large plot, and encoded from each modality alone in small plots beside it, all on
the same (linked) axes, so where the modalities agree a subject sits in the same place in every plot.

Points are coloured by any of the projection's colour columns (missingness pattern, split, covariates);
hovering shows the subject, a click emits ``subject_clicked(subject)`` and rings that subject in every plot.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from core.display import PALETTE
from core.workflows.projection import JOINT, Projection
from workbench.resources import plot_colors

__all__ = ["ProjectionPlot", "point_colours"]

_UNKNOWN = "#b8bec6"


def point_colours(projection: Projection, column: str) -> tuple[list[QColor], list[tuple[str, QColor]]]:
    """One colour per shown subject for ``column``, and the legend entries (label, colour)."""
    col = projection.colours[column]
    if col.kind == "categorical":
        palette = [QColor(PALETTE[i % len(PALETTE)]) for i in range(max(1, len(col.categories)))]
        colours = [palette[int(v)] if 0 <= int(v) < len(col.categories) else QColor(_UNKNOWN) for v in col.values]
        used = sorted({int(v) for v in col.values if v >= 0})
        legend = [(col.categories[i], palette[i]) for i in used]
        if any(v < 0 for v in col.values):
            legend.append(("n/a", QColor(_UNKNOWN)))
        return colours, legend
    values = np.asarray(col.values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = high - low if high > low else 1.0
    cmap = pg.colormap.get("viridis")
    colours = [QColor(_UNKNOWN) if not math.isfinite(v) else cmap.mapToQColor((v - low) / span) for v in values]
    legend = [(f"{low + f * span:.3g}", cmap.mapToQColor(f)) for f in (0.0, 0.5, 1.0)]
    if not np.isfinite(values).all():
        legend.append(("n/a", QColor(_UNKNOWN)))
    return colours, legend


class ProjectionPlot(QWidget):
    """The joint projection plus one linked plot per modality (module docstring)."""

    subject_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(300, 240)
        self.message = QLabel("")
        self.message.setObjectName("PageHint")
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.message, 1)
        self.projection: Projection | None = None
        self.colour_by = "missingness"
        self.plots: dict[str, pg.PlotItem] = {}
        self.scatters: dict[str, pg.ScatterPlotItem] = {}
        self.rings: dict[str, pg.ScatterPlotItem] = {}
        self.legend: pg.LegendItem | None = None
        self.selected: str | None = None
        self._tips: dict[str, str] = {}
        self.apply_plot_theme()
        self.show_message("No projection yet.")

    # ------------------------------------------------------------------ content
    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))
        self.graphics.setVisible(not text)

    def set_projection(self, projection: Projection, colour_by: str | None = None) -> None:
        self.projection = projection
        if colour_by is not None:
            self.colour_by = colour_by
        if self.colour_by not in projection.colours:
            self.colour_by = "missingness"
        self._build()
        self.set_colour_by(self.colour_by)
        self.show_message("")

    def _build(self) -> None:
        p = self.projection
        assert p is not None
        self.graphics.clear()
        self.plots, self.scatters, self.rings = {}, {}, {}
        fg = plot_colors()["foreground"]
        views = [JOINT, *p.modalities]
        n_small = len(p.modalities)
        cols = 2 if n_small > 2 else 1
        rows = max(1, math.ceil(n_small / cols))
        axis_names = ("PC 1", "PC 2") if p.method == "pca" else ("", "")
        for k, view in enumerate(views):
            if view == JOINT:
                plot = self.graphics.addPlot(row=0, col=0, rowspan=rows)
                plot.setTitle("<b>All observed modalities</b>", color=fg, size="10pt")
                plot.setLabel("bottom", axis_names[0])
                plot.setLabel("left", axis_names[1])
            else:
                index = k - 1
                plot = self.graphics.addPlot(row=index // cols, col=1 + index % cols)
                agreement = p.agreement.get(view, {})
                retrieval = agreement.get("retrieval")
                extra = f" · finds itself {retrieval:.0%}" if retrieval is not None and math.isfinite(retrieval) else ""
                plot.setTitle(f"{view} alone{extra}", color=fg, size="9pt")
                plot.hideAxis("left")
                plot.hideAxis("bottom")
                plot.setMouseEnabled(x=False, y=False)  # follows the large plot's zoom and pan (_sync_ranges)
                plot.getViewBox().setBorder(pg.mkPen(plot_colors()["foreground"], width=0.5))
            plot.setMenuEnabled(False)
            plot.showGrid(x=view == JOINT, y=view == JOINT, alpha=0.15)
            plot.getViewBox().setDefaultPadding(0.06)
            scatter = pg.ScatterPlotItem(size=9 if view == JOINT else 6, pen=pg.mkPen(40, 40, 40, 120), hoverable=True,
                                         hoverSize=13 if view == JOINT else 9, hoverPen=pg.mkPen(fg, width=1.5),
                                         tip=self._tip)
            scatter.sigClicked.connect(self._clicked)
            plot.addItem(scatter)
            ring = pg.ScatterPlotItem(size=18 if view == JOINT else 12, brush=None, pen=pg.mkPen("#d62728", width=2.2))
            ring.setZValue(5)
            plot.addItem(ring)
            self.plots[view], self.scatters[view], self.rings[view] = plot, scatter, ring
        all_xy = np.concatenate([p.views[v] for v in views])
        ok = np.isfinite(all_xy).all(1)
        if ok.any():
            (x0, y0), (x1, y1) = all_xy[ok].min(0), all_xy[ok].max(0)
            pad_x, pad_y = 0.06 * max(x1 - x0, 1e-6), 0.06 * max(y1 - y0, 1e-6)
            self.plots[JOINT].setRange(xRange=(x0 - pad_x, x1 + pad_x), yRange=(y0 - pad_y, y1 + pad_y), padding=0)
        self.plots[JOINT].getViewBox().sigRangeChanged.connect(self._sync_ranges)
        self._sync_ranges()
        self.legend = pg.LegendItem(colCount=4, labelTextColor=fg, verSpacing=-4, horSpacing=18)
        self.graphics.addItem(self.legend, row=rows, col=0, colspan=1 + cols)  # below the plots: hides no point
        layout = self.graphics.ci.layout
        layout.setColumnStretchFactor(0, 3)
        for c in range(1, cols + 1):
            layout.setColumnStretchFactor(c, 1)

    def _sync_ranges(self, *args: object) -> None:
        """Every small plot shows exactly the large plot's data range (not pyqtgraph's screen-aligned links)."""
        joint = self.plots.get(JOINT)
        if joint is None:
            return
        (x0, x1), (y0, y1) = joint.getViewBox().viewRange()
        for view, plot in self.plots.items():
            if view != JOINT:
                plot.setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0)

    def set_colour_by(self, column: str) -> None:
        """Colour the points by ``column`` (one of the projection's colour columns)."""
        p = self.projection
        if p is None or column not in p.colours:
            return
        self.colour_by = column
        colours, legend_entries = point_colours(p, column)
        labels = p.colours[column].labels()
        patterns = p.patterns()
        # The missingness column's value is the modalities the subject has: the "has" line already says it.
        extra = "" if column == "missingness" else "\n{column}: {label}"
        self._tips = {s: f"{s}\nhas {pattern.replace('+', ', ')}" + extra.format(column=column, label=label)
                      + "\nclick to open it on the Synthesize page"
                      for s, pattern, label in zip(p.subjects, patterns, labels, strict=True)}
        brushes = [pg.mkBrush(c) for c in colours]
        for view, scatter in self.scatters.items():
            xy = p.views[view]
            ok = np.isfinite(xy).all(1)
            rows = np.flatnonzero(ok)
            scatter.setData(x=xy[rows, 0], y=xy[rows, 1], data=[p.subjects[i] for i in rows],
                            brush=[brushes[i] for i in rows])
        assert self.legend is not None
        self.legend.clear()
        for name, colour in legend_entries:
            sample = pg.ScatterPlotItem(size=9, brush=pg.mkBrush(colour), pen=pg.mkPen(40, 40, 40, 120))
            self.legend.addItem(sample, name)
        self.highlight(self.selected)

    def _tip(self, x: float, y: float, data: object) -> str:
        return self._tips.get(str(data), str(data))

    def _clicked(self, item: pg.ScatterPlotItem, points: list, event: object = None) -> None:
        if len(points):
            subject = str(points[0].data())
            self.highlight(subject)
            self.subject_clicked.emit(subject)

    def highlight(self, subject: str | None) -> None:
        """Ring ``subject`` in every plot (None clears)."""
        self.selected = subject
        p = self.projection
        for view, ring in self.rings.items():
            i = p.index_of(subject) if (p is not None and subject) else None
            if i is None or not np.isfinite(p.views[view][i]).all():
                ring.setData([], [])
            else:
                ring.setData([p.views[view][i, 0]], [p.views[view][i, 1]])

    def scene_position(self, view: str, subject: str) -> QPointF | None:
        """Where ``subject``'s point of ``view`` is drawn, in scene coordinates (tests click there)."""
        p = self.projection
        i = p.index_of(subject) if p is not None else None
        if i is None or not np.isfinite(p.views[view][i]).all():
            return None
        return self.plots[view].getViewBox().mapViewToScene(QPointF(*p.views[view][i]))

    # ------------------------------------------------------------------ theme
    def apply_plot_theme(self) -> None:
        self.graphics.setBackground(plot_colors()["background"])
        if self.projection is not None:
            self.set_projection(self.projection)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.graphics.setBackground(plot_colors()["background"])
        super().changeEvent(event)
