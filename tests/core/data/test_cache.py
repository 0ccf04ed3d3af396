"""The HDF5 cache: same arrays as direct loading, lazy reads, bounded memory, DataLoader workers."""

from __future__ import annotations

import json
import os
import pickle
import time
import tracemalloc
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from core.data.cache import CacheError, H5CohortDataset, build_cache
from core.data.cohort import discover_cohort
from core.data.dataset import collate_multimodal, split_by_subject
from core.data.loading import load_cohort_dataset
from core.data.preprocessing.config import PreprocessingConfig
from core.progress import Cancelled

SHAPE = (16, 16, 12)


def make_cohort(root: Path, n: int, shape=(18, 16, 12), seed=0) -> Path:
    """Folder layout: t1 for all, t2 for even subjects, us (+ fov for every third) for odd ones."""
    rng = np.random.default_rng(seed)
    a = np.diag([1.2, 1.0, 1.5, 1.0])
    a[:3, 3] = [-5, 3, 2]
    for k in range(n):
        s = root / f"case{k:03d}"
        s.mkdir(parents=True)
        body = np.zeros(shape, np.float32)
        body[2:-2, 2:-2, 2:-2] = rng.random(tuple(x - 4 for x in shape)) * 100 + 20
        nib.save(nib.Nifti1Image(body, a), s / f"case{k:03d}_t1.nii.gz")
        if k % 2 == 0:
            nib.save(nib.Nifti1Image(body[::-1] * 0.5 + 3 * (body > 0), a), s / f"case{k:03d}_t2.nii.gz")
        else:
            us = np.zeros(shape, np.float32)
            us[4:14, 3:12, 2:9] = rng.random((10, 9, 7)) * 50 + 1
            nib.save(nib.Nifti1Image(us, a), s / f"case{k:03d}_us.nii.gz")
            if k % 3 == 0:
                fov = np.zeros(shape, np.uint8)
                fov[4:10, 3:12, 2:9] = 1
                nib.save(nib.Nifti1Image(fov, a), s / f"case{k:03d}_us_fov.nii.gz")
    (root / "participants.tsv").write_text(
        "participant_id\tage\tsite\n" + "".join(f"case{k:03d}\t{20 + k}\t{'AB'[k % 2]}\n" for k in range(n)))
    return root


CONFIG = PreprocessingConfig(target_shape=SHAPE)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_cohort(tmp_path_factory.mktemp("cohort"), 7)
    cache = root.parent / "cache" / "cohort.h5"
    ds, records = load_cohort_dataset(root, CONFIG, cache_path=cache)
    mem, mem_records = load_cohort_dataset(root, CONFIG)
    return root, cache, ds, records, mem, mem_records


def test_cache_gives_the_same_samples_as_direct_loading(built):
    _, _, ds, records, mem, mem_records = built
    assert isinstance(ds, H5CohortDataset)
    assert ds.ids == mem.ids and ds.modalities == mem.modalities == ["T1", "T2", "US"]
    assert ds.input_dims == mem.input_dims == {m: (1, *SHAPE) for m in ds.modalities}
    assert all(torch.equal(ds.masks[m], mem.masks[m]) for m in ds.modalities)
    assert all(torch.equal(ds.labels[k], mem.labels[k]) for k in mem.labels)
    assert sorted(ds.observation_modalities) == sorted(mem.observation_masks)
    for i in range(len(ds)):
        a, b = ds[i], mem[i]
        assert a.ids == b.ids
        for m in ds.modalities:
            assert a.data[m].dtype == torch.float32 and torch.equal(a.data[m], b.data[m])
            assert torch.equal(a.masks[m], b.masks[m])
        assert a.observation_masks.keys() == b.observation_masks.keys()
        for m in a.observation_masks:
            assert torch.equal(a.observation_masks[m], b.observation_masks[m])
    assert records.keys() == mem_records.keys()
    assert records["case001"].to_dict() == mem_records["case001"].to_dict()
    assert records.label_categories == mem_records.label_categories == {"site": ["A", "B"]}
    full = ds.load_into_memory()
    assert all(torch.equal(full.data[m], mem.data[m]) for m in mem.modalities)


def test_file_layout(built):
    _, cache, ds, _, _, _ = built
    assert not [p for p in cache.parent.iterdir() if "partial" in p.name]
    with h5py.File(cache, "r") as f:
        assert f.attrs["format"] == "mmvae-cohort-cache" and f.attrs["schema_version"] == 1
        meta = json.loads(f.attrs["cohort"])
        assert meta["config"]["target_shape"] == list(SHAPE) and meta["modalities"] == ["T1", "T2", "US"]
        d = f["modalities/T1/data"]
        assert d.shape == (7, 1, *SHAPE) and d.chunks == (1, 1, *SHAPE)
        assert d.compression == "gzip" and d.shuffle
        assert f["modalities/T2/present"][()].tolist() == [True, False, True, False, True, False, True]
        assert f["modalities/US/observation"].chunks == (1, 1, *SHAPE)
        rec = json.loads(f["records"][1])
        assert rec["modalities"]["T1"]["source_geometry"]["shape"] == [18, 16, 12]
        # Missing slots were never written: they cost no storage.
        assert f["modalities/T2/data"].id.get_storage_size() < 7 * np.prod(SHAPE) * 4 / 2
        for obj in [f[k] for k in ("ids", "records")]:
            assert h5py.check_string_dtype(obj.dtype) is not None  # strings only, nothing pickled


