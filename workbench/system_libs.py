"""The system libraries Qt's X11 (xcb) platform plugin needs, checked before the window opens.

PySide6's wheels bundle Qt but not the X11 client libraries. On a fresh Debian/Ubuntu machine some are
absent (``libxcb-cursor0``, ``libxcb-icccm4``, ``libxcb-keysyms1`` most often) and Qt stops with "Could
not load the Qt platform plugin xcb", naming only one of them. ``python -m workbench.system_libs``
(run by ``make run``) names all of them: as root with apt-get it installs them, otherwise it prints the
one command to run and exits with status 1. It imports nothing from Qt, so it works where Qt cannot.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

__all__ = ["XCB_LIBRARIES", "missing_packages", "install_command", "needs_xcb", "main"]

#: Shared library (soname) the xcb plugin loads -> the Debian/Ubuntu package that provides it.
XCB_LIBRARIES: dict[str, str] = {
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
}


def _loads(soname: str) -> bool:
    """True when the dynamic loader finds ``soname`` (the same search Qt's plugin loader does)."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_packages(loads: Callable[[str], bool] = _loads) -> list[str]:
    """The Debian packages whose library the loader cannot find, in table order, each once."""
    missing: list[str] = []
    for soname, package in XCB_LIBRARIES.items():
        if package not in missing and not loads(soname):
            missing.append(package)
    return missing


def install_command(packages: Sequence[str], as_root: bool) -> list[str]:
    """The apt-get command that installs ``packages`` (prefixed with sudo for a normal user)."""
    return ([] if as_root else ["sudo"]) + ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def needs_xcb(platform: str = sys.platform, environ: dict[str, str] | None = None) -> bool:
    """Whether Qt will use its xcb plugin: on Linux, unless QT_QPA_PLATFORM names another platform."""
    environ = dict(os.environ) if environ is None else environ
    chosen = environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()
    return platform.startswith("linux") and chosen in ("", "xcb")


def main(argv: Sequence[str] | None = None, loads: Callable[[str], bool] = _loads,
         run: Callable[[list[str]], int] = lambda cmd: subprocess.call(cmd),
         is_root: bool | None = None, has_apt: bool | None = None) -> int:
    """Check (and with ``--install`` install) the xcb libraries; 0 when Qt can open a window."""
    parser = argparse.ArgumentParser(prog="python -m workbench.system_libs", description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="install missing libraries when running as root with apt-get")
    args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    if not needs_xcb():
        return 0
    packages = missing_packages(loads)
    if not packages:
        return 0
    is_root = os.geteuid() == 0 if is_root is None else is_root
    has_apt = shutil.which("apt-get") is not None if has_apt is None else has_apt
    names = " ".join(packages)
    if args.install and is_root and has_apt:
        print(f"Installing the system libraries Qt needs to open a window: {names}", flush=True)
        if run(["apt-get", "update"]) == 0 and run(install_command(packages, as_root=True)) == 0:
            still = missing_packages(loads)
            if not still:
                return 0
            print(f"After installing, these libraries are still missing: {' '.join(still)}", file=sys.stderr)
        return 1
    print(explanation(packages, is_root, has_apt), file=sys.stderr)
    return 1


def explanation(packages: Sequence[str], is_root: bool, has_apt: bool) -> str:
    """What is missing and the exact command that installs it."""
    if has_apt:
        how = f"Install them with:\n\n    {' '.join(install_command(packages, as_root=is_root))}\n\nthen run `make run` again."
    else:
        how = "Install them with your system's package manager (the names above are Debian/Ubuntu's), then run again."
    return (f"The workbench window needs system libraries that this machine lacks: {' '.join(packages)}.\n{how}\n"
            "(`make test` does not need them: it runs Qt with QT_QPA_PLATFORM=offscreen.)")


def missing_libraries_message(loads: Callable[[str], bool] | None = None) -> str | None:
    """The explanation when Qt's xcb plugin would fail for want of system libraries (None when it can load).

    ``app.py`` asks before creating its QApplication: Qt itself aborts the process with a message that
    names one library of several.
    """
    if not needs_xcb():
        return None
    packages = missing_packages(loads or _loads)
    if not packages:
        return None
    return explanation(packages, os.geteuid() == 0, shutil.which("apt-get") is not None)


if __name__ == "__main__":
    sys.exit(main())
