"""House rules that keep the architecture honest."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import core

CORE_MODULES = sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core.") if not m.name.endswith("__main__"))


def test_core_never_imports_qt_or_the_workbench():
    code = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'pyqtgraph', 'workbench', 'shiboken6'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"core imported {result.stdout.strip()}"


def test_no_pickle_loading_in_the_product():
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("core", "workbench"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "pickle.load" in text or "torch.load(" in text or "allow_pickle=True" in text:
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
