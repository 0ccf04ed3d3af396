"""Training throughput (samples/s) and peak memory of MVAE on demo data, 2D and 32^3 3D.

Each configuration runs in a fresh process (so peak memory is its own): a burn-in of a few steps,
then timed steps. Results go to ``benchmarks/results/train_throughput.json``.

    python benchmarks/train_throughput.py [--steps 20] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import time
from pathlib import Path

LOAD_AT_START = round(os.getloadavg()[0], 2)  # other work on the machine skews the numbers
RESULTS = Path(__file__).resolve().parent / "results"

CASES = {
    "2d_64x64": {"dims": 2, "shape": (64, 64), "batch_size": 32, "n_subjects": 64},
    "3d_32cube": {"dims": 3, "shape": (32, 32, 32), "batch_size": 8, "n_subjects": 32},
}


def _measure(case: dict, steps: int, burn_in: int, device_name: str, queue: mp.Queue) -> None:
    import torch

    from core.data import collate_multimodal
    from core.data.demo import DemoSpec, make_demo_dataset
    from core.models import MVAE, MVAEConfig, TrainingProgress
    from core.training import select_device

    torch.manual_seed(0)
    device = select_device(device_name)
    spec = DemoSpec(n_subjects=case["n_subjects"], shape=case["shape"], dims=case["dims"], template="icbm152")
    dataset, _ = make_demo_dataset(spec)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = MVAE(MVAEConfig(n_modalities=len(dataset.modalities), latent_dim=16, input_dims=dataset.input_dims, warmup=0)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    bs = case["batch_size"]
    batches = [collate_multimodal([dataset[i % len(dataset)] for i in range(s * bs, (s + 1) * bs)]).to(device) for s in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(s: int) -> None:
        loss = model(batches[s % len(batches)], TrainingProgress(1, 0.0)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for s in range(burn_in):
        step(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(steps):
        step(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    queue.put(
        {
            "samples_per_second": round(steps * bs / seconds, 2),
            "seconds_per_step": round(seconds / steps, 4),
            "batch_size": bs,
            "shape": list(case["shape"]),
            "modalities": dataset.modalities,
            "parameters": sum(p.numel() for p in model.parameters()),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "training_rss_increase_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--burn-in", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = parser.parse_args()
    context = mp.get_context("spawn")
    results = {}
    for name, case in CASES.items():
        queue = context.Queue()
        process = context.Process(target=_measure, args=(case, args.steps, args.burn_in, args.device, queue))
        process.start()
        results[name] = queue.get()
        process.join()
        print(name, results[name])
    payload = {"benchmark": "train_throughput", "model": "MVAE", "machine": platform.platform(), "processor": platform.processor(),
               "cpu_count": mp.cpu_count(), "load_average_1min_at_start": LOAD_AT_START, "steps": args.steps, "results": results, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
