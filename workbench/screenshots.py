"""``python app.py --screenshots DIR``: save a PNG of every page once the demo cohort is open, then quit
(for documentation and for checking the layout on a machine without a display)."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from workbench.main_window import PAGES, MainWindow

__all__ = ["take_screenshots"]


def take_screenshots(window: MainWindow, folder: Path, timeout_ms: int = 120_000) -> None:
    """Once the cohort is open, grab each page into ``folder/<n>-<page>.png`` and quit the application
    (exit status 1 if the cohort could not be opened)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = {"flag": False}

    def grab() -> None:
        if done["flag"]:
            return
        done["flag"] = True
        for index, name in enumerate(PAGES):
            window.go_to_page(index)
            QApplication.processEvents()  # one-shot, at the end of a scripted run: lets the page lay out
            window.grab().save(str(folder / f"{index + 1}-{name.lower()}.png"))
        ok = window.state.info is not None
        if not ok:
            bar = window.data_page.messages.bar("open")
            print("The cohort did not open:", bar.message.details if bar else "timeout", file=sys.stderr)
        window.close()
        QApplication.exit(0 if ok else 1)

    window.state.cohort_changed.connect(lambda: QTimer.singleShot(500, grab))
    window.data_page.open_runner.failed.connect(lambda error: QTimer.singleShot(500, grab))
    QTimer.singleShot(timeout_ms, grab)