def test_cache_is_reused_and_rebuilt_when_inputs_change(tmp_path):
    root = make_cohort(tmp_path / "c", 3)
    cache = tmp_path / "c.h5"
    load_cohort_dataset(root, CONFIG, cache_path=cache)
    stamp = cache.stat().st_mtime_ns
    time.sleep(0.01)
    load_cohort_dataset(root, CONFIG, cache_path=cache)
    assert cache.stat().st_mtime_ns == stamp
    f = root / "case001" / "case001_t1.nii.gz"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    load_cohort_dataset(root, CONFIG, cache_path=cache)
    assert cache.stat().st_mtime_ns != stamp
    stamp = cache.stat().st_mtime_ns
    load_cohort_dataset(root, PreprocessingConfig(target_shape=(8, 8, 8)), cache_path=cache)
    assert cache.stat().st_mtime_ns != stamp
    ds, _ = load_cohort_dataset(cache)  # the .h5 itself is a source
    assert ds.input_dims["T1"] == (1, 8, 8, 8)


def test_cancelled_build_leaves_nothing_and_keeps_the_old_cache(tmp_path):
    root = make_cohort(tmp_path / "c", 4)
    cohort = discover_cohort(root)
    cache = tmp_path / "out" / "c.h5"
    calls = []
    with pytest.raises(Cancelled):
        build_cache(cohort, CONFIG, cache, cancel=lambda: len(calls) > 2 or calls.append(1) is not None and False)
    assert not list((tmp_path / "out").iterdir())
    build_cache(cohort, CONFIG, cache)
    before = cache.read_bytes()
    with pytest.raises(Cancelled):
        build_cache(cohort, PreprocessingConfig(target_shape=(8, 8, 8)), cache, cancel=lambda: True)
    assert cache.read_bytes() == before and [p.name for p in cache.parent.iterdir()] == ["c.h5"]


def test_lazy_reads_and_bounded_memory(tmp_path):
    root = make_cohort(tmp_path / "c", 24)
    cache = tmp_path / "c.h5"
    build_cache(discover_cohort(root), PreprocessingConfig(target_shape=(24, 24, 24)), cache, compression="lzf")
    ds = H5CohortDataset(cache)
    assert ds._file is None  # nothing opened until a sample is read
    sample_bytes = 3 * 24**3 * 4
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        total = 0.0
        for i in range(len(ds)):
            total += float(ds[i].data["T1"].abs().sum())
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ds._file is not None and total > 0
    # Whole cohort: 24 subjects x 3 modalities; memory stays at a few samples.
    assert peak - base < 4 * sample_bytes < 24 * sample_bytes
    assert current - base < sample_bytes
    ds.close()


def _sum_by_id(batches) -> dict[str, float]:
    out = {}
    for b in batches:
        for j, s in enumerate(b.ids):
            out[s] = float(b.data["T1"][j].sum()) + float(b.observation_masks["US"][j].sum())
    return out


def test_dataloader_workers(built):
    _, cache, ds, _, mem, _ = built
    ds[0]  # open the handle in the parent first: workers must not reuse it
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_multimodal)
    got = _sum_by_id(loader)
    expected = _sum_by_id([collate_multimodal([mem[i] for i in range(len(mem))])])
    assert got == pytest.approx(expected)
    state = pickle.loads(pickle.dumps(ds))  # what spawn does: the handle is dropped, reopened on use
    assert state._file is None and torch.equal(state[1].data["T1"], ds[1].data["T1"])


def test_dataloader_spawn_workers(built):
    _, cache, ds, _, mem, _ = built
    loader = DataLoader(ds.subset([0, 1, 2]), batch_size=2, num_workers=2, collate_fn=collate_multimodal,
                        multiprocessing_context="spawn")
    got = _sum_by_id(loader)
    assert set(got) == {"case000", "case001", "case002"}


def test_subset_and_split(built):
    _, _, ds, _, mem, _ = built
    sub = ds.subset([5, 1])
    assert sub.ids == ["case005", "case001"] and len(sub) == 2
    assert sub.masks["T2"].tolist() == [False, False] and sub.labels["age"].tolist() == [25.0, 21.0]
    assert torch.equal(sub[0].data["T1"], mem[5].data["T1"])
    assert sub.subset([1]).ids == ["case001"]
    parts = split_by_subject(ds, (0.6, 0.2, 0.2), seed=0)
    assert sum(len(p) for p in parts) == len(ds) and all(isinstance(p, H5CohortDataset) for p in parts)
    assert set(parts[0].records) >= set(parts[0].ids)


def test_bad_cache_files(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        H5CohortDataset(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        H5CohortDataset(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CacheError, match="not a cohort cache"):
        H5CohortDataset(tmp_path / "other.h5")
