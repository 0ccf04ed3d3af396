"""Training throughput (samples/s) and peak memory of MVAE on demo data, 2D, 32^3 and 64^3 3D.

Each configuration runs in a fresh process (so peak memory is its own). Two loops over the same
networks and batches: a bare loop (forward, backward, Adam on pre-collated batches; a burn-in of a few
steps, then timed steps) and the project's ``Trainer`` (its epochs over the same subjects, timed from an
epoch's start to its last training step, the first epoch a warm-up). ``trainer_overhead`` is the
trainer's time per step over the bare loop's, minus one. Results go to
``benchmarks/results/train_throughput.json``. CPU time (the process's own) is recorded beside the
wall clock, which on a shared machine also counts other processes' turns on the cores.

    python benchmarks/train_throughput.py [--steps 20] [--epochs 3] [--device auto] [--only 3d_32cube]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path

LOAD_AT_START = round(os.getloadavg()[0], 2)  # other work on the machine skews the numbers
RESULTS = Path(__file__).resolve().parent / "results"

CASES = {
    "2d_64x64": {"dims": 2, "shape": (64, 64), "batch_size": 32, "n_subjects": 64},
    "3d_32cube": {"dims": 3, "shape": (32, 32, 32), "batch_size": 8, "n_subjects": 32},
    "3d_64cube": {"dims": 3, "shape": (64, 64, 64), "batch_size": 4, "n_subjects": 16},
}


def _trainer_seconds_per_step(model, dataset, batch_size: int, epochs: int, device_name: str) -> tuple[float, float]:
    """Median (wall, CPU) seconds per training step of the project's Trainer (epochs after the first)."""
    from core.training import Callback, Trainer, TrainerConfig

    spans: list[list[float]] = []

    class Timer(Callback):
        def on_epoch_start(self, trainer, epoch: int, stage: str) -> None:
            spans.append([time.perf_counter(), time.process_time(), 0.0, 0.0, 0])

        def on_batch_end(self, trainer, progress) -> None:
            if progress.phase == "train":
                spans[-1][2:] = [time.perf_counter(), time.process_time(), progress.batch]

    config = TrainerConfig(num_epochs=epochs, batch_size=batch_size, device=device_name, checkpoint_every_minutes=None)
    Trainer(model, dataset, config=config, callbacks=[Timer()]).train()
    return (statistics.median((end - start) / n for start, _, end, _, n in spans[1:]),
            statistics.median((end - start) / n for _, start, _, end, n in spans[1:]))


def _measure(case: dict, steps: int, burn_in: int, epochs: int, device_name: str, queue: mp.Queue) -> None:
    import torch

    from core.data import collate_multimodal
    from core.data.demo import DemoSpec, make_demo_dataset
    from core.models import MVAE, MVAEConfig, TrainingProgress
    from core.training import select_device
    from core.training.optimizers import build_optimizer, optimizer_step

    torch.manual_seed(0)
    device = select_device(device_name)
    spec = DemoSpec(n_subjects=case["n_subjects"], shape=case["shape"], dims=case["dims"], template="icbm152")
    dataset, _ = make_demo_dataset(spec)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = MVAE(MVAEConfig(n_modalities=len(dataset.modalities), latent_dim=16, input_dims=dataset.input_dims, warmup=0)).to(device)
    optimizer = build_optimizer("Adam", model.parameters(), 1e-3)  # the trainer's kernels: only its bookkeeping differs
    bs = case["batch_size"]
    batches = [collate_multimodal([dataset[i % len(dataset)] for i in range(s * bs, (s + 1) * bs)]).to(device) for s in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(s: int) -> None:
        loss = model(batches[s % len(batches)], TrainingProgress(1, 0.0)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer_step(optimizer)  # what the trainer calls: the same update, without the torch._dynamo check

    for s in range(burn_in):
        step(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    for s in range(steps):
        step(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    bare_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer_seconds, trainer_cpu_seconds = _trainer_seconds_per_step(model, dataset, bs, epochs, device_name)
    queue.put(
        {
            "samples_per_second": round(steps * bs / seconds, 2),
            "seconds_per_step": round(seconds / steps, 4),
            "trainer_samples_per_second": round(bs / trainer_seconds, 2),
            "trainer_seconds_per_step": round(trainer_seconds, 4),
            "trainer_overhead": round(trainer_seconds / (seconds / steps) - 1, 3),
            "cpu_seconds_per_step": round(cpu_seconds / steps, 4),
            "trainer_cpu_seconds_per_step": round(trainer_cpu_seconds, 4),
            "trainer_overhead_cpu": round(trainer_cpu_seconds / (cpu_seconds / steps) - 1, 3),
            "batch_size": bs,
            "shape": list(case["shape"]),
            "modalities": dataset.modalities,
            "parameters": sum(p.numel() for p in model.parameters()),
            "peak_rss_mb_bare_loop": round(bare_peak_rss_mb, 1),
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
    parser.add_argument("--epochs", type=int, default=3, help="trainer epochs (the first is a warm-up)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = parser.parse_args()
    context = mp.get_context("spawn")
    results = {}
    for name in args.only:
        queue = context.Queue()
        process = context.Process(target=_measure, args=(CASES[name], args.steps, args.burn_in, args.epochs, args.device, queue))
        process.start()
        results[name] = queue.get()
        process.join()
        print(name, results[name])
    payload = {"benchmark": "train_throughput", "model": "MVAE", "machine": platform.platform(), "processor": platform.processor(),
               "cpu_count": mp.cpu_count(), "load_average_1min_at_start": LOAD_AT_START, "steps": args.steps, "results": results,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
