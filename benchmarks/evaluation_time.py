"""Evaluation time: seconds per metric section for an MVAE on a 2D and a 3D cohort.

Uses the demo cohort (``core.data.demo``) when it is available, else a synthetic cohort of the same
kind (three modalities, ~25% missing, a class label). The model is trained briefly (the numbers
measure the metrics, not the model). Results go to ``benchmarks/results/evaluation_time.json``.

    python benchmarks/evaluation_time.py [--device auto] [--nll-k 100] [--n-joint 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

CASES = {
    "2d_32x32": {"shape": (32, 32), "n_subjects": 96},
    "3d_16cube": {"shape": (16, 16, 16), "n_subjects": 64},
}


def synthetic_cohort(shape: tuple[int, ...], n: int, seed: int = 0):
    """Three modalities of one blob whose position is the class; each modality has its own contrast."""
    from core.data import IncompleteDataset

    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (n,), generator=g)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
    centre = (label.float() - 1) * 0.5
    radius2 = sum((a[None] - (centre.view(-1, *[1] * len(shape)) if i == 0 else 0)) ** 2 for i, a in enumerate(axes))
    size = 0.2 + 0.2 * torch.rand(n, generator=g).view(-1, *[1] * len(shape))
    blob = torch.exp(-radius2 / size)
    data = {
        "T1": blob[:, None] + 0.05 * torch.randn(n, 1, *shape, generator=g),
        "T2": (1 - blob)[:, None] + 0.05 * torch.randn(n, 1, *shape, generator=g),
        "US": (blob**2)[:, None] + 0.1 * torch.randn(n, 1, *shape, generator=g),
    }
    masks = {m: torch.rand(n, generator=g) > 0.25 for m in data}
    masks["T1"] |= ~(masks["T2"] | masks["US"])
    return IncompleteDataset(data, masks, labels=label, ids=[f"sub-{i:03d}" for i in range(n)])


def cohort(case: dict):
    """``(dataset, source, label)``: the demo cohort (class = lesion present) or the synthetic stand-in."""
    try:
        from core.data.demo import DemoSpec, make_demo_dataset
    except ImportError:
        return synthetic_cohort(case["shape"], case["n_subjects"]), "synthetic", None
    spec = DemoSpec(n_subjects=case["n_subjects"], shape=case["shape"], dims=len(case["shape"]))
    dataset, _ = make_demo_dataset(spec)
    return dataset, "demo (ICBM152 phantom)", "lesion_present"


def measure(name: str, case: dict, device: str, nll_k: int, n_joint: int) -> dict:
    from core.data import split_by_subject
    from core.metrics import EvaluationConfig, evaluate_model
    from core.models import MVAE, MVAEConfig
    from core.samplers import GaussianMixtureSampler, MAFSampler
    from core.training import Trainer, TrainerConfig, select_device

    dataset, source, label = cohort(case)
    train, validation, test = split_by_subject(dataset, (0.6, 0.15, 0.25), seed=0)
    torch.manual_seed(0)
    model = MVAE(MVAEConfig(n_modalities=len(dataset.modalities), latent_dim=8, input_dims=dataset.input_dims, warmup=2))
    Trainer(model, train, validation, TrainerConfig(num_epochs=5, batch_size=16, device=device)).train()
    model.to(select_device(device)).eval()
    config = EvaluationConfig(nll_K=nll_k, n_joint=n_joint, n_runs=5, batch_size=32, label=label)
    started = time.perf_counter()
    report = evaluate_model(model, train, test, config)
    total = time.perf_counter() - started
    samplers = {}
    for sampler in (GaussianMixtureSampler(), MAFSampler(epochs=100)):
        tick = time.perf_counter()
        sampler.fit(model, train)
        sampler.sample(1000, seed=0)
        samplers[sampler.name] = round(time.perf_counter() - tick, 3)
    return {
        "case": name,
        "data": source,
        "shape": list(case["shape"]),
        "modalities": dataset.modalities,
        "n_train": len(train),
        "n_test": len(test),
        "device": str(model.device),
        "seconds_total": round(total, 3),
        "seconds_per_section": report["seconds"],
        "imputation_rows": len(report.get("imputation", [])),
        "nll_K": nll_k,
        "n_joint": n_joint,
        "sampler_fit_and_1000_samples_seconds": samplers,
        "skipped": report["skipped"],
    }


def main() -> None:
    load_at_start = round(os.getloadavg()[0], 2)  # other work on the machine skews the numbers
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--nll-k", type=int, default=100)
    parser.add_argument("--n-joint", type=int, default=500)
    args = parser.parse_args()
    results = []
    for name, case in CASES.items():
        results.append(measure(name, case, args.device, args.nll_k, args.n_joint))
        print(json.dumps(results[-1]))
    payload = {
        "benchmark": "evaluation_time",
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_average_1min_at_start": load_at_start},
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "evaluation_time.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS / 'evaluation_time.json'}")


if __name__ == "__main__":
    main()
