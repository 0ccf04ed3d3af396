"""UI responsiveness during training: the lateness of a 10 ms QTimer on the UI thread while the workbench
trains a model in its background thread (p50, p99, max), written to benchmarks/results/gui_latency.json.

    QT_QPA_PLATFORM=offscreen python benchmarks/gui_latency.py [--subjects 48] [--shape 32] [--epochs 3]

Goal: p99 <= 16 ms (one frame at 60 Hz). The run is the real window: the Data page opens the demo
cohort, the Model page is configured, the Train page is shown and, half a second later as a user would,
its Start is clicked; only the measurement is added. What the page switch and the click itself cost the
UI thread is recorded beside the phases (interactions_ms): until 2026-12-03 the switch's first paint fell
into the loading phase's first tick.
The load average before and after is recorded: on a busy machine the lateness is the scheduler's too.
The Train page's time-left estimates are recorded beside it, against the time the run really took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=48)
    parser.add_argument("--shape", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--source", help="a cohort folder or manifest instead of the demo cohort")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gui_latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    import numpy as np
    import pyqtgraph as pg
    import torch
    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtWidgets import QApplication

    from workbench.main import PYQTGRAPH_OPTIONS
    from workbench.main_window import MainWindow
    from workbench.settings import Settings
    from workbench.workers import UiThreadGarbageCollector

    pg.setConfigOptions(**PYQTGRAPH_OPTIONS)
    load_before = os.getloadavg()
    app = QApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="gui-latency-"))
    collector = UiThreadGarbageCollector(app)
    collector.start()
    window = MainWindow(Settings.at(tmp / "settings.ini"), runs_root=tmp / "runs",
                        demo_settings={"n_subjects": args.subjects, "shape": [args.shape] * 3, "seed": 0})
    window.confirm_close = False
    window.resize(1400, 900)
    window.show()
    lateness: list[float] = []
    phases: dict[str, list[float]] = {"loading": [], "running": [], "paused": [], "stopping": []}
    last = [time.perf_counter()]
    estimates: list[tuple[float, float]] = []  # (seconds since Start, the page's time left) when it changes
    shown = [""]

    def read_estimate() -> None:
        text = window.train_page.overall_label.text()
        if text == shown[0] or "t" not in started:
            return
        shown[0] = text
        match = re.search(r"about ((?:\d+:)?\d+:\d\d) left", text)
        if match:
            seconds = sum(int(part) * 60 ** i for i, part in enumerate(reversed(match.group(1).split(":"))))
            estimates.append((time.perf_counter() - started["t"], float(seconds)))

    def tick() -> None:
        now = time.perf_counter()
        value = max(0.0, (now - last[0]) * 1000 - 10)
        last[0] = now
        phase = window.train_page._phase
        if switch_lateness:
            switch_lateness.append(value)
        elif phase != "idle":
            lateness.append(value)
            phases.setdefault(phase, []).append(value)
        if len(lateness) % 25 == 0:
            read_estimate()

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(tick)
    started = {}
    interactions: dict[str, float] = {}  # what a click costs the UI thread, outside the timer's phases
    switch_lateness: list[float] = []

    def configure() -> None:
        page = window.model_page
        page.select_model("MVAE")
        page.training_form.set_values({"num_epochs": args.epochs, "batch_size": args.batch_size})
        page.model_form.set_values({"latent_dim": 16, "warmup": 1})
        page.validate()
        last[0] = time.perf_counter()
        timer.start()
        switch_lateness.append(0.0)  # ticks from here to the click are the page switch's
        window.go_to_page(2)
        QTimer.singleShot(500, click)  # as a user does: the page is on screen before Start is clicked

    def click() -> None:
        interactions["page_switch_max_ms"] = max(switch_lateness)
        switch_lateness.clear()
        started["t"] = time.perf_counter()
        window.train_page.start_button.click()
        interactions["start_click_ms"] = (time.perf_counter() - started["t"]) * 1000

    def finished(phase: str) -> None:
        if phase == "idle" and "t" in started and window.train_page.job is None:
            started["seconds"] = time.perf_counter() - started["t"]
            timer.stop()
            window.close()
            app.quit()

    window.state.cohort_changed.connect(lambda: QTimer.singleShot(200, configure))
    window.train_page.training_state_changed.connect(finished)
    window.data_page.open_source(args.source or "demo")
    app.exec()
    collector.stop()
    a = np.asarray(lateness)
    took = started.get("seconds", float("nan"))
    predicted = [at + left for at, left in estimates]  # the total each estimate implies
    errors = [100 * (total - took) / took for total in predicted]
    result = {
        "goal_p99_ms": 16.0,
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
        "ticks": int(a.size),
        "by_phase": {k: {"p99_ms": round(float(np.percentile(v, 99)), 2), "max_ms": round(float(max(v)), 2), "ticks": len(v)}
                     for k, v in phases.items() if v},
        "interactions_ms": {k: round(v, 1) for k, v in interactions.items()},
        "training_seconds": round(took, 1),
        "time_left_estimates": {
            "first_total_s": round(predicted[0], 1) if predicted else None,
            "first_error_pct": round(errors[0], 1) if errors else None,
            "median_abs_error_pct": round(float(np.median(np.abs(errors))), 1) if errors else None,
            "count": len(estimates),
            "note": "the run's total each time-left estimate implies (seconds since Start + time left) against "
                    "the seconds it took; negative: too low",
        },
        "setup": {"subjects": args.subjects, "shape": [args.shape] * 3, "epochs": args.epochs, "batch_size": args.batch_size,
                  "model": "MVAE", "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                  "platform": platform.platform(), "qpa": os.environ.get("QT_QPA_PLATFORM"),
                  "load_average_1_5_15_before": [round(v, 2) for v in load_before],
                  "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["p99_ms"] <= 16.0 else 1


if __name__ == "__main__":
    sys.exit(main())
