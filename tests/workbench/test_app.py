"""``python app.py`` starts, opens the demo cohort and renders every page (run in a subprocess, as a user would)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from workbench.main_window import PAGES

ROOT = Path(__file__).resolve().parents[2]


def test_app_opens_the_demo_and_renders_every_page(tmp_path: Path) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONFAULTHANDLER": "1"}
    shots = tmp_path / "shots"
    result = subprocess.run(
        [sys.executable, "app.py", "--demo-subjects", "16", "--demo-shape", "16", "16", "16", "--settings",
         str(tmp_path / "settings.ini"), "--runs", str(tmp_path / "runs"), "--screenshots", str(shots)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(f"{i + 1}-{n.lower()}.png" for i, n in enumerate(PAGES))
    assert all(p.stat().st_size > 5_000 for p in shots.glob("*.png"))
