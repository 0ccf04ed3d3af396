"""The themes draw what a person needs to read: the highlighted item of a drop-down, a bounded popup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QApplication, QComboBox

from workbench.resources import apply_theme


@pytest.fixture
def themed(qapp: QApplication) -> Iterator[Any]:
    yield lambda theme: apply_theme(qapp, theme)
    apply_theme(qapp, "light")


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_highlighted_drop_down_item_shows_its_text(qtbot: Any, themed: Any, theme: str) -> None:
    themed(theme)
    combo = QComboBox()
    qtbot.addWidget(combo)
    combo.addItems([f"sub-{i:02d} lacks US" for i in range(40)])
    combo.resize(260, 30)
    combo.show()
    combo.showPopup()
    view = combo.view()
    index = combo.model().index(1, 0)
    view.setCurrentIndex(index)
    QApplication.processEvents()
    popup = view.window()
    image = popup.grab().toImage()
    rect = view.visualRect(index)
    top_left = view.viewport().mapTo(popup, rect.topLeft())
    colours = [image.pixelColor(x, y) for x in range(top_left.x() + 1, top_left.x() + rect.width() - 1)
               for y in range(top_left.y() + 1, top_left.y() + rect.height() - 1)]
    background = max(set(c.rgb() for c in colours), key=[c.rgb() for c in colours].count)
    lightness = QColor(background).lightness()
    text = [c for c in colours if abs(c.lightness() - lightness) > 80]  # glyph pixels, in contrast with the row
    assert len(text) > 20, f"the highlighted row is drawn empty ({len(text)} text pixels)"
    assert QColor(background).name() != QColor(image.pixelColor(top_left.x() + 2, top_left.y() - 4)).name()
    # A long list scrolls inside the screen instead of running off it.
    screen = popup.screen().availableGeometry()
    assert popup.height() <= min(screen.height(), 14 * rect.height())
    combo.hidePopup()
