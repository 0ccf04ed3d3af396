"""One call from a folder, BIDS dataset, manifest or cache file to a dataset (what the CLI and GUI use).

>>> from core.data.demo import DemoSpec, write_demo_cohort
>>> manifest = write_demo_cohort(folder / "cohort", DemoSpec(n_subjects=2, shape=(16, 16, 16), template="procedural"))
>>> dataset, records = load_cohort_dataset(manifest, PreprocessingConfig(target_shape=(16, 16, 16)))
>>> dataset.modalities, dataset.input_dims["T1"]
(['T1', 'T2', 'FLAIR', 'US'], (1, 16, 16, 16))
>>> os.path.basename(records["sub-001"].modalities["T1"].path)  # the source file, its geometry, normalisation
'sub-001_T1w.nii.gz'

(``folder`` is any writable folder; the doctests get a temporary one from ``conftest.py``.)

Without ``cache_path`` the preprocessed cohort is held in memory as an
:class:`~core.data.dataset.IncompleteDataset`. With ``cache_path`` it is written to (or reused from) an HDF5
cache and read lazily by :class:`~core.data.cache.H5CohortDataset`; a cache is reused only when the
preprocessing configuration and every input file (path, size, modification time) are unchanged.

Files that cannot be used are reported in ``records.issues`` (each naming the file and the fix) and the
modality is missing for that subject; the rest of the cohort loads. Input files are never modified.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import torch

from core.data.cohort import Cohort, discover_cohort
from core.data.dataset import IncompleteDataset, MultimodalBaseDataset
from core.data.errors import Issue
from core.data.preprocessing.config import PreprocessingConfig, PreprocessingError
from core.data.preprocessing.pipeline import PreprocessedSubject, plan_preprocessing, preprocess_cohort
from core.data.preprocessing.records import CohortRecords, ModalityRecord, SubjectRecord
from core.progress import CancelFn, ProgressFn

__all__ = ["load_cohort_dataset", "SubjectRecord", "ModalityRecord", "CohortRecords", "build_in_memory"]


def load_cohort_dataset(
    source: str | os.PathLike | Cohort,
    preprocessing: PreprocessingConfig | None = None,
    cache_path: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    *,
    layout: Literal["auto", "bids", "folders", "manifest"] = "auto",
    modality_patterns: Mapping[str, str] | None = None,
    rebuild_cache: bool = False,
) -> tuple[Any, CohortRecords]:
    """Discover, preprocess and load a cohort.

    Args:
        source: a cohort folder (BIDS or folder-per-subject), a manifest ``.csv``, an existing ``.h5``
            cache, or a :class:`~core.data.cohort.Cohort`.
        preprocessing: the :class:`PreprocessingConfig` (default settings if None). Ignored for a ``.h5``
            source (the cache holds its own).
        cache_path: write/reuse an HDF5 cache there and return a lazy dataset.
        progress, cancel: ``progress(done, total, message)`` per subject; ``cancel()`` polled between
            subjects (raises :class:`core.progress.Cancelled`; a half-written cache is removed).
        layout, modality_patterns: passed to :func:`~core.data.cohort.discover_cohort`.
        rebuild_cache: rebuild the cache even if it is up to date.

    Returns:
        ``(dataset, records)``: an :class:`IncompleteDataset` (or an ``H5CohortDataset`` with a cache) and
        :class:`CohortRecords` mapping each subject id to its :class:`SubjectRecord`.
    """
    if not isinstance(source, Cohort) and str(source).lower().endswith((".h5", ".hdf5")):
        from core.data.cache import H5CohortDataset

        dataset = H5CohortDataset(source)
        return dataset, dataset.records
    cohort = source if isinstance(source, Cohort) else discover_cohort(
        source, layout=layout, modality_patterns=modality_patterns,
        modalities=preprocessing.modalities if preprocessing is not None else None,
    )
    config = preprocessing or PreprocessingConfig()
    if cache_path is not None:
        from core.data.cache import H5CohortDataset, build_cache, cache_is_current

        if rebuild_cache or not cache_is_current(cache_path, cohort, config):
            build_cache(cohort, config, cache_path, progress=progress, cancel=cancel)
        dataset = H5CohortDataset(cache_path)
        return dataset, dataset.records
    return build_in_memory(cohort, config, progress=progress, cancel=cancel)


def build_in_memory(
    cohort: Cohort,
    config: PreprocessingConfig,
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> tuple[MultimodalBaseDataset, CohortRecords]:
    """Preprocess ``cohort`` into an :class:`IncompleteDataset` held in memory."""
    plan = plan_preprocessing(cohort, config)
    shape = plan.target_shape
    n = len(plan.subjects)
    data = {m: torch.zeros((n, 1, *shape), dtype=torch.float32) for m in plan.modalities}
    masks = {m: torch.zeros(n, dtype=torch.bool) for m in plan.modalities}
    observation: dict[str, torch.Tensor] = {}
    records: dict[str, SubjectRecord] = {}
    ids: list[str] = []
    for item in preprocess_cohort(cohort, config, plan, progress=progress, cancel=cancel):
        if isinstance(item, SubjectRecord):
            records[item.subject] = item
            continue
        i = len(ids)
        ids.append(item.subject)
        records[item.subject] = item.record
        _fill(i, item, data, masks, observation, n, shape)
    keep = len(ids)
    data = {m: x[:keep] for m, x in data.items()}
    masks = {m: x[:keep] for m, x in masks.items()}
    observation = {m: x[:keep] & masks[m].view(-1, 1, 1, 1, 1) for m, x in observation.items()}
    issues = list(cohort.issues) + plan.issues + [i for r in records.values() for i in r.issues]
    modalities, data, masks, observation, extra = _drop_unobserved(plan.modalities, data, masks, observation, config)
    issues += extra
    if keep == 0:
        raise PreprocessingError(
            "No subject could be loaded. Fix: see the issues below.\n" + "\n".join(str(i) for i in issues if i.level == "error"),
            issues,
        )
    labels, categories = cohort.labels(ids)
    dataset = IncompleteDataset(
        data, masks, labels=labels, ids=ids, observation_masks=observation, allow_unobserved_modalities=True,
    )
    cfg = config.model_copy(update={"reference_modality": plan.reference_modality})
    return dataset, CohortRecords(records, config=cfg, modalities=modalities, issues=issues,
                                  label_categories=categories, grid_shape=shape)


def _fill(i: int, item: PreprocessedSubject, data: dict, masks: dict, observation: dict, n: int, shape: tuple) -> None:
    for m, values in item.data.items():
        data[m][i, 0] = torch.from_numpy(values)
        masks[m][i] = True
    for m, obs in item.observation.items():
        if m not in observation:
            observation[m] = torch.ones((n, 1, *shape), dtype=torch.bool)
        observation[m][i, 0] = torch.from_numpy(obs)


def _drop_unobserved(modalities: list[str], data: dict, masks: dict, observation: dict, config: PreprocessingConfig):
    issues: list[Issue] = []
    keep = []
    for m in modalities:
        if bool(masks[m].any()) or (config.modalities is not None and m in config.modalities):
            keep.append(m)
        else:
            issues.append(Issue("warning", f"no {m} file could be loaded for any subject; {m} is dropped", modality=m,
                                fix="fix the files (see the errors above), or list the modality in the preprocessing "
                                "modalities to keep it for imputation"))
    return (keep, {m: data[m] for m in keep}, {m: masks[m] for m in keep},
            {m: v for m, v in observation.items() if m in keep}, issues)
