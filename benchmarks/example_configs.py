"""Wall-clock time of every example config, end to end (demo generation, preprocessing, training).

    python benchmarks/example_configs.py [--only demo_mvae]

Writes ``benchmarks/results/example_configs.json``. The target: each trains in under a minute on the
2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOAD_AT_START = round(os.getloadavg()[0], 2)  # other work on the machine skews the numbers
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="example names (file stems)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["MMVAE_CACHE_DIR"] = str(Path(scratch) / "cache")
        from core.data.sources import load_data
        from core.workflows.runs import load_run_config, train_run

        results = {}
        for path in sorted((ROOT / "examples" / "configs").glob("*.yaml")):
            if args.only and path.stem not in args.only:
                continue
            config = load_run_config(path)
            start = time.perf_counter()
            loaded = load_data(config.data)
            data_seconds = time.perf_counter() - start
            result = train_run(config, Path(scratch) / path.stem, loaded=loaded)
            total = time.perf_counter() - start
            results[path.stem] = {
                "model": config.model_name,
                "status": result.status,
                "epochs": result.epochs_completed,
                "data_seconds": round(data_seconds, 1),
                "training_seconds": round(result.seconds, 1),
                "total_seconds": round(total, 1),
                "best_validation_loss": result.best_validation_loss,
                "under_a_minute": total < 60,
            }
            print(path.stem, results[path.stem], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "example_configs.json"
    previous = json.loads(out.read_text(encoding="utf-8"))["results"] if out.is_file() and args.only else {}
    payload = {"benchmark": "example_configs", "machine": platform.platform(), "cpu_count": os.cpu_count(),
               "load_average_1min_at_start": LOAD_AT_START, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "results": {**previous, **results}}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
