"""Slice grids: modalities side by side (the Train page's preview) and images kept across a theme switch."""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtWidgets import QApplication

from workbench.resources import apply_theme
from workbench.widgets.slice_preview import SliceGrid


def test_a_transposed_grid_keeps_its_images_after_a_theme_switch(qtbot: Any) -> None:
    grid = SliceGrid(["real", "generated from"], planes=("axial",), transposed=True)
    qtbot.addWidget(grid)
    volume = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    grid.set_rows([(m, [volume, volume + 1], "") for m in ("T1", "T2", "US")], notes=[["", "T2+US"]] * 3)
    # Modalities across, real/generated down: the cells of one modality share a column of the layout.
    layout = grid.graphics.ci
    cell = grid.view("T2", "generated from")
    assert layout.items[cell.layout] == [(2, 2)] and layout.items[grid.view("T2", "real").layout] == [(1, 2)]
    app = QApplication.instance()
    try:
        apply_theme(app, "dark")
        grid.apply_plot_theme()
        for key, view in grid.views.items():
            assert view.array is not None, key
            assert view.images["axial"].image is not None, key
    finally:
        apply_theme(app, "light")
