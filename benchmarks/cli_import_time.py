"""Seconds until ``mmvae --help`` has printed, and the import time of ``core.workflows.cli`` (``python -X importtime``).

The command line adds the arguments of demo-data, evaluate and report (modules that import torch and
scikit-learn) only for the command being run, so the help and the light commands start without them. Each
measure is a fresh process; the median of ``--repeats`` runs is kept, beside a bare ``python -c pass`` (the
floor). Results go to ``benchmarks/results/cli_import_time.json``.

    python benchmarks/cli_import_time.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOAD_AT_START = round(os.getloadavg()[0], 2)  # other work on the machine skews the numbers
RESULTS = Path(__file__).resolve().parent / "results"
HELP = "import sys; from core.workflows.cli import main; sys.argv = ['mmvae', '--help']; main()"
TORCH_CHECK = ("import json, sys\nfrom core.workflows.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
               "print(json.dumps(sorted(m for m in ('torch', 'sklearn', 'scipy', 'nibabel') if m in sys.modules)))")


def _wall(code: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def _import_microseconds() -> int:
    """Cumulative import time of core.workflows.cli, as ``-X importtime`` reports it."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import core.workflows.cli"], check=True,
                            capture_output=True, text=True)
    line = next(row for row in result.stderr.splitlines() if row.rstrip().endswith("| core.workflows.cli"))
    return int(line.split("|")[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    help_times = _wall(HELP, args.repeats)
    floor = _wall("pass", args.repeats)
    printed = subprocess.run([sys.executable, "-c", TORCH_CHECK], check=True, capture_output=True, text=True).stdout
    heavy = json.loads(printed.strip().splitlines()[-1])
    result = {
        "benchmark": "cli_import_time",
        "what": "wall seconds of `mmvae --help` in a fresh process (median), and core.workflows.cli's cumulative import time",
        "repeats": args.repeats,
        "help_seconds_median": round(statistics.median(help_times), 3),
        "help_seconds_all": [round(t, 3) for t in help_times],
        "python_startup_seconds_median": round(statistics.median(floor), 3),
        "core_cli_import_ms": round(_import_microseconds() / 1000, 1),
        "heavy_modules_imported_by_help": heavy,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": LOAD_AT_START,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli_import_time.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
