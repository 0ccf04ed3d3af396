"""The probe ``make run`` uses for the X11 libraries Qt's xcb plugin needs (a fresh Debian lacks some)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import PySide6
import pytest

from workbench import system_libs
from workbench.system_libs import XCB_LIBRARIES, install_command, main, missing_packages, needs_xcb

ABSENT = {"libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1"}


def test_missing_libraries_map_to_their_debian_packages() -> None:
    assert missing_packages(lambda soname: soname not in ABSENT) == ["libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1"]
    assert missing_packages(lambda soname: True) == []


def test_the_table_covers_every_x11_library_the_bundled_xcb_plugin_links() -> None:
    plugin = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    listing = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, check=True).stdout
    linked = set(re.findall(r"^\s*(lib(?:xcb|xkbcommon|X11)[\w.-]*\.so\.\d+)", listing, flags=re.MULTILINE))
    assert {"libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxcb.so.1"} <= linked
    assert linked - set(XCB_LIBRARIES) == set()


def test_the_real_probe_finds_libc_but_not_an_invented_library() -> None:
    assert system_libs._loads("libc.so.6")
    assert not system_libs._loads("libno-such-library-mmvae.so.0")


def test_offscreen_and_other_platforms_need_no_xcb() -> None:
    assert needs_xcb("linux", {})
    assert needs_xcb("linux", {"QT_QPA_PLATFORM": "xcb"})
    assert not needs_xcb("linux", {"QT_QPA_PLATFORM": "offscreen"})
    assert not needs_xcb("linux", {"QT_QPA_PLATFORM": "wayland"})
    assert not needs_xcb("darwin", {})


def test_a_normal_user_gets_the_exact_command_and_make_stops(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    ran: list[list[str]] = []
    code = main(["--install"], loads=lambda s: s not in ABSENT, run=lambda cmd: ran.append(cmd) or 0,
                is_root=False, has_apt=True)
    assert code == 1 and ran == []
    err = capsys.readouterr().err
    assert "sudo apt-get install -y --no-install-recommends libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1" in err


def test_root_with_apt_installs_them_and_rechecks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    installed: set[str] = set()
    ran: list[list[str]] = []

    def run(cmd: list[str]) -> int:
        ran.append(cmd)
        if cmd[:2] == ["apt-get", "install"]:
            installed.update(ABSENT)
        return 0

    code = main(["--install"], loads=lambda s: s not in ABSENT - installed, run=run, is_root=True, has_apt=True)
    assert code == 0
    assert ran == [["apt-get", "update"], install_command(["libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1"], True)]


def test_a_failed_install_stops_make(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert main(["--install"], loads=lambda s: s not in ABSENT, run=lambda cmd: 100, is_root=True, has_apt=True) == 1


def test_offscreen_runs_skip_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert main([], loads=lambda s: False, run=lambda cmd: 1, is_root=False, has_apt=True) == 0


def test_app_py_explains_missing_libraries_before_qt_aborts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import workbench.main as main_module

    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(system_libs, "_loads", lambda soname: soname not in ABSENT)
    monkeypatch.setattr(system_libs.shutil, "which", lambda name: "/usr/bin/apt-get")

    def no_window() -> None:
        raise AssertionError("the app went on to open its window")

    monkeypatch.setattr(main_module, "_startup_screen", no_window)
    assert main_module.main(["app.py", "--no-demo"]) == 1
    err = capsys.readouterr().err
    assert "libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1" in err and "apt-get install" in err


def test_with_every_library_there_is_nothing_to_explain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    assert system_libs.missing_libraries_message(lambda soname: True) is None
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert system_libs.missing_libraries_message(lambda soname: False) is None
