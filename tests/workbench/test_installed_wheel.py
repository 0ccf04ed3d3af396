"""The package as a user installs it: a wheel built from the tree, installed into a fresh virtual environment,
starts the workbench offscreen with its styles, icons and presets read from the installed copy.

Nothing is downloaded: the wheel is built without build isolation, installed without dependencies, and the fresh
environment sees this environment's packages (torch, PySide6) through a path file, not the repository itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

START = r"""
import os, sys
from pathlib import Path
venv = Path(sys.argv[1]).resolve()
import core, workbench
from core.presets import load_presets, resources_dir
for module in (core, workbench):
    assert Path(module.__file__).resolve().is_relative_to(venv), f"{module.__name__} from {module.__file__}"
assert resources_dir().resolve().is_relative_to(venv), resources_dir()
from core.data.demo import template_path
assert all(template_path(k) is not None and template_path(k).resolve().is_relative_to(venv) for k in ("t1", "gm", "wm"))
from PySide6.QtWidgets import QApplication
app = QApplication(["mmvae-workbench"])
from workbench.main_window import MainWindow
from workbench.resources import apply_theme, stylesheet
from workbench.settings import Settings
apply_theme(app, "light")
assert "QPushButton" in stylesheet("light") and "url(" in stylesheet("dark")
window = MainWindow(Settings.at(venv.parent / "settings.ini"), runs_root=venv.parent / "runs")
window.confirm_close = False
window.show()
app.processEvents()
presets = [p.name for p in window.model_page.presets()]
assert presets == [p.name for p in load_presets(window.model_page.model_name())] and presets, presets
window.close()
print("started", window.model_page.model_name(), presets)
"""


def _copy_source(target: Path) -> None:
    """What the wheel is built from (a copy: building in place would leave build/ in the shared tree)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("core", "workbench", "resources"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)


def test_the_installed_wheel_ships_its_resources_and_starts(tmp_path: Path) -> None:
    source, dist, venv = tmp_path / "source", tmp_path / "dist", tmp_path / "venv"
    _copy_source(source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("mmvae_workbench-*.whl"))
    shipped = zipfile.ZipFile(wheel).namelist()
    for name in ("resources/styles/light.qss", "resources/styles/dark.qss", "resources/presets/MVAE.yaml",
                 "resources/icons/check-light.svg", "resources/templates/icbm152_2009a/NOTICE.txt",
                 *(f"resources/templates/icbm152_2009a/mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
                   for kind in ("t1", "gm", "wm"))):
        assert name in shipped, name

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_this_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, PySide6, …
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MMVAE_RESOURCES")}
    env.update(QT_QPA_PLATFORM="offscreen", MMVAE_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([str(venv / "bin" / "python"), "-c", START, str(venv)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("started"), result.stdout
    mmvae = subprocess.run([str(venv / "bin" / "mmvae"), "--help"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert mmvae.returncode == 0 and "train" in mmvae.stdout, mmvae.stderr[-2000:]
