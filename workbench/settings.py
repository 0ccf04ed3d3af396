"""Persistent user settings (QSettings): recent cohorts and runs, window layout, theme, folders.

Only plain values are stored (strings, numbers, byte arrays): never pickled objects. Tests pass their
own :class:`QSettings` (an INI file in a temporary folder), so they never touch the user's settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths

__all__ = ["Settings", "MAX_RECENT"]

MAX_RECENT = 10
ORGANIZATION = "mmvae"
APPLICATION = "mmvae-workbench"


class Settings:
    """Typed access to the workbench's QSettings.

    Args:
        qsettings: the store to use; default the user's settings for mmvae-workbench.
    """

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self._s = qsettings if qsettings is not None else QSettings(ORGANIZATION, APPLICATION)

    @classmethod
    def at(cls, path: str | Path) -> Settings:
        """Settings kept in the INI file ``path`` (used by tests and ``--settings``)."""
        return cls(QSettings(str(path), QSettings.Format.IniFormat))

    @property
    def qsettings(self) -> QSettings:
        return self._s

    def file_name(self) -> str:
        return self._s.fileName()

    def sync(self) -> None:
        self._s.sync()

    # ------------------------------------------------------------------ generic helpers
    def _get_list(self, key: str) -> list[str]:
        value = self._s.value(key, [])
        if value is None or value == "":
            return []
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value]

    def _push_recent(self, key: str, item: str) -> list[str]:
        items = [item] + [x for x in self._get_list(key) if x != item]
        items = items[:MAX_RECENT]
        self._s.setValue(key, items)
        return items

    def _get_bool(self, key: str, default: bool) -> bool:
        value = self._s.value(key, default)
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes")
        return bool(value)

    def _get_int(self, key: str, default: int) -> int:
        try:
            return int(self._s.value(key, default))
        except (TypeError, ValueError):
            return default

    # ------------------------------------------------------------------ recent items
    def recent_cohorts(self) -> list[str]:
        """Cohort sources opened lately, newest first ('demo' for the bundled demo)."""
        return self._get_list("recent/cohorts")

    def add_recent_cohort(self, source: str) -> list[str]:
        return self._push_recent("recent/cohorts", str(source))

    def recent_runs(self) -> list[str]:
        """Run folders and run YAML files used lately, newest first."""
        return self._get_list("recent/runs")

    def add_recent_run(self, path: str | Path) -> list[str]:
        return self._push_recent("recent/runs", str(path))

    def clear_recent(self) -> None:
        self._s.remove("recent")

    # ------------------------------------------------------------------ window and look
    def window_geometry(self) -> QByteArray | None:
        value = self._s.value("window/geometry")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def window_state(self) -> QByteArray | None:
        value = self._s.value("window/state")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self._s.setValue("window/geometry", geometry)
        self._s.setValue("window/state", state)

    def theme(self) -> str:
        value = str(self._s.value("ui/theme", "light"))
        return value if value in ("light", "dark") else "light"

    def set_theme(self, theme: str) -> None:
        self._s.setValue("ui/theme", theme)

    def last_page(self) -> int:
        return self._get_int("ui/page", 0)

    def set_last_page(self, index: int) -> None:
        self._s.setValue("ui/page", int(index))

    # ------------------------------------------------------------------ folders and training options
    def runs_root(self) -> Path:
        """Where new run folders go (default: <Documents>/mmvae-workbench/runs)."""
        value = self._s.value("paths/runs_root")
        if value:
            return Path(str(value))
        docs = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation) or str(Path.home())
        return Path(docs) / "mmvae-workbench" / "runs"

    def set_runs_root(self, path: str | Path) -> None:
        self._s.setValue("paths/runs_root", str(path))

    def last_dir(self) -> str:
        return str(self._s.value("paths/last_dir", str(Path.home())))

    def set_last_dir(self, path: str | Path) -> None:
        path = Path(path)
        self._s.setValue("paths/last_dir", str(path if path.is_dir() else path.parent))

    def modality_patterns(self, source: str) -> dict[str, str]:
        """The file-name patterns a cohort folder was last opened with (reapplied when it is reopened)."""
        try:
            stored = json.loads(str(self._s.value("cohort/modality_patterns", "{}")))
        except ValueError:
            return {}
        patterns = stored.get(str(source), {}) if isinstance(stored, dict) else {}
        return {str(k): str(v) for k, v in patterns.items()} if isinstance(patterns, dict) else {}

    def set_modality_patterns(self, source: str, patterns: dict[str, str]) -> None:
        try:
            stored = json.loads(str(self._s.value("cohort/modality_patterns", "{}")))
        except ValueError:
            stored = {}
        stored = stored if isinstance(stored, dict) else {}
        if patterns:
            stored[str(source)] = dict(patterns)
        else:
            stored.pop(str(source), None)
        self._s.setValue("cohort/modality_patterns", json.dumps(stored))

    def preview_every(self) -> int:
        """Epochs between two cross-modal synthesis previews during training."""
        return max(1, self._get_int("train/preview_every", 1))

    def set_preview_every(self, epochs: int) -> None:
        self._s.setValue("train/preview_every", int(epochs))

    def smoothing(self) -> float:
        try:
            return min(0.99, max(0.0, float(self._s.value("plot/smoothing", 0.0))))
        except (TypeError, ValueError):
            return 0.0

    def set_smoothing(self, value: float) -> None:
        self._s.setValue("plot/smoothing", float(value))

    def log_y(self) -> bool:
        return self._get_bool("plot/log_y", True)

    def set_log_y(self, value: bool) -> None:
        self._s.setValue("plot/log_y", bool(value))

    def value(self, key: str, default: Any = None) -> Any:
        return self._s.value(key, default)

    def set_value(self, key: str, value: Any) -> None:
        self._s.setValue(key, value)
