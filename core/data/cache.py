"""An HDF5 cache of a preprocessed cohort, read lazily so that memory does not grow with the cohort.

Layout (``schema_version`` 1)::

    /                             attrs: format, schema_version, software_version, created, fingerprint,
                                         cohort (JSON: config, modalities, issues, label categories, grid shape)
    /ids                          (N,) UTF-8 strings
    /records                      (N,) UTF-8 JSON, one SubjectRecord per subject (source geometries,
                                         model grid, normalisation: what export needs to invert)
    /modalities/<m>/data          (N, 1, X, Y, Z) float32, one chunk per subject, gzip-4 + shuffle (or lzf)
    /modalities/<m>/present       (N,) bool: explicit missingness (an unwritten chunk reads back as 0)
    /modalities/<m>/observation   (N, 1, X, Y, Z) bool, one chunk per subject, only for modalities with
                                         per-voxel observation masks; unwritten chunks read as True
    /labels/<name>                (N,) float32 or int64 covariates

The file is written under a temporary name beside ``path`` and renamed when complete, so a reader never
sees a half-written cache and a cancelled build leaves nothing behind. Only numbers and JSON text are
stored; nothing is ever unpickled. Opening a cache validates its layout first (:func:`validate_cache`: only
plain datasets and groups, no external or soft links, the expected dtypes and shapes, no variable-length
data but the id and record strings, volumes no larger than :data:`core.data.readers.MAX_VOXELS`), so a damaged
or crafted file is one :class:`CacheError` naming what is wrong, before any model is built.

:class:`H5CohortDataset` opens the file lazily in each process (the handle is pid-checked and dropped
when pickled), so it works with ``DataLoader(num_workers>0)`` under fork, spawn and forkserver.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

import core
from core.atomic import SAFE_NAME_RULE, is_safe_name
from core.data.cohort import Cohort
from core.data.dataset import DatasetOutput, IncompleteDataset, collate_multimodal
from core.data.errors import ImagingError, Issue
from core.data.preprocessing.config import PreprocessingConfig, PreprocessingError
from core.data.preprocessing.pipeline import plan_preprocessing, preprocess_cohort
from core.data.preprocessing.records import CohortRecords, SubjectRecord
from core.data.readers import MAX_VOXELS
from core.progress import CancelFn, ProgressFn

__all__ = ["CacheError", "SCHEMA_VERSION", "build_cache", "cache_is_current", "cache_fingerprint", "validate_cache",
           "H5CohortDataset"]

SCHEMA_VERSION = 1
_FORMAT = "mmvae-cohort-cache"


class CacheError(ImagingError):
    """The cache file is missing, not a cohort cache, or from an incompatible version."""


def cache_fingerprint(cohort: Cohort, config: PreprocessingConfig) -> str:
    """Changes when the configuration or any input file (path, size, modification time) changes."""
    import hashlib

    h = hashlib.sha256()
    h.update(cohort.fingerprint().encode())
    h.update(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    h.update(str(SCHEMA_VERSION).encode())
    return h.hexdigest()[:32]


def cache_is_current(path: str | os.PathLike, cohort: Cohort, config: PreprocessingConfig) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return (f.attrs.get("format") == _FORMAT and int(f.attrs.get("schema_version", -1)) == SCHEMA_VERSION
                    and f.attrs.get("fingerprint") == cache_fingerprint(cohort, config))
    except OSError:
        return False


def _links_outside(group: h5py.Group, prefix: str = "") -> list[str]:
    """Every soft or external link below ``group`` (a cache holds none; they could point anywhere)."""
    found = []
    for key in group:
        link = group.get(key, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            found.append(f"{prefix}/{key}")
        elif isinstance(group.get(key), h5py.Group):
            found += _links_outside(group[key], f"{prefix}/{key}")
    return found


def _attr_text(f: h5py.File, name: str) -> str | None:
    try:
        value = f.attrs.get(name)
    except (TypeError, OSError, ValueError):
        return None
    return value.decode() if isinstance(value, bytes) else value if isinstance(value, str) else None


def validate_cache(f: h5py.File, path: Path) -> list[str]:
    """What is wrong with an open cache's layout, dtypes and sizes (empty when it can be read safely)."""
    links = _links_outside(f)
    if links:
        return [f"it holds soft or external links {links[:3]}"]
    problems: list[str] = []
    try:
        cohort = json.loads(_attr_text(f, "cohort") or "")
        modalities = list(cohort["modalities"])
    except (ValueError, KeyError, TypeError):
        return ["its 'cohort' attribute is not the JSON text a cache holds"]
    bad = [m for m in modalities if not isinstance(m, str) or not is_safe_name(m)]
    if bad:
        return [f"modality names {bad[:3]} break the rule {SAFE_NAME_RULE}"]

    def dataset(name: str, kind: str, ndim: int) -> h5py.Dataset | None:
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            problems.append(f"'{name}' is missing")
            return None
        dtype = ds.dtype
        ok = {"text": h5py.check_string_dtype(dtype) is not None, "bool": dtype == np.bool_,
              "float32": dtype == np.float32,
              "number": dtype.kind in "fiub" and h5py.check_vlen_dtype(dtype) is None}[kind]
        if not ok or len(ds.shape) != ndim:
            problems.append(f"'{name}' has dtype {dtype} and {len(ds.shape)} dimensions; expected {ndim}D {kind}")
            return None
        return ds

    ids = dataset("ids", "text", 1)
    dataset("records", "text", 1)
    n = ids.shape[0] if ids is not None else None
    for m in modalities:
        data = dataset(f"modalities/{m}/data", "float32", 5)
        present = dataset(f"modalities/{m}/present", "bool", 1)
        if data is not None:
            voxels = int(np.prod(data.shape[2:], dtype=np.float64))
            if data.shape[1] != 1 or voxels > MAX_VOXELS:
                problems.append(f"'modalities/{m}/data' declares {data.shape}, more than one channel or above "
                                f"{MAX_VOXELS:.3g} voxels per subject")
            if data.shape[0] != n:
                problems.append(f"'modalities/{m}/data' holds {data.shape[0]} subjects, 'ids' {n}")
        if present is not None and present.shape[0] != n:
            problems.append(f"'modalities/{m}/present' holds {present.shape[0]} entries, 'ids' {n}")
        if data is not None and f"modalities/{m}/observation" in f:
            obs = dataset(f"modalities/{m}/observation", "bool", 5)
            if obs is not None and obs.shape != data.shape:
                problems.append(f"'modalities/{m}/observation' has shape {obs.shape}, its data {data.shape}")
    labels = f.get("labels")
    if labels is not None and not isinstance(labels, h5py.Group):
        problems.append("'labels' is not a group")
    elif labels is not None:
        for name in labels:
            ds = dataset(f"labels/{name}", "number", 1)
            if ds is not None and ds.shape[0] != n:
                problems.append(f"'labels/{name}' holds {ds.shape[0]} entries, 'ids' {n}")
    if ids is not None and not problems:
        unsafe = [s for s in (x.decode() if isinstance(x, bytes) else str(x) for x in ids[()]) if not is_safe_name(s)]
        if unsafe:
            problems.append(f"subject ids {unsafe[:3]} break the rule {SAFE_NAME_RULE}")
    return problems


