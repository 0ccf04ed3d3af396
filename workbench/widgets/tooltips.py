"""Tooltips that stay on the screen.

Qt places a tooltip beside the cursor and wraps one wider than the whole screen, but a tall one (a list of
lines) or one shown near a screen edge by an item view can still run off it. One application-wide event
filter sees every tooltip as it is shown, whatever set it (a widget, an item view's model, a plot), and fits
it inside the available geometry of its screen: at most a readable width, wrapped, then moved in.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QSize
from PySide6.QtWidgets import QApplication, QLabel

__all__ = ["install_tooltip_fitter"]

_NAME = "mmvae-tooltip-fitter"
#: The widest a tooltip gets, as a share of the screen (a line much longer than this is hard to read).
_MAX_SHARE = 0.6


class _TooltipFitter(QObject):
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Show and isinstance(watched, QLabel) and \
                watched.metaObject().className() == "QTipLabel":
            self.fit(watched)
        return False

    @staticmethod
    def fit(tip: QLabel) -> None:
        """Wrap ``tip`` to a readable width when it is wider, then move it (cut when still larger) into its screen."""
        screen = tip.screen()
        if screen is None:
            return
        area = screen.availableGeometry()
        geometry = tip.geometry()
        limit = int(area.width() * _MAX_SHARE)
        if geometry.width() > limit:
            tip.setWordWrap(True)
            geometry.setSize(QSize(limit, tip.heightForWidth(limit)))
        # The window's own placement rule, imported late: the window imports this module.
        from workbench.main_window import fit_inside

        fitted = fit_inside(geometry, area, QSize(0, 0))
        if fitted != tip.geometry():
            tip.setGeometry(fitted)


def install_tooltip_fitter(app: QApplication) -> None:
    """Fit every tooltip of ``app`` inside its screen (idempotent)."""
    if app.findChild(_TooltipFitter, _NAME) is None:
        fitter = _TooltipFitter(app)
        fitter.setObjectName(_NAME)
        app.installEventFilter(fitter)
