"""Where a run's data comes from: the bundled demo cohort or the user's files, behind one config.

Both go through the same file pipeline (discovery, preprocessing, optional HDF5 cache), so a model
trained on the demo cohort and ``mmvae impute`` on the demo folder see identically prepared data.
The demo cohort is generated once into the cache folder (``$MMVAE_CACHE_DIR``, default
``~/.cache/mmvae-workbench``) and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as config_dataclass

from core.data.dataset import IncompleteDataset, MultimodalBaseDataset
from core.models.config import MODEL_CONFIG_DICT, ConfigError, advanced, config_from_dict, config_to_dict
from core.progress import CancelFn, ProgressFn

__all__ = ["SplitConfig", "DataConfig", "LoadedData", "load_data", "cache_root", "ensure_demo_cohort", "resolved_preprocessing"]


@config_dataclass(config=MODEL_CONFIG_DICT)
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


@config_dataclass(config=MODEL_CONFIG_DICT)
class DataConfig:
    """What to train on and how to prepare it."""

    source: str = Field("demo", description="'demo', or a cohort folder, BIDS dataset, manifest CSV or HDF5 cache.")
    demo: dict[str, Any] = Field(default_factory=dict, **advanced("Demo cohort settings (core.data.demo.DemoSpec)."))
    modalities: list[str] | None = Field(None, description="Train on these modalities only (default: all).")
    preprocessing: dict[str, Any] = Field(
        default_factory=dict, **advanced("Preprocessing settings (core.data.preprocessing.PreprocessingConfig).")
    )
    cache: str | None = Field(None, **advanced("HDF5 cache file to build or reuse (default: keep the cohort in memory)."))
    split: SplitConfig = Field(default_factory=SplitConfig)


@dataclass
class LoadedData:
    """A dataset ready for training, with what is needed to export back to the source files."""

    dataset: MultimodalBaseDataset
    source: Path
    records: dict[str, Any] = field(default_factory=dict)


def cache_root() -> Path:
    return Path(os.environ.get("MMVAE_CACHE_DIR") or Path.home() / ".cache" / "mmvae-workbench")


def ensure_demo_cohort(settings: dict[str, Any], progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Path:
    """Generate the demo cohort described by ``settings`` into the cache (once); returns its folder."""
    from core.data import demo

    spec = demo.spec_from_dict(settings)
    key = hashlib.sha1(json.dumps(demo.spec_to_dict(spec), sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root() / "demo" / key
    if not (folder / "manifest.csv").is_file():
        demo.write_demo_cohort(folder, spec, progress=progress, cancel=cancel)
    return folder


def load_data(config: DataConfig, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> LoadedData:
    """Load (and preprocess) the cohort a run config points to."""
    from core.data.loading import load_cohort_dataset
    from core.data.preprocessing import PreprocessingConfig

    source = ensure_demo_cohort(config.demo, progress, cancel) if config.source == "demo" else Path(config.source).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"Data source {source} does not exist; point data.source at a cohort folder, manifest or cache.")
    settings = dict(config.preprocessing)
    if config.modalities:
        settings.setdefault("modalities", list(config.modalities))
    try:
        preprocessing = config_from_dict(PreprocessingConfig, settings)
    except ConfigError as error:
        raise ConfigError(f"data.preprocessing: {error}") from None
    dataset, records = load_cohort_dataset(
        source, preprocessing=preprocessing, cache_path=config.cache, progress=progress, cancel=cancel
    )
    return LoadedData(dataset=_as_images_if_single_slice(dataset), source=source, records=records)


def _as_images_if_single_slice(dataset: MultimodalBaseDataset) -> MultimodalBaseDataset:
    """A cohort of single-slice files (X, Y, 1) becomes 2D images (C, X, Y) for the 2D networks.

    Exports put the slice axis back (:func:`core.impute.impute_run`), so files keep their geometry.
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
