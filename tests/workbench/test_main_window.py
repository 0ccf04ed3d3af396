"""The main window: pages, settings isolation and persistence, theme, About, shortcuts, error hooks."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from workbench.main_window import PAGES
from workbench.messages import install_excepthooks
from workbench.pages.explore import ExplorePage
from workbench.pages.synthesize import SynthesizePage
from workbench.settings import Settings


def test_settings_are_isolated(tmp_path: Path) -> None:
    assert QSettings().fileName().startswith(str(tmp_path))
    settings = Settings()
    assert settings.file_name().startswith(str(tmp_path))
    for source in ["a", "b", "a", *[str(i) for i in range(12)]]:
        settings.add_recent_cohort(source)
    recent = settings.recent_cohorts()
    assert recent[0] == "11" and len(recent) == 10 and recent.count("a") <= 1


def test_window_pages_theme_and_persistence(make_window: Any, tmp_path: Path) -> None:
    settings = Settings.at(tmp_path / "persist.ini")
    window = make_window(settings=settings)
    assert [window.nav.item(i).text().split()[-1] for i in range(window.nav.count())] == list(PAGES)
    window.page_actions[2].trigger()
    assert window.current_page() is window.train_page
    assert isinstance(window.explore_page, ExplorePage) and isinstance(window.synthesize_page, SynthesizePage)
    window.theme_actions["dark"].trigger()
    assert settings.theme() == "dark"
    assert QApplication.instance().palette().base().color().lightness() < 128
    window.resize(1111, 777)
    window.close()
    assert settings.window_geometry() is not None
    again = make_window(settings=settings)
    assert again.current_page() is again.train_page
    assert again.theme_actions["dark"].isChecked()
    again.set_theme("light")


def test_about_box_and_shortcuts(make_window: Any) -> None:
    window = make_window()
    text = window.about_text()
    for name in ("PySide6", "torch", "pyqtgraph", "Qt", "Compute device"):
        assert name in text
    shortcuts = window.shortcuts_text()
    assert "Ctrl+Return" in shortcuts and "Ctrl+P" in shortcuts and "F5" in shortcuts
    assert window.device_status.text().startswith("Device:")


def test_uncaught_errors_become_messages_and_the_app_keeps_running(make_window: Any, qtbot: Any) -> None:
    window = make_window()
    before = (sys.excepthook, threading.excepthook)
    uninstall = install_excepthooks(window.error_reporter)
    try:
        try:
            raise ValueError("broken slot")
        except ValueError:
            sys.excepthook(*sys.exc_info())
        qtbot.waitUntil(lambda: window.messages.has("uncaught"), timeout=2000)
        bar = window.messages.bar("uncaught")
        assert "broken slot" in bar.message.text and "Traceback" in bar.message.details
        assert bar.details is not None and not bar.details.isVisibleTo(bar)
        bar.details_button.click()
        assert bar.details.isVisibleTo(bar)
        # An exception in a plain Python thread reaches the window too (queued to the UI thread).
        with qtbot.waitSignal(window.error_reporter.error, timeout=5000) as blocker:
            thread = threading.Thread(target=lambda: 1 / 0, name="helper")
            thread.start()
            thread.join()
        assert "ZeroDivisionError" in blocker.args[0] and "helper" in blocker.args[0]
    finally:
        uninstall()
    assert (sys.excepthook, threading.excepthook) == before
    window.page_actions[1].trigger()  # still alive and responsive
    assert window.current_page() is window.model_page


def test_a_gpu_torch_cannot_use_is_reported(make_window: Any, monkeypatch: Any) -> None:
    import torch

    import workbench.environment as environment

    monkeypatch.setattr(environment, "_nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = environment.device_info()
    assert info.name == "CPU" and "NVIDIA GPU is present" in info.warning
    window = make_window()
    assert window.messages.has("device")
    assert window.device_status.property("level") == "warning"
    assert "Warning" in window.about_text() and "NVIDIA GPU is present" in window.about_text()


def test_a_new_user_gets_the_demo_and_a_returning_one_their_last_cohort(make_window: Any, qtbot: Any, tmp_path: Path,
                                                                        manifest_cohort: Path) -> None:
    first = make_window()
    assert first.restore_session() == "demo"
    qtbot.waitUntil(lambda: first.state.info is not None, timeout=60_000)
    assert first.state.source == "demo"
    settings = Settings.at(tmp_path / "returning.ini")
    settings.add_recent_cohort("demo")
    settings.add_recent_cohort(str(manifest_cohort))
    again = make_window(settings=settings)
    assert again.restore_session() == str(manifest_cohort)
    qtbot.waitUntil(lambda: again.state.info is not None, timeout=30_000)
    assert again.state.source == str(manifest_cohort)
    gone = Settings.at(tmp_path / "gone.ini")
    gone.add_recent_cohort(str(tmp_path / "deleted-cohort"))
    assert make_window(settings=gone).restore_session(open_demo=False) is None


def test_the_last_run_on_the_last_cohort_is_reopened_and_selected(make_window: Any, qtbot: Any, tmp_path: Path,
                                                                  manifest_cohort: Path) -> None:
    import json

    import yaml

    run = tmp_path / "runs" / "mvae-last"
    run.mkdir(parents=True)
    config = {"name": "mvae-last", "data": {"source": str(manifest_cohort)}, "model": {"name": "MVAE", "latent_dim": 5},
              "training": {"num_epochs": 2}}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (run / "status.json").write_text(json.dumps({"status": "stopped", "epochs_completed": 1, "num_epochs": 2,
                                                 "updated": "2024-01-01T00:00:00"}), encoding="utf-8")
    settings = Settings.at(tmp_path / "run.ini")
    settings.add_recent_cohort(str(manifest_cohort))
    settings.add_recent_run(str(run / "config.yaml"))
    window = make_window(settings=settings)
    assert window.restore_session() == str(run)
    qtbot.waitUntil(lambda: window.state.info is not None, timeout=30_000)
    assert window.state.source == str(manifest_cohort)
    assert window.model_page.model_name() == "MVAE" and window.model_page.name_edit.text() == "mvae-last"
    assert window.train_page.selected_run() is not None and window.train_page.selected_run().path == run


def test_a_long_cohort_path_does_not_widen_the_window(make_window: Any, qtbot: Any) -> None:
    window = make_window()
    share = "//hospital-share/neuroradiology/research/2024/glioma-cohort-with-a-very-long-name/" * 4
    window.data_page.source_label.setText(f"cohort · BIDS · {share}")
    window.data_page.set_recent([share, "demo"])
    window.train_page.run_label.setText(f"MVAE · {share}")
    train = window.train_page
    train.stage_label.setText("Cancelling: the run ends after the current step; then its folder is deleted… " * 3)
    train.loss_label.setText("Epoch 5: train loss 1.871e+05, validation loss 1.8251e+05 (−1.8 % since epoch 1)  ★ "
                             "best so far (5.9 s)" * 2)
    train.loss_plot.add_run("long", share, [{"epoch": 1, "train/loss": 2.0, "val/loss": 3.0}])
    train.loss_plot.add_run("other", "other", [{"epoch": 1, "train/loss": 2.0, "val/loss": 3.0}])
    train.loss_plot.flush()
    QApplication.processEvents()
    for index, page in enumerate(window.pages):
        window.go_to_page(index)
        QApplication.processEvents()
        assert page.minimumSizeHint().width() <= 1280 - window.nav.width(), type(page).__name__
        assert window.minimumSizeHint().width() <= 1280, type(page).__name__
    window.resize(1280, 800)
    QApplication.processEvents()
    assert window.width() == 1280
    label = window.data_page.source_label
    assert label.text().endswith(share) and label.toolTip() == label.text()
    assert "…" in label.elided_text() and len(label.elided_text()) < len(label.text())


def test_the_window_opens_inside_the_available_screen() -> None:
    from PySide6.QtCore import QRect

    from workbench.main_window import fit_inside

    laptop = QRect(0, 0, 1280, 800 - 32)  # a 1280x800 screen with a panel
    for saved in (QRect(400, 300, 1600, 1000), QRect(-2400, 100, 1360, 860), QRect(3000, 2000, 900, 700)):
        placed = fit_inside(saved, laptop)
        assert laptop.contains(placed), (saved, placed)
    small = QRect(100, 50, 900, 600)
    assert fit_inside(small, laptop) == small


def test_message_icons_are_drawn(make_window: Any) -> None:
    window = make_window()
    for level in ("error", "warning", "info"):
        bar = window.messages.show_message(f"icon-{level}", level, "Something to read.")
        pixmap = bar.icon.pixmap()
        assert not pixmap.isNull() and pixmap.width() >= 16
        image = pixmap.toImage()
        opaque = sum(image.pixelColor(x, y).alpha() > 0 for x in range(image.width()) for y in range(image.height()))
        assert opaque > image.width() * image.height() // 4, level


def test_tooltips_stay_inside_the_screen(make_window: Any) -> None:
    """A tall tooltip (a list of lines) or a long one shown near the screen's corner is fitted inside the screen."""
    from PySide6.QtCore import QPoint
    from PySide6.QtWidgets import QLabel, QToolTip

    window = make_window()
    QApplication.processEvents()  # the window's own show and activation events first: they hide a tooltip
    area = window.screen().availableGeometry()
    corner = QPoint(area.right() - 8, area.bottom() - 8)
    long_line = "Leave-one-out over every held-out subject that has the modality, compared with the mean image " * 4
    for text in ("\n".join(f"sub-{i:03d}: lacks US (validation)" for i in range(80)), long_line):
        QToolTip.showText(corner, text, window.nav)  # shown (and fitted) at once
        tips = [w for w in QApplication.allWidgets()
                if isinstance(w, QLabel) and w.metaObject().className() == "QTipLabel" and w.isVisible()]
        assert len(tips) == 1
        assert area.contains(tips[0].geometry()), (tips[0].geometry(), area)
        assert tips[0].width() <= 0.6 * area.width() + 1
        QToolTip.hideText()
        QApplication.processEvents()
