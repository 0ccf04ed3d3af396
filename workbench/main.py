"""Start the workbench: ``python app.py [--demo-subjects N] [--settings FILE] [--runs DIR]``.

``main`` creates the application and at once shows a start-up screen (importing PyTorch and building
the pages takes seconds on a cold disk), routes uncaught exceptions (UI thread and worker threads) to an
in-window message, applies the saved theme, opens the window and reopens, in the background, the last
cohort and run (a new user gets the bundled demo cohort; ``--no-demo`` opens nothing new).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PySide6.QtWidgets import QSplashScreen

__all__ = ["main", "build_parser", "PYQTGRAPH_OPTIONS"]

#: pyqtgraph's global options; set once, in ``app.py`` and in the test fixtures, never in a widget.
PYQTGRAPH_OPTIONS = {"imageAxisOrder": "col-major", "antialias": True, "background": "w", "foreground": "k",
                     "exitCleanup": True}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description="The mmvae workbench (PySide6 GUI).")
    parser.add_argument("--no-demo", action="store_true",
                        help="do not open the demo cohort when there is no last cohort to reopen")
    parser.add_argument("--demo-subjects", type=int, default=48, help="subjects in the demo cohort (default 48)")
    parser.add_argument("--demo-shape", type=int, nargs=3, default=[32, 32, 32], metavar=("X", "Y", "Z"),
                        help="volume shape of the demo cohort (default 32 32 32)")
    parser.add_argument("--settings", help="keep settings in this INI file instead of the user's settings")
    parser.add_argument("--runs", help="folder for run folders (remembered)")
    parser.add_argument("--screenshots", metavar="DIR", help="save a screenshot of each page to DIR and quit")
    return parser


def _log_file() -> Path:
    from PySide6.QtCore import QStandardPaths

    folder = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppLocalDataLocation) or Path.home())
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "workbench.log"


def _startup_screen() -> QSplashScreen:
    """A window on screen within a fraction of a second, saying what the wait is for."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QFont, QPainter, QPixmap
    from PySide6.QtWidgets import QApplication, QSplashScreen

    pixmap = QPixmap(460, 120)
    pixmap.fill(QColor("#1f4e79"))
    painter = QPainter(pixmap)
    painter.setPen(QColor("white"))
    font = QFont(painter.font())
    font.setPointSize(16)
    font.setBold(True)
    painter.setFont(font)
    painter.drawText(pixmap.rect().adjusted(20, 18, -20, -60), Qt.AlignmentFlag.AlignLeft, "mmvae workbench")
    painter.end()
    splash = QSplashScreen(pixmap)
    splash.showMessage("Starting: loading PyTorch and the pages…", Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom,
                       QColor("white"))
    splash.show()
    QApplication.processEvents()
    return splash


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv if argv is not None else sys.argv)[1:])
    from workbench.system_libs import missing_libraries_message

    if (problem := missing_libraries_message()) is not None:
        print(problem, file=sys.stderr)
        return 1
    from PySide6.QtWidgets import QApplication

    from workbench.settings import APPLICATION, ORGANIZATION, Settings

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "mmvae-workbench"])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("mmvae workbench")
    splash = _startup_screen()
    try:
        logging.basicConfig(filename=_log_file(), level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    except OSError:
        logging.basicConfig(level=logging.WARNING)
    # torch and core: seconds on a cold disk, behind the start-up screen
    from workbench.main_window import MainWindow
    from workbench.messages import install_excepthooks
    from workbench.workers import UiThreadGarbageCollector

    settings = Settings.at(args.settings) if args.settings else Settings()
    demo = {"n_subjects": args.demo_subjects, "shape": list(args.demo_shape), "seed": 0}
    window = MainWindow(settings, demo_settings=demo, runs_root=args.runs)
    uninstall = install_excepthooks(window.error_reporter)
    collector = UiThreadGarbageCollector(app)
    collector.start()
    window.show()
    splash.finish(window)
    if window.state.info is None:
        window.restore_session(open_demo=not args.no_demo)
    if args.screenshots:
        from workbench.screenshots import take_screenshots

        take_screenshots(window, Path(args.screenshots))
    try:
        return app.exec()
    finally:
        collector.stop()
        uninstall()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
