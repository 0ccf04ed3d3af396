"""Where a run's data comes from: the bundled demo cohort or the user's files, behind one config.

Both go through the same file pipeline (discovery, preprocessing, optional HDF5 cache), so a model
trained on the demo cohort and ``mmvae impute`` on the demo folder see identically prepared data.
The demo cohort is generated once into the cache folder (``$MMVAE_CACHE_DIR``, default
``~/.cache/mmvae-workbench``) and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_serializer, field_validator, model_validator
from pydantic.dataclasses import dataclass as config_dataclass

from core.config import CONFIG_DICT, advanced, config_to_dict
from core.data.dataset import IncompleteDataset, MultimodalBaseDataset
from core.data.demo import DemoSpec, spec_from_dict, spec_to_dict
from core.data.preprocessing.config import PreprocessingConfig
from core.data.preprocessing.records import CohortRecords
from core.progress import CancelFn, ProgressFn

__all__ = ["SplitConfig", "DataConfig", "LoadedData", "load_data", "cache_root", "ensure_demo_cohort", "resolved_preprocessing"]


@config_dataclass(config=CONFIG_DICT)
class SplitConfig:
    """Subject-level split into train / validation / test."""

    fractions: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="Train, validation, test fractions.")
    seed: int = Field(0, ge=0, description="Seed of the split.")

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError(f"split fractions {self.fractions} must be non-negative and sum to 1.")
        if self.fractions[0] <= 0:
            raise ValueError("The training fraction must be positive.")
        return self


@config_dataclass(config=CONFIG_DICT)
class DataConfig:
    """What to train on and how to prepare it."""

    source: str = Field("demo", description="'demo', or a cohort folder, BIDS dataset, manifest CSV or HDF5 cache.")
    demo: DemoSpec = Field(default_factory=DemoSpec, **advanced("Demo cohort settings (core.data.demo.DemoSpec)."))
    modalities: list[str] | None = Field(None, description="Train on these modalities only (default: all).")
    modality_patterns: dict[str, str] = Field(default_factory=dict, **advanced(
        "File-name patterns naming the modality of files the built-in rules do not recognise, tried first: "
        "{'*_MPRAGE.nii.gz': 'T1', '*_sector*': 'US:mask'} (':mask' marks an observation mask, '' skips the file)."))
    preprocessing: PreprocessingConfig = Field(
        default_factory=PreprocessingConfig, **advanced("Preprocessing settings (core.data.preprocessing.config.PreprocessingConfig).")
    )
    cache: str | None = Field(None, **advanced("HDF5 cache file to build or reuse (default: keep the cohort in memory)."))
    split: SplitConfig = Field(default_factory=SplitConfig)

    @field_validator("demo", mode="before")
    @classmethod
    def _demo_from_settings(cls, value: Any) -> DemoSpec:
        """YAML settings (``{n_subjects: 48}``, ``missing: mnar_label``) become the typed spec."""
        if isinstance(value, DemoSpec):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"demo must be a mapping of settings, got {type(value).__name__}")
        return spec_from_dict(value)

    @field_serializer("demo")
    def _demo_settings(self, spec: DemoSpec) -> dict[str, Any]:
        return spec_to_dict(spec)

    @field_serializer("preprocessing")
    def _given_preprocessing(self, config: PreprocessingConfig) -> dict[str, Any]:
        """Only the settings given: the run YAML stays what the user wrote (the defaults apply on load)."""
        return config.model_dump(mode="json", exclude_unset=True)

    def for_another_cohort(self, source: str | os.PathLike, modalities: Sequence[str] | None = None) -> DataConfig:
        """Another cohort prepared the way this config prepares its own (a trained run's preprocessing pins the
        grid, the modalities and the normalisation), without a cache. ``modalities`` replaces the preprocessed
        modalities: imputation keeps every modality of the model, even one the new cohort lacks entirely."""
        preprocessing = self.preprocessing
        if modalities is not None:
            preprocessing = preprocessing.model_copy(update={"modalities": list(modalities)})
        return dataclasses.replace(self, source=str(source), demo=DemoSpec(), cache=None, preprocessing=preprocessing)

    def preprocessing_to_apply(self) -> PreprocessingConfig:
        """The preprocessing, restricted to ``modalities`` when they are chosen and it names none itself."""
        if not self.modalities or self.preprocessing.modalities is not None:
            return self.preprocessing
        given = self.preprocessing.model_dump(exclude_unset=True)
        return PreprocessingConfig.model_validate({**given, "modalities": list(self.modalities)})


@dataclass
class LoadedData:
    """A dataset ready for training, with what is needed to export back to the source files."""

    dataset: MultimodalBaseDataset
    source: Path
    records: CohortRecords = field(default_factory=CohortRecords)


def cache_root() -> Path:
    return Path(os.environ.get("MMVAE_CACHE_DIR") or Path.home() / ".cache" / "mmvae-workbench")


def ensure_demo_cohort(settings: DemoSpec | dict[str, Any], progress: ProgressFn | None = None,
                       cancel: CancelFn | None = None) -> Path:
    """Generate the demo cohort described by ``settings`` into the cache (once); returns its folder."""
    from core.data.demo import write_demo_cohort

    spec = settings if isinstance(settings, DemoSpec) else spec_from_dict(settings)
    key = hashlib.sha1(json.dumps(spec_to_dict(spec), sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root() / "demo" / key
    if not (folder / "manifest.csv").is_file():
        write_demo_cohort(folder, spec, progress=progress, cancel=cancel)
    return folder


def load_data(config: DataConfig, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> LoadedData:
    """Load (and preprocess) the cohort a run config points to."""
    from core.data.loading import load_cohort_dataset

    source = ensure_demo_cohort(config.demo, progress, cancel) if config.source == "demo" else Path(config.source).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"Data source {source} does not exist; point data.source at a cohort folder, manifest or cache.")
    dataset, records = load_cohort_dataset(
        source, preprocessing=config.preprocessing_to_apply(), cache_path=config.cache, progress=progress, cancel=cancel,
        modality_patterns=config.modality_patterns or None,
    )
    return LoadedData(dataset=_as_images_if_single_slice(dataset), source=source, records=records)


def _as_images_if_single_slice(dataset: MultimodalBaseDataset) -> MultimodalBaseDataset:
    """A cohort of single-slice files (X, Y, 1) becomes 2D images (C, X, Y) for the 2D networks.

    Exports put the slice axis back (:func:`core.workflows.impute.impute_run`), so files keep their geometry.
    """
    if not isinstance(dataset, MultimodalBaseDataset):
        return dataset
    dims = dataset.input_dims
    if not all(len(shape) == 4 and shape[-1] == 1 for shape in dims.values()):
        return dataset
    return IncompleteDataset(
        {m: x.squeeze(-1) for m, x in dataset.data.items()},
        dataset.masks,
        labels=dataset.labels,
        ids=dataset.ids,
        observation_masks={m: v.squeeze(-1) for m, v in dataset.observation_masks.items()},
        allow_unobserved_modalities=True,
    )


def resolved_preprocessing(loaded: LoadedData) -> dict[str, Any]:
    """The preprocessing actually applied, with the model grid and modalities pinned.

    Stored in the run so that imputation on another cohort prepares it on the training grid.
    """
    settings = config_to_dict(loaded.records.config)
    settings["modalities"] = list(loaded.dataset.modalities)
    if loaded.records.grid_shape is not None:
        settings["target_shape"] = list(loaded.records.grid_shape)
    return settings
