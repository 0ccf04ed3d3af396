"""Bad-input and fault cases handled, written to benchmarks/results/reliability.json.

Runs the shared case list of ``tests/bad_inputs.py`` through :func:`core.data.quality.check_cohort` (what
``mmvae info`` and the Data page show) and through preparation, and counts the cases named with a fix,
and the input files changed or lost (must be 0).

Then the faults of ``tests/fault_training.py`` on a tiny training run in its own process: kill -9 at each
moment (two inside a checkpoint write), a full disk (RLIMIT_FSIZE) and a read-only run folder. A kill is
handled when the newest checkpoint holds every step before the killed one and the resumed run ends
bit-identical to an uninterrupted one; a full disk when it is one line, the last good checkpoint is kept,
its staging freed and the resumed run bit-identical; a read-only folder when it is one line and nothing
changed. Data lost counts the cases where completed work or a good checkpoint was lost.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bad_inputs import CASES, digest, unmet, write_bad_cohort  # noqa: E402
from fault_training import (  # noqa: E402
    FULL_DISK,
    KILLS,
    checkpoint_step,
    reference_run,
    run_in_subprocess,
    same_result,
    train_or_resume,
)

from core.data.quality import check_cohort  # noqa: E402
from core.data.sources import DataConfig, load_data  # noqa: E402


def _one_line(stderr: str) -> bool:
    return len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


def fault_cases(tmp: Path) -> dict[str, dict]:
    """Each fault case: what happened and whether it was handled without losing data."""
    import torch

    torch.set_num_threads(1)
    reference = reference_run(tmp / "reference")
    cases: dict[str, dict] = {}
    for name, (args, dies_in_step, _) in KILLS.items():
        run = tmp / name
        killed = run_in_subprocess(run, *args)
        kept = checkpoint_step(run)
        resumed = train_or_resume(run) == 0 and same_result(run, reference)
        cases[f"kill-9 {name}"] = {"killed_in_step": dies_in_step, "resumed_from_step": kept,
                                   "steps_redone": dies_in_step - kept, "bit_exact_after_resume": resumed,
                                   "handled": killed.returncode < 0 and kept == dies_in_step - 1 and resumed,
                                   "data_lost": kept < dies_in_step - 1}
    run = tmp / "full-disk"
    full = run_in_subprocess(run, *FULL_DISK)
    kept, staged = checkpoint_step(run), list((run / "checkpoints").glob(".*"))
    resumed = train_or_resume(run) == 0 and same_result(run, reference)
    cases["full disk (RLIMIT_FSIZE)"] = {"message": full.stderr.strip().replace(str(tmp), "<tmp>"), "resumed_from_step": kept,
                                         "bit_exact_after_resume": resumed,
                                         "handled": full.returncode == 1 and _one_line(full.stderr) and kept == 5
                                         and not staged and resumed, "data_lost": kept < 5}
    before = digest(reference)
    read_only = run_in_subprocess(reference, read_only=True)
    cases["read-only run folder"] = {"message": read_only.stderr.strip().replace(str(tmp), "<tmp>"),
                                     "handled": read_only.returncode == 1 and _one_line(read_only.stderr)
                                     and "is read-only" in read_only.stderr, "data_lost": digest(reference) != before}
    return cases


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cohort = write_bad_cohort(Path(tmp))
        before = digest(Path(tmp))
        _, report = check_cohort(cohort)
        loaded = load_data(DataConfig(source=str(cohort)))
        after = digest(Path(tmp))
    missed_report, missed_prepare = unmet(report.issues), unmet(loaded.records.issues)
    result = {
        "cases_tried": len(CASES),
        "handled_by_cohort_report": len(CASES) - len(missed_report),
        "handled_by_preparation": len(CASES) - len(missed_prepare),
        "unhandled": sorted(set(missed_report) | set(missed_prepare)),
        "subjects_loaded": len(loaded.dataset),
        "input_files_changed_or_lost": sum(before.get(k) != v for k, v in after.items()) + len(set(before) - set(after)),
        "data_lost": 0 if before == after else 1,
    }
    with tempfile.TemporaryDirectory() as tmp:
        faults = fault_cases(Path(tmp))
    result["faults"] = {
        "cases_tried": len(faults),
        "handled": sum(c["handled"] for c in faults.values()),
        "data_lost": sum(c["data_lost"] for c in faults.values()),
        "cases": faults,
    }
    out = ROOT / "benchmarks" / "results" / "reliability.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
