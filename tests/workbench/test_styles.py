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


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_spin_boxes_draw_both_arrow_buttons(qtbot: Any, themed: Any, theme: str) -> None:
    """A styled spin box frame without button rules drew half of each arrow button (the Train page's 'Preview every')."""
    from PySide6.QtWidgets import QSpinBox, QStyle, QStyleOptionSpinBox

    themed(theme)
    spin = QSpinBox()
    qtbot.addWidget(spin)
    spin.setRange(0, 100)
    spin.setValue(50)  # neither end: both arrows are live
    spin.resize(120, spin.sizeHint().height())
    spin.show()
    QApplication.processEvents()
    image = spin.grab().toImage()
    option = QStyleOptionSpinBox()
    spin.initStyleOption(option)
    background = QColor(image.pixelColor(4, image.height() // 2)).lightness()
    for control in (QStyle.SubControl.SC_SpinBoxUp, QStyle.SubControl.SC_SpinBoxDown):
        rect = spin.style().subControlRect(QStyle.ComplexControl.CC_SpinBox, option, control, spin)
        assert rect.width() >= 12 and rect.height() >= 8, (control, rect)
        assert rect.right() <= spin.width() and rect.left() > spin.width() // 2, (control, rect)
        pixels = [image.pixelColor(x, y) for x in range(rect.left() + 1, rect.right()) for y in range(rect.top() + 1, rect.bottom())]
        glyph = [c for c in pixels if abs(c.lightness() - background) > 70]
        assert len(glyph) >= 6, f"{control.name}: the arrow is not drawn ({len(glyph)} glyph pixels)"
