"""What preprocessing did, per file, subject and cohort, JSON round-trippable: everything needed to map
model-space arrays back onto the source files (:mod:`core.data.preprocessing.source_space`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.data.errors import Issue
from core.data.geometry import Geometry
from core.data.preprocessing.config import PreprocessingConfig
from core.data.preprocessing.normalization import NormalizationParams

__all__ = ["ModalityRecord", "SubjectRecord", "CohortRecords"]


@dataclass
class ModalityRecord:
    """What happened to one source file of one subject."""

    modality: str
    path: str
    source_geometry: Geometry
    format: str = "nifti"
    observation_mask_path: str | None = None
    observation: str = "none"  # 'file', 'nonzero', 'fov' or 'none'
    normalization: NormalizationParams | None = None
    resampling: str = "exact"  # 'exact' (voxel copy) or 'linear'
    antialias_sigma: tuple[float, float, float] | None = None
    observed_fraction: float = 1.0
    qform_code: int | None = None
    sform_code: int | None = None
    xyzt_units: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["source_geometry"] = self.source_geometry.to_dict()
        d["normalization"] = self.normalization.to_dict() if self.normalization else None
        d["antialias_sigma"] = list(self.antialias_sigma) if self.antialias_sigma else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModalityRecord:
        d = dict(d)
        d["source_geometry"] = Geometry.from_dict(d["source_geometry"])
        d["normalization"] = NormalizationParams.from_dict(d["normalization"]) if d.get("normalization") else None
        d["antialias_sigma"] = tuple(d["antialias_sigma"]) if d.get("antialias_sigma") else None
        return cls(**d)


@dataclass
class SubjectRecord:
    """Everything needed to map a subject's model-space arrays back onto its source files."""

    subject: str
    reference_modality: str | None
    grid: Geometry | None
    modalities: dict[str, ModalityRecord] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    @property
    def present(self) -> list[str]:
        return list(self.modalities)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "reference_modality": self.reference_modality,
            "grid": self.grid.to_dict() if self.grid else None,
            "modalities": {m: r.to_dict() for m, r in self.modalities.items()},
            "issues": [i.to_dict() for i in self.issues],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubjectRecord:
        return cls(
            subject=d["subject"],
            reference_modality=d.get("reference_modality"),
            grid=Geometry.from_dict(d["grid"]) if d.get("grid") else None,
            modalities={m: ModalityRecord.from_dict(r) for m, r in d.get("modalities", {}).items()},
            issues=[Issue.from_dict(i) for i in d.get("issues", [])],
        )


class CohortRecords(dict):
    """subject id -> :class:`SubjectRecord`, plus the cohort-level facts: ``config``, ``modalities``,
    ``issues`` (cohort-level and per-subject, flattened), ``label_categories``."""

    def __init__(
        self,
        records: Mapping[str, SubjectRecord] | None = None,
        *,
        config: PreprocessingConfig | None = None,
        modalities: Sequence[str] = (),
        issues: Sequence[Issue] = (),
        label_categories: Mapping[str, list[str]] | None = None,
        grid_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(records or {})
        self.config = config or PreprocessingConfig()
        self.modalities = list(modalities)
        self.issues = list(issues)
        self.label_categories = dict(label_categories or {})
        self.grid_shape = tuple(grid_shape) if grid_shape else None

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level != "info"]

    def intensity_reference(self, modality: str) -> NormalizationParams | None:
        """Cohort-typical normalisation of ``modality`` (median shift and scale over subjects that have it),
        to put a synthesized volume of a modality the subject lacks into plausible source units."""
        params = [r.modalities[modality].normalization for r in self.values()
                  if modality in r.modalities and r.modalities[modality].normalization is not None]
        if not params:
            return None
        return NormalizationParams(
            method=params[0].method,
            shift=float(np.median([p.shift for p in params])),
            scale=float(np.median([p.scale for p in params])),
            clip_low=None, clip_high=None, region=params[0].region, outside_region=params[0].outside_region,
            n_region_voxels=0,
        )

    def to_json(self) -> str:
        return json.dumps({
            "config": self.config.model_dump(mode="json"),
            "modalities": self.modalities,
            "issues": [i.to_dict() for i in self.issues],
            "label_categories": self.label_categories,
            "grid_shape": list(self.grid_shape) if self.grid_shape else None,
            "subjects": {s: r.to_dict() for s, r in self.items()},
        })

    @classmethod
    def from_json(cls, text: str) -> CohortRecords:
        d = json.loads(text)
        return cls(
            {s: SubjectRecord.from_dict(r) for s, r in d["subjects"].items()},
            config=PreprocessingConfig.model_validate(d["config"]),
            modalities=d["modalities"],
            issues=[Issue.from_dict(i) for i in d["issues"]],
            label_categories=d.get("label_categories"),
            grid_shape=d.get("grid_shape"),
        )
