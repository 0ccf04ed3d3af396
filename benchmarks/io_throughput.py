"""IO throughput: load+preprocess volumes/s, cache read vs raw read of the same bytes, peak RAM.

Usage: python benchmarks/io_throughput.py [--subjects 24] [--workdir DIR]
Generates a synthetic cohort (3 modalities, oblique/anisotropic sources) in a temporary folder and
writes ``benchmarks/results/io_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET = dict(target_spacing=(1.5, 1.5, 1.5), target_shape=(96, 96, 80))


def make_cohort(root: Path, n: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    c, s = np.cos(0.1), np.sin(0.1)
    a = np.eye(4)
    a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.2, 1.2, 1.5])
    a[:3, 3] = [-70, -80, -60]
    b = np.diag([1.4, 1.4, 2.0, 1.0])
    b[:3, 3] = [-60, -70, -55]
    i, j, k = np.meshgrid(np.linspace(-1, 1, 120), np.linspace(-1, 1, 128), np.linspace(-1, 1, 96), indexing="ij")
    head = (i**2 + j**2 + k**2) < 0.8
    for n_ in range(n):
        d = root / f"sub{n_:03d}"
        d.mkdir(parents=True)
        t1 = (head * (500 + 100 * np.sin(5 * i + n_) + rng.normal(0, 20, head.shape))).astype(np.int16)
        nib.save(nib.Nifti1Image(t1, a), d / f"sub{n_:03d}_t1.nii.gz")
        if n_ % 4 != 1:
            t2 = t1[::2, ::2, ::2][:, :, :40].astype(np.float32) * 1.7
            nib.save(nib.Nifti1Image(t2, b), d / f"sub{n_:03d}_t2.nii.gz")
        if n_ % 3 != 2:
            us = np.zeros(head.shape, np.uint8)
            us[30:90, 30:100, 20:70] = rng.integers(1, 255, (60, 70, 50))
            nib.save(nib.Nifti1Image(us, a), d / f"sub{n_:03d}_us.nii.gz")


def _hwm_mib() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, workdir: Path) -> None:
    """Runs in a fresh process so that peak RSS belongs to one mode only."""
    import torch
    from torch.utils.data import DataLoader

    from core.data.cache import H5CohortDataset
    from core.data.dataset import collate_multimodal
    from core.data.loading import load_cohort_dataset
    from core.data.preprocessing.config import PreprocessingConfig

    rss0 = _hwm_mib()
    t = time.perf_counter()
    if mode == "memory":
        ds, _ = load_cohort_dataset(workdir / "cohort", PreprocessingConfig(**TARGET))
        batches = 0
        for _batch in DataLoader(ds, batch_size=4, collate_fn=collate_multimodal):
            batches += 1
    else:
        ds = H5CohortDataset(workdir / f"cohort-{mode}.h5")
        batches = 0
        for _batch in DataLoader(ds, batch_size=4, collate_fn=collate_multimodal, num_workers=0):
            batches += 1
    elapsed = time.perf_counter() - t
    rss = _hwm_mib()
    print(json.dumps({"mode": mode, "seconds": elapsed, "peak_rss_mib": rss, "rss_after_imports_mib": rss0,
                      "torch_threads": torch.get_num_threads()}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--subjects", type=int, default=24)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--child", default=None)
    args = p.parse_args()
    if args.child:
        child(args.child, args.workdir)
        return
    from core.data.cache import H5CohortDataset, build_cache
    from core.data.cohort import discover_cohort
    from core.data.loading import load_cohort_dataset
    from core.data.preprocessing.config import PreprocessingConfig

    tmp = tempfile.TemporaryDirectory()
    work = args.workdir or Path(tmp.name)
    t = time.perf_counter()
    make_cohort(work / "cohort", args.subjects)
    print(f"generated {args.subjects} subjects in {time.perf_counter() - t:.1f} s")
    cohort = discover_cohort(work / "cohort")
    n_vol = len(cohort.entries)
    cfg = PreprocessingConfig(**TARGET)

    t = time.perf_counter()
    ds, records = load_cohort_dataset(cohort, cfg)
    dt = time.perf_counter() - t
    result: dict = {
        "benchmark": "io_throughput", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2), "subjects": args.subjects, "volumes": n_vol,
        "grid": list(cfg.target_shape), "load_preprocess_volumes_per_s": round(n_vol / dt, 2), "cache": {},
    }  # fmt: skip
    print(f"load+preprocess (in memory): {n_vol} volumes in {dt:.2f} s = {n_vol / dt:.1f} volumes/s "
          f"(sources {cohort.entries[next(iter(cohort.entries))].path.stat().st_size / 1e6:.1f} MB gz, grid {cfg.target_shape})")

    nbytes = sum(int(ds.masks[m].sum()) for m in ds.modalities) * int(np.prod(cfg.target_shape)) * 4
    read_times = {}
    for comp in ("gzip", "lzf", "none"):
        t = time.perf_counter()
        build_cache(cohort, cfg, work / f"cohort-{comp}.h5", compression=comp)
        dt = time.perf_counter() - t
        size = (work / f"cohort-{comp}.h5").stat().st_size
        result["cache"][comp] = {"build_volumes_per_s": round(n_vol / dt, 2), "file_mib": round(size / 2**20, 1)}
        print(f"build cache ({comp}): {dt:.2f} s = {n_vol / dt:.1f} volumes/s, file {size / 2**20:.1f} MiB "
              f"for {nbytes / 2**20:.1f} MiB of present float32 volumes")
        h5 = H5CohortDataset(work / f"cohort-{comp}.h5")
        order = np.random.default_rng(0).permutation(len(h5))
        h5[0]
        t = time.perf_counter()
        for i in order:
            h5[int(i)]
        read_times[comp] = time.perf_counter() - t
        h5.close()
    dt_cache = read_times["gzip"]
    raw_dir = work / "raw"
    raw_dir.mkdir()
    files = []
    for i in range(len(ds)):
        for m in ds.modalities:
            if ds.masks[m][i]:
                f = raw_dir / f"{i}_{m}.npy"
                np.save(f, ds.data[m][i].numpy())
                files.append(f)
    t = time.perf_counter()
    for f in np.random.default_rng(0).permutation(files):
        np.load(f, allow_pickle=False)
    dt_raw = time.perf_counter() - t
    result["present_volumes_mib"] = round(nbytes / 2**20, 1)
    result["raw_npy_read_mib_per_s"] = round(nbytes / 2**20 / dt_raw, 1)
    for comp, dt_cache in read_times.items():
        result["cache"][comp]["read_mib_per_s"] = round(nbytes / 2**20 / dt_cache, 1)
        print(f"cache read ({comp}): {len(ds)} samples ({nbytes / 2**20:.0f} MiB) in {dt_cache:.2f} s = "
              f"{nbytes / 2**20 / dt_cache:.0f} MiB/s, {len(files) / dt_cache:.0f} volumes/s")
    print(f"raw .npy read of the same bytes: {dt_raw:.2f} s = {nbytes / 2**20 / dt_raw:.0f} MiB/s "
          "(all reads from the page cache: files were just written)")

    for mode in ("gzip", "memory"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--workdir", str(work)], capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        result[f"iterate_batch4_{mode}"] = {k: round(v, 2) for k, v in r.items() if k != "mode"}
        print(f"peak RSS iterating batch 4 ({mode}): {r['peak_rss_mib']:.0f} MiB "
              f"(after imports {r['rss_after_imports_mib']:.0f} MiB; cohort {nbytes / 2**20:.0f} MiB of volumes "
              f"+ masks), {r['seconds']:.2f} s")
    tmp.cleanup()
    out_path = ROOT / "benchmarks" / "results" / "io_throughput.json"
    out_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
