"""Bad-input cases handled by the cohort report, written to benchmarks/results/reliability.json.

Runs the shared case list of ``tests/bad_inputs.py`` through :func:`core.data.cohort.check_cohort` (what
``mmvae info`` and the Data page show) and through preparation, and counts the cases named with a fix,
and the input files changed or lost (must be 0).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bad_inputs import CASES, digest, unmet, write_bad_cohort  # noqa: E402

from core.data.cohort import check_cohort  # noqa: E402
from core.data.sources import DataConfig, load_data  # noqa: E402


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
    out = ROOT / "benchmarks" / "results" / "reliability.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