def _check_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise CacheError(f"Modality or label name {name!r} cannot be an HDF5 group name. Fix: rename it (no '/').")
    return name


def build_cache(
    cohort: Cohort,
    config: PreprocessingConfig,
    path: str | os.PathLike,
    *,
    compression: Literal["gzip", "lzf", "none"] = "gzip",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> CohortRecords:
    """Preprocess ``cohort`` subject by subject into an HDF5 cache at ``path`` (memory: one subject).

    Returns the :class:`CohortRecords`. Raises :class:`core.progress.Cancelled` if cancelled (the temporary
    file is removed and an existing cache at ``path`` is left as it was).
    """
    path = Path(path)
    plan = plan_preprocessing(cohort, config)
    shape = tuple(plan.target_shape)
    n = len(plan.subjects)
    for m in plan.modalities:
        _check_name(m)
    comp: dict[str, Any] = {}
    if compression == "gzip":
        comp = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    elif compression == "lzf":
        comp = {"compression": "lzf", "shuffle": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    records: dict[str, SubjectRecord] = {}
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = _FORMAT
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["software_version"] = core.__version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            str_dt = h5py.string_dtype("utf-8")
            ids_ds = f.create_dataset("ids", shape=(n,), maxshape=(None,), dtype=str_dt)
            rec_ds = f.create_dataset("records", shape=(n,), maxshape=(None,), dtype=str_dt)
            groups = {}
            for m in plan.modalities:
                g = f.create_group(f"modalities/{m}")
                g.create_dataset("data", shape=(n, 1, *shape), maxshape=(None, 1, *shape), dtype="f4",
                                 chunks=(1, 1, *shape), fillvalue=0.0, **comp)
                g.create_dataset("present", shape=(n,), maxshape=(None,), dtype=bool, fillvalue=False)
                groups[m] = g
            i = 0
            for item in preprocess_cohort(cohort, config, plan, progress=progress, cancel=cancel):
                if isinstance(item, SubjectRecord):
                    records[item.subject] = item
                    continue
                records[item.subject] = item.record
                ids_ds[i] = item.subject
                rec_ds[i] = json.dumps(item.record.to_dict())
                for m, values in item.data.items():
                    groups[m]["data"][i, 0] = values
                    groups[m]["present"][i] = True
                for m, obs in item.observation.items():
                    if "observation" not in groups[m]:
                        groups[m].create_dataset("observation", shape=(n, 1, *shape), maxshape=(None, 1, *shape),
                                                 dtype=bool, chunks=(1, 1, *shape), fillvalue=True, **comp)
                    groups[m]["observation"][i, 0] = obs
                i += 1
            if i == 0:
                raise PreprocessingError("No subject could be loaded; no cache written. Fix: see cohort_report(cohort).",
                                         [x for r in records.values() for x in r.issues])
            for ds in (ids_ds, rec_ds):
                ds.resize((i,))
            for g in groups.values():
                for name in ("data", "present", "observation"):
                    if name in g:
                        g[name].resize((i, *g[name].shape[1:]))
            ids = [s.decode() if isinstance(s, bytes) else s for s in ids_ds[()]]
            labels, categories = cohort.labels(ids)
            for name, value in (labels or {}).items():
                f.create_dataset(f"labels/{_check_name(name)}", data=value.numpy())
            issues = list(cohort.issues) + plan.issues + [x for r in records.values() for x in r.issues]
            present = {m: bool(groups[m]["present"][()].any()) for m in plan.modalities}
            for m in plan.modalities:
                if not present[m] and not (config.modalities and m in config.modalities):
                    issues.append(Issue("warning", f"no {m} file could be loaded for any subject; {m} is dropped",
                                        modality=m, fix="fix the files, or list the modality in the preprocessing "
                                        "modalities to keep it for imputation"))
                    del f[f"modalities/{m}"]
            modalities = [m for m in plan.modalities if f"modalities/{m}" in f]
            cfg = config.model_copy(update={"reference_modality": plan.reference_modality})
            excluded = {s: r for s, r in records.items() if r.grid is None}
            cohort_meta = CohortRecords(excluded, config=cfg, modalities=modalities, issues=issues,
                                        label_categories=categories, grid_shape=shape)
            f.attrs["cohort"] = cohort_meta.to_json()
            f.attrs["fingerprint"] = cache_fingerprint(cohort, config)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return CohortRecords(records, config=cohort_meta.config, modalities=cohort_meta.modalities, issues=issues,
                         label_categories=categories, grid_shape=shape)


class H5CohortDataset(Dataset):
    """A lazily read cohort cache; samples look exactly like :class:`~core.data.dataset.IncompleteDataset`'s.

    Each ``dataset[i]`` reads one chunk per present modality (and its observation mask). ``masks``,
    ``labels`` and ``ids`` are small and held in memory; the volumes never are.

    Args:
        path: the ``.h5`` file written by :func:`build_cache`.
        indices: restrict to these rows of the file (what :meth:`subset` uses).
    """

    def __init__(self, path: str | os.PathLike, indices: Sequence[int] | None = None, *, _meta: dict | None = None) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._records: CohortRecords | None = None
        meta = _meta if _meta is not None else self._read_meta(self.path)
        self._meta = meta
        n_all = len(meta["ids"])
        self._rows = np.arange(n_all) if indices is None else np.asarray(list(indices), dtype=np.int64)
        if self._rows.size and (self._rows.min() < 0 or self._rows.max() >= n_all):
            raise IndexError(f"indices out of range for a cache of {n_all} subjects")
        rows_t = torch.as_tensor(self._rows, dtype=torch.long)
        self.ids = [meta["ids"][i] for i in self._rows.tolist()]
        self.masks = {m: meta["present"][m][rows_t] for m in meta["modalities"]}
        self.labels = {k: v[rows_t] for k, v in meta["labels"].items()} or None

    # -- metadata ---------------------------------------------------------------------------------------------
    @staticmethod
    def _read_meta(path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise CacheError(f"Cache {path} does not exist. Fix: build it with load_cohort_dataset(..., cache_path=...).")
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise CacheError(f"Cache {path} is not a readable HDF5 file ({exc}). Fix: delete it and rebuild it.") from None
        with f:
            if _attr_text(f, "format") != _FORMAT:
                raise CacheError(f"{path} is not a cohort cache (no format attribute {_FORMAT!r}). Fix: rebuild it.")
            try:
                version = int(f.attrs.get("schema_version", -1))
            except (TypeError, ValueError, OSError):
                version = -1
            if version != SCHEMA_VERSION:
                raise CacheError(f"Cache {path} has schema version {version}; this software reads {SCHEMA_VERSION}. "
                                 "Fix: rebuild it.")
            problems = validate_cache(f, path)
            if problems:
                raise CacheError(f"Cache {path} is damaged or not written by this workbench: {'; '.join(problems[:4])}. "
                                 "Fix: delete it and rebuild it from the cohort.", path=path)
            cohort = json.loads(f.attrs["cohort"])
            modalities = list(cohort["modalities"])
            ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][()]]
            present = {m: torch.from_numpy(f[f"modalities/{m}/present"][()].astype(bool)) for m in modalities}
            shapes = {m: tuple(f[f"modalities/{m}/data"].shape[1:]) for m in modalities}
            observed = [m for m in modalities if "observation" in f[f"modalities/{m}"]]
            labels = {k: torch.from_numpy(v[()]) for k, v in f["labels"].items()} if "labels" in f else {}
            return {"modalities": modalities, "ids": ids, "present": present, "shapes": shapes, "observed": observed,
                    "labels": labels, "cohort_json": f.attrs["cohort"], "fingerprint": f.attrs.get("fingerprint")}

    @property
    def modalities(self) -> list[str]:
        return list(self._meta["modalities"])

    @property
    def input_dims(self) -> dict[str, tuple[int, ...]]:
        return dict(self._meta["shapes"])

    @property
    def observation_modalities(self) -> list[str]:
        """Modalities that carry per-voxel observation masks."""
        return list(self._meta["observed"])

    @property
    def is_complete(self) -> bool:
        return all(bool(v.all()) for v in self.masks.values())

    @property
    def records(self) -> CohortRecords:
        """The :class:`CohortRecords` of the subjects in this dataset (subjects left out of the cache keep
        their record, with the issues saying why)."""
        if self._records is None:
            meta = CohortRecords.from_json(self._meta["cohort_json"])
            recs = {}
            with h5py.File(self.path, "r") as f:  # not the lazy handle: keep the parent process handle-free
                raw_all = f["records"][()]
            for row in self._rows.tolist():
                raw = raw_all[row]
                rec = SubjectRecord.from_dict(json.loads(raw.decode() if isinstance(raw, bytes) else raw))
                recs[rec.subject] = rec
            self._records = CohortRecords(
                {**recs, **{s: r for s, r in meta.items() if s not in recs}}, config=meta.config,
                modalities=meta.modalities, issues=meta.issues, label_categories=meta.label_categories,
                grid_shape=meta.grid_shape)
        return self._records

    # -- lazy file handle ------------------------------------------------------------------------------------
    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- Dataset -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._rows.size)

    def __getitem__(self, index: int) -> DatasetOutput:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} subjects")
        i = index % len(self)
        row = int(self._rows[i])
        f = self._h5()
        data, obs = {}, {}
        for m in self.modalities:
            present = bool(self.masks[m][i])
            shape = self._meta["shapes"][m]
            data[m] = torch.from_numpy(f[f"modalities/{m}/data"][row]) if present else torch.zeros(shape)
            if m in self._meta["observed"]:
                obs[m] = torch.from_numpy(f[f"modalities/{m}/observation"][row]) if present else torch.zeros(shape, dtype=torch.bool)
        return DatasetOutput(
            data=data,
            masks={m: self.masks[m][i] for m in self.modalities},
            labels={k: v[i] for k, v in self.labels.items()} if self.labels else None,
            ids=self.ids[i],
            observation_masks=obs,
        )

    def subset(self, indices: Sequence[int]) -> H5CohortDataset:
        """A view on the same file holding only ``indices`` (positions in this dataset)."""
        rows = self._rows[np.asarray(list(indices), dtype=np.int64)] if len(indices) else np.zeros(0, np.int64)
        return H5CohortDataset(self.path, rows.tolist(), _meta=self._meta)

    def load_into_memory(self) -> IncompleteDataset:
        """Read every volume into an :class:`IncompleteDataset` (for small cohorts)."""
        if len(self) == 0:
            raise CacheError("Cannot load an empty subset into memory.")
        batch = collate_multimodal([self[i] for i in range(len(self))])
        return IncompleteDataset(batch.data, batch.masks, labels=self.labels, ids=self.ids,
                                 observation_masks=batch.observation_masks, allow_unobserved_modalities=True)

    def as_batch(self) -> DatasetOutput:
        return self.load_into_memory().as_batch()

    def __repr__(self) -> str:
        dims = ", ".join(f"{m}{tuple(s)}" for m, s in self.input_dims.items())
        return f"H5CohortDataset({self.path.name}, n={len(self)}, modalities=[{dims}])"
