"""The loss plot: terms, splits, runs, log scale, smoothing, best marker, exports."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.training import EpochRecord
from workbench.widgets.loss_plot import LossPlot, debiased_ema


def _record(epoch: int, loss: float, val: float, best: bool = False) -> EpochRecord:
    return EpochRecord(epoch, "train", {"loss": loss, "kl": loss / 10, "recon": -1.0},
                       {"loss": val, "kl": val / 10, "recon": -1.0}, 1e-3, 0.5, best)


def test_debiased_ema_is_unbiased_at_the_start() -> None:
    assert np.allclose(debiased_ema([5.0, 5.0, 5.0], 0.9), 5.0)
    assert debiased_ema([3.0, 1.0], 0.6)[0] == pytest.approx(3.0)
    assert np.isnan(debiased_ema([1.0, float("nan")], 0.5)[1])


def test_curves_terms_best_marker_and_exports(qtbot: Any, tmp_path: Path) -> None:
    plot = LossPlot(refresh_ms=10)
    qtbot.addWidget(plot)
    for epoch, (loss, val) in enumerate([(10.0, 12.0), (8.0, 9.0), (7.0, 9.5)], start=1):
        plot.add_record("run-a", _record(epoch, loss, val, best=epoch == 2))
    plot.flush()
    assert plot.terms() == ["loss", "kl", "recon"]
    assert plot.visible_terms() == ["loss"]
    x, y = plot.curve_data("run-a", "val", "loss")
    assert x.tolist() == [1, 2, 3] and y.tolist() == [12.0, 9.0, 9.5]
    assert plot.best("run-a") == (2, 9.0)
    # Every term can be shown; in log scale the non-positive term is hidden with a note.
    plot.set_terms_visible(["loss", "kl", "recon"])
    plot.flush()
    assert "recon" in plot.note.text()
    plot.set_log_y(False)
    plot.flush()
    assert plot.note.text() == ""
    # Smoothing is display-only: the raw data are unchanged.
    plot.set_smoothing(0.6)
    plot.flush()
    assert plot.curve_data("run-a", "train", "loss")[1].tolist() == [10.0, 8.0, 7.0]
    # A second run overlays; a resumed run replaces the epochs after its checkpoint.
    plot.add_run("run-b", "run b", [{"epoch": 1, "train/loss": 11.0, "val/loss": 13.0}])
    plot.add_record("run-a", _record(3, 6.5, 8.0, best=True))
    assert plot.epochs("run-a") == [1, 2, 3]
    assert plot.best("run-a") == (3, 8.0)
    csv_path = plot.export_csv(tmp_path / "curves.csv")
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert [(r["run"], r["epoch"]) for r in rows] == [("run-a", "1"), ("run-a", "2"), ("run-a", "3"), ("run b", "1")]
    assert float(rows[2]["train/loss"]) == 6.5
    png = plot.export_png(tmp_path / "curves.png", width=600)
    assert png.stat().st_size > 1000
    plot.remove_run("run-b")
    assert plot.run_ids() == ["run-a"]
