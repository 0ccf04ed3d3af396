"""What the pages share: the open cohort, the data settings, the prepared dataset and the run config.

The Data page fills it, the Model page reads the cohort (to check that the model fits it) and writes
the run configuration, the Train page reads both. Changes are announced with signals, so pages never
call each other. Nothing here computes: cohorts, datasets and configs all come from ``core``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from core.config import config_from_dict, config_to_dict
from core.data.cohort import Cohort
from core.data.errors import Issue
from core.data.quality import CohortReport
from core.data.sources import DataConfig, LoadedData
from core.run_config import RunConfig

__all__ = ["CohortInfo", "WorkbenchState", "DEFAULT_DEMO", "source_label"]

#: The demo cohort ``python app.py`` opens: small enough that the first launch is quick.
DEFAULT_DEMO: dict[str, Any] = {"n_subjects": 48, "shape": [32, 32, 32], "seed": 0}


def source_label(source: str) -> str:
    return "demo cohort" if source == "demo" else Path(source).name or source


@dataclass
class CohortInfo:
    """An opened cohort: where it is, its presence matrix (0 missing, 1 present, 2 unreadable) and issues.

    ``cohort``/``report`` exist for folders, BIDS datasets, manifests and the demo; an HDF5 cache is
    opened as ``loaded`` data directly.
    """

    source: str
    root: Path
    subjects: list[str]
    modalities: list[str]
    states: np.ndarray
    issues: list[Issue] = field(default_factory=list)
    tooltips: dict[tuple[str, str], str] = field(default_factory=dict)
    cohort: Cohort | None = None
    report: CohortReport | None = None
    loaded: LoadedData | None = None
    layout: str = ""
    #: File-name patterns -> modality the cohort was opened with (the Data page's mapping dialog).
    modality_patterns: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {m: int((self.states[:, j] == 1).sum()) for j, m in enumerate(self.modalities)}

    def usable(self, modalities: list[str] | None = None) -> np.ndarray:
        cols = [self.modalities.index(m) for m in (modalities or self.modalities) if m in self.modalities]
        return self.states[:, cols] == 1


class WorkbenchState(QObject):
    """Shared state of one workbench window (see module docstring)."""

    cohort_changed = Signal()
    data_config_changed = Signal()
    loaded_changed = Signal()
    run_config_changed = Signal()
    data_config_requested = Signal(dict)  # a loaded run YAML asks the Data page to switch to its data

    def __init__(self, demo_settings: Mapping[str, Any] | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.demo_settings: dict[str, Any] = dict(demo_settings or DEFAULT_DEMO)
        self.info: CohortInfo | None = None
        self.selected_modalities: list[str] | None = None
        self.preprocessing: dict[str, Any] = {}
        self.cache_path: str | None = None
        self.split: dict[str, Any] = {}
        self.loaded: LoadedData | None = None
        self.loaded_key: str | None = None
        self.run_config: RunConfig | None = None  # parsed once, by the Model page
        self.start_blocker: str | None = "Open a cohort on the Data page first."

    # ------------------------------------------------------------------ cohort
    def set_cohort(self, info: CohortInfo | None) -> None:
        self.info = info
        self.selected_modalities = None
        self.loaded, self.loaded_key = None, None
        if info is not None and info.loaded is not None:
            self.loaded, self.loaded_key = info.loaded, self.data_key()
        self.cohort_changed.emit()
        self.data_config_changed.emit()
        self.loaded_changed.emit()

    @property
    def source(self) -> str | None:
        return self.info.source if self.info is not None else None

    def modalities(self) -> list[str]:
        """The modalities training will use (the selection, else every modality of the cohort)."""
        if self.info is None:
            return []
        return list(self.selected_modalities or self.info.modalities)

    # ------------------------------------------------------------------ data settings
    def set_data_settings(self, *, modalities: list[str] | None = None, preprocessing: Mapping[str, Any] | None = None,
                          cache_path: str | None = None, split: Mapping[str, Any] | None = None) -> None:
        self.selected_modalities = modalities if modalities and self.info and modalities != self.info.modalities else None
        self.preprocessing = dict(preprocessing or {})
        self.cache_path = cache_path or None
        self.split = dict(split or {})
        self.data_config_changed.emit()

    def data_config_dict(self) -> dict[str, Any] | None:
        """The ``data`` section of a run YAML for the current settings (None without a cohort)."""
        if self.info is None:
            return None
        values: dict[str, Any] = {"source": self.info.source}
        if self.info.source == "demo":
            values["demo"] = dict(self.demo_settings)
        if self.selected_modalities:
            values["modalities"] = list(self.selected_modalities)
        if self.info.modality_patterns:
            values["modality_patterns"] = dict(self.info.modality_patterns)
        if self.preprocessing:
            values["preprocessing"] = dict(self.preprocessing)
        if self.cache_path:
            values["cache"] = self.cache_path
        if self.split:
            values["split"] = dict(self.split)
        return config_to_dict(config_from_dict(DataConfig, values))

    def data_config(self) -> DataConfig | None:
        values = self.data_config_dict()
        return config_from_dict(DataConfig, values) if values is not None else None

    def data_key(self, values: Mapping[str, Any] | None = None) -> str:
        values = values if values is not None else self.data_config_dict()
        if values is None:
            return ""
        return json.dumps(config_to_dict(config_from_dict(DataConfig, dict(values))), sort_keys=True)

    # ------------------------------------------------------------------ prepared data
    def set_loaded(self, loaded: LoadedData | None, key: str | None = None) -> None:
        self.loaded = loaded
        self.loaded_key = key if key is not None else (self.data_key() if loaded is not None else None)
        self.loaded_changed.emit()

    def loaded_for(self, data_values: Mapping[str, Any] | None) -> LoadedData | None:
        """The prepared dataset if it was built from exactly ``data_values`` (a run's data section)."""
        if self.loaded is None or data_values is None:
            return None
        try:
            return self.loaded if self.data_key(data_values) == self.loaded_key else None
        except ValueError:
            return None

    def is_loaded_current(self) -> bool:
        return self.loaded is not None and self.loaded_key == self.data_key()

    def incomplete_summary(self) -> tuple[int, int, dict[str, int]]:
        """(subjects lacking a modality, subjects, missing count per modality) for the selected modalities."""
        modalities = self.modalities()
        if self.is_loaded_current() and self.loaded is not None:
            ds = self.loaded.dataset
            masks = np.stack([ds.masks[m].numpy() for m in modalities if m in ds.masks], axis=1)
        elif self.info is not None:
            masks = self.info.usable(modalities)
            masks = masks[masks.any(axis=1)]  # subjects with none of the modalities are dropped at load
        else:
            return 0, 0, {}
        missing = {m: int((~masks[:, j]).sum()) for j, m in enumerate(modalities)}
        return int((~masks.all(axis=1)).sum()), int(masks.shape[0]), missing

    # ------------------------------------------------------------------ run configuration
    def set_run_config(self, config: RunConfig | None, blocker: str | None) -> None:
        self.run_config, self.start_blocker = config, blocker
        self.run_config_changed.emit()
