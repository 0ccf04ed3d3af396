"""DDP scaling on CPU: training samples/s with 1 process vs 2 gloo processes (same global batch).

Each configuration runs ``Trainer`` in fresh processes (``torch.multiprocessing`` spawn, the
same process group torchrun would set up) on a synthetic 2-modality 2D cohort; the first epoch is
a warm-up and the rest are timed from the trainer's own epoch records. Results go to
``benchmarks/results/ddp_scaling.json``.

    python benchmarks/ddp_scaling.py [--epochs 4] [--n 512] [--batch-size 64] [--size 32]

On a machine with N cores, compare "1 process x N threads" with "N processes x 1 thread": DDP on
CPU pays off when per-process work is large enough to amortise the gradient all-reduce.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def _dataset(n: int, size: int):
    from core.data import IncompleteDataset

    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 4, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    a = torch.tanh(z[:, 0, None, None] * xx + z[:, 1, None, None] * yy)[:, None]
    b = torch.tanh(z[:, 2, None, None] * xx * yy + z[:, 0, None, None])[:, None]
    masks = {"A": torch.ones(n, dtype=torch.bool), "B": torch.rand(n, generator=g) > 0.2}
    return IncompleteDataset({"A": a, "B": b}, masks)


def _worker(rank: int, world_size: int, port: int, threads: int, args: dict, out: str) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    from core.models import MVAE, MVAEConfig
    from core.training import Trainer, TrainerConfig

    dataset = _dataset(args["n"], args["size"])
    torch.manual_seed(0)
    model = MVAE(MVAEConfig(n_modalities=2, latent_dim=16, input_dims=dataset.input_dims, warmup=0))
    config = TrainerConfig(num_epochs=args["epochs"], batch_size=args["batch_size"], device="cpu", seed=0)
    started = time.perf_counter()
    result = Trainer(model, dataset, None, config).train()
    wall = time.perf_counter() - started
    timed = result.history[1:]
    if rank == 0:
        seconds = sum(r.seconds for r in timed)
        used = len(dataset) - len(dataset) % world_size  # samples a rank pair can split evenly per batch (upper bound)
        Path(out).write_text(json.dumps({
            "processes": world_size,
            "threads_per_process": threads,
            "timed_epochs": len(timed),
            "seconds_per_epoch": round(seconds / len(timed), 4),
            "samples_per_second": round(used * len(timed) / seconds, 2),
            "wall_seconds_including_startup": round(wall, 2),
            "final_train_loss": round(result.history[-1].train["loss"], 4),
        }))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world_size: int, threads: int, args: dict, tmp: Path) -> dict:
    out = tmp / f"ddp_{world_size}x{threads}.json"
    mp.start_processes(_worker, args=(world_size, _free_port(), threads, args, str(out)), nprocs=world_size, join=True,
                       start_method="spawn")
    return json.loads(out.read_text(encoding="utf-8"))


def main() -> None:
    load_at_start = round(os.getloadavg()[0], 2)  # other work on the machine skews the numbers
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    args = vars(parser.parse_args())
    import tempfile

    cores = os.cpu_count() or 1
    configs = [(1, 1), (1, min(2, cores)), (2, 1)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for world_size, threads in configs:
            results.append(run(world_size, threads, args, Path(tmp)))
            print(json.dumps(results[-1]))
    base = results[0]["samples_per_second"]
    for r in results:
        r["speedup_vs_1x1"] = round(r["samples_per_second"] / base, 3)
    payload = {
        "benchmark": "ddp_scaling",
        "model": "MVAE latent 16, default conv nets",
        "data": f"synthetic 2 modalities 1x{args['size']}x{args['size']}, {args['n']} subjects, B missing for ~20%",
        "global_batch_size": args["batch_size"],
        "backend": "gloo (CPU)",
        "machine": {"platform": platform.platform(), "cpu_count": cores, "torch": torch.__version__,
                    "load_average_1min_at_start": load_at_start},
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ddp_scaling.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS / 'ddp_scaling.json'}")


if __name__ == "__main__":
    main()
