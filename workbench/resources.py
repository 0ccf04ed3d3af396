"""Files shipped beside the code (styles, presets) and the light/dark palettes.

The ``resources/`` folder sits at the repository root (``make run`` runs from there);
``MMVAE_RESOURCES`` points elsewhere for an installed copy.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from core.presets import Preset, load_presets, resources_dir

__all__ = ["THEMES", "resources_dir", "stylesheet", "apply_theme", "plot_colors", "load_presets", "Preset"]

THEMES = ("light", "dark")


def stylesheet(theme: str) -> str:
    """The QSS of ``theme`` ('light' or 'dark'); empty if the file is missing (Qt's default look)."""
    if theme not in THEMES:
        raise ValueError(f"Unknown theme '{theme}'; choose one of {', '.join(THEMES)}.")
    path = resources_dir() / "styles" / f"{theme}.qss"
    if not path.is_file():
        return ""
    # url(icons/...) in the QSS is relative to the resources folder; Qt resolves it against the cwd.
    return path.read_text(encoding="utf-8").replace("url(icons/", f"url({(resources_dir() / 'icons').as_posix()}/")


_PALETTES: dict[str, dict[QPalette.ColorRole, str]] = {
    "light": {
        QPalette.ColorRole.Window: "#f6f7f9", QPalette.ColorRole.WindowText: "#1f2933",
        QPalette.ColorRole.Base: "#ffffff", QPalette.ColorRole.AlternateBase: "#f7f9fb",
        QPalette.ColorRole.Text: "#1f2933", QPalette.ColorRole.Button: "#ffffff",
        QPalette.ColorRole.ButtonText: "#1f2933", QPalette.ColorRole.Highlight: "#0b8ea6",
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#ffffff",
        QPalette.ColorRole.ToolTipText: "#1f2933", QPalette.ColorRole.PlaceholderText: "#8a949f",
        QPalette.ColorRole.Link: "#0b6e83",
    },
    "dark": {
        QPalette.ColorRole.Window: "#1e2228", QPalette.ColorRole.WindowText: "#e6edf3",
        QPalette.ColorRole.Base: "#1b1f24", QPalette.ColorRole.AlternateBase: "#21262c",
        QPalette.ColorRole.Text: "#e6edf3", QPalette.ColorRole.Button: "#2b3139",
        QPalette.ColorRole.ButtonText: "#e6edf3", QPalette.ColorRole.Highlight: "#1d8ca0",
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#2b3139",
        QPalette.ColorRole.ToolTipText: "#e6edf3", QPalette.ColorRole.PlaceholderText: "#6b737d",
        QPalette.ColorRole.Link: "#5fd0e3",
    },
}


def apply_theme(app: QApplication, theme: str) -> None:
    """Set the application palette and stylesheet; widgets restyle on the palette-change event."""
    qss = stylesheet(theme)
    palette = QPalette()
    for role, colour in _PALETTES[theme].items():
        palette.setColor(role, QColor(colour))
    app.setProperty("mmvae_theme", theme)  # first: widgets read it when the palette-change event arrives
    app.setPalette(palette)
    app.setStyleSheet(qss)


def current_theme() -> str:
    app = QApplication.instance()
    theme = app.property("mmvae_theme") if app is not None else None
    return theme if theme in THEMES else "light"


def plot_colors(theme: str | None = None) -> dict[str, Any]:
    """Background, foreground and grid colours for pyqtgraph plots in ``theme`` (default: the current one)."""
    theme = theme or current_theme()
    if theme == "dark":
        return {"background": "#1b1f24", "foreground": "#c9d1d9", "grid": 60}
    return {"background": "#ffffff", "foreground": "#3b4652", "grid": 40}


