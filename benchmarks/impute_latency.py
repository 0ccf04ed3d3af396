"""Seconds to synthesize every missing modality of one 96x112x96 subject with N = 16 posterior samples, per model.

For every registered model (default architectures, or with ``--synthesis-preset`` the architecture of the
"Synthesis" preset the workbench trains for synthesis; untrained weights: latency does not depend on training),
one subject of the four demo modalities (T1, T2, FLAIR, US) that has T1 only gets T2, FLAIR and US
generated with :func:`core.workflows.impute.impute_subjects` (16 posterior samples decoded, their mean and
voxel-wise standard deviation), the call the workbench's Synthesize page and ``mmvae impute`` make. A CVAE,
which generates only its main modality, gets it from the three others. Each model runs in a fresh process
(its own peak memory): one burn-in call, then ``--repeats`` timed calls.
Results go to ``benchmarks/results/impute_latency.json``.

    python benchmarks/impute_latency.py [--samples 16] [--repeats 3] [--device cpu] [--only MVAE JMVAE] [--synthesis-preset]
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
SHAPE = (96, 112, 96)
MODALITIES = ("T1", "T2", "FLAIR", "US")
OBSERVED = ("T1",)


def _measure(name: str, samples: int, repeats: int, device_name: str, use_preset: bool, queue: mp.Queue) -> None:
    try:
        import torch

        from core.data.dataset import IncompleteDataset
        from core.models import config_from_dict, get_model_class
        from core.presets import synthesis_preset
        from core.training import select_device
        from core.workflows.impute import impute_subjects

        torch.manual_seed(0)
        device = select_device(device_name)
        dims = {m: (1, *SHAPE) for m in MODALITIES}
        cls = get_model_class(name)
        preset = synthesis_preset(name) if use_preset else None
        settings = {**(preset["model"] if preset else {}), "n_modalities": len(MODALITIES), "input_dims": dims}
        model = cls(config_from_dict(cls.config_class, settings)).to(device)
        model.eval()
        data = {m: torch.randn(1, *dims[m]) for m in MODALITIES}
        observed = OBSERVED
        if model.cannot_generate(list(OBSERVED), [m for m in MODALITIES if m not in OBSERVED]):
            # Tied to fixed modalities (a CVAE): the one target it generates, from all the others.
            target = next(m for m in MODALITIES if model.cannot_generate([n for n in MODALITIES if n != m], [m]) is None)
            observed = tuple(n for n in MODALITIES if n != target)
        masks = {m: torch.tensor([m in observed]) for m in MODALITIES}
        subject = IncompleteDataset(data, masks, ids=["sub-001"], allow_unobserved_modalities=True)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        def once() -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = impute_subjects(model, subject, n_samples=samples)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            assert sorted(result.mean["sub-001"]) == sorted(m for m in MODALITIES if m not in observed)
            return seconds

        once()  # burn-in: allocator, kernels, lazy initialisation
        times = [once() for _ in range(repeats)]
        queue.put({
            "model": name,
            "architecture": "Synthesis preset" if preset else "default",
            "seconds_median": round(statistics.median(times), 3),
            "seconds_min": round(min(times), 3),
            "seconds_all": [round(t, 3) for t in times],
            "observed": list(observed),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
            "rss_before_gb": round(rss_before / 1024**2, 2),
            "device": str(device),
        })
    except Exception as error:  # a model that cannot run is reported, not hidden
        queue.put({"model": name, "error": f"{type(error).__name__}: {error}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16, help="posterior samples per synthesis (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the burn-in (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--only", nargs="*", help="model names (default: every registered model)")
    parser.add_argument("--synthesis-preset", action="store_true", help="each model's Synthesis preset architecture (default: defaults)")
    parser.add_argument("--out", default=str(RESULTS / "impute_latency.json"))
    args = parser.parse_args()

    from core.models import available

    names = args.only or available()
    context = mp.get_context("spawn")
    results = []
    for name in names:
        queue = context.Queue()
        process = context.Process(target=_measure, args=(name, args.samples, args.repeats, args.device, args.synthesis_preset, queue))
        process.start()
        result = queue.get()
        process.join()
        print(json.dumps(result), flush=True)
        results.append(result)
    import torch

    payload = {
        "benchmark": "impute_latency",
        "what": f"synthesize {len(MODALITIES) - len(OBSERVED)} missing modalities of one {'x'.join(map(str, SHAPE))} subject "
                f"from {'+'.join(OBSERVED)}, N = {args.samples} posterior samples (core.workflows.impute.impute_subjects)",
        "architecture": "each model's Synthesis preset" if args.synthesis_preset else "default architectures",
        "samples": args.samples,
        "repeats": args.repeats,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": LOAD_AT_START,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
