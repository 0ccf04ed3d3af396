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


def test_prepare_rows_builds_the_cells_over_several_event_loop_turns(qtbot: Any) -> None:
    """A run's preview grid is built a few cells per turn of the event loop, so Start never freezes the window."""
    grid = SliceGrid(["real", "generated from"], planes=("axial", "coronal"), transposed=True)
    qtbot.addWidget(grid)
    rows = ["T1", "T2", "FLAIR", "US"]
    grid.prepare_rows(rows, "A preview appears after the first epoch.")
    assert len(grid._views) < len(rows) * 2  # not all at once: the rest waits for the event loop
    qtbot.waitUntil(lambda: not grid._pending, timeout=5000)
    assert set(grid._views) == {(r, c) for r in rows for c in grid.columns}
    # Every cell has its place in the layout, and the first preview fills them.
    layout = grid.graphics.ci
    assert layout.items[grid.view("US", "generated from").layout] == [(2, 4)]
    volume = np.ones((8, 8, 8), np.float32)
    grid.prepare_rows(rows[::-1])  # another run: rebuilt; a preview before the build ended completes it first
    grid.set_rows([(m, [volume, volume], "") for m in rows[::-1]])
    assert all(view.array is not None for view in grid.views.values()) and not grid._pending
