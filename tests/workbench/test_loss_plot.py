"""The loss plot: terms, splits, runs, log scale, smoothing, best marker, exports."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.training import EpochRecord
from workbench.widgets.loss_plot import LossPlot, change_since_first, debiased_ema, percent_of_first


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


def _rows(n: int, start: float = 2.0e5) -> list[dict[str, float]]:
    return [{"epoch": e, "train/loss": start * (1 - 0.05 * e), "val/loss": start * (1 - 0.04 * e)} for e in range(1, n + 1)]


def test_a_drag_stops_following_and_follow_brings_new_epochs_back(qtbot: Any) -> None:
    plot = LossPlot(refresh_ms=10)
    qtbot.addWidget(plot)
    plot.resize(700, 400)
    plot.show()
    plot.add_run("run", "run", _rows(3))
    plot.flush()
    view = plot.plot_item.getViewBox()
    assert plot.is_following()
    # An accidental drag: pyqtgraph turns auto-range off; the plot says so and stops following.
    view.translateBy(x=-2.0)
    view.sigRangeChangedManually.emit(view.state["mouseEnabled"])
    assert not plot.is_following()
    for row in _rows(12)[3:]:
        plot.add_epoch("run", row)
    plot.flush()
    assert view.viewRange()[0][1] < 12  # the new epochs are off-screen ...
    assert "Follow" in plot.note.text()  # ... and the plot says how to see them
    plot.follow_button.click()
    plot.flush()
    view.updateAutoRange()
    assert plot.is_following() and view.viewRange()[0][1] >= 12
    assert plot.note.text() == ""
    # pyqtgraph's own 'A' button (auto-range) turns Follow back on too.
    view.sigRangeChangedManually.emit(view.state["mouseEnabled"])
    assert not plot.is_following()
    view.enableAutoRange()
    assert plot.is_following()


def test_hidden_runs_are_not_drawn_and_the_legend_says_which_line_is_dashed(qtbot: Any) -> None:
    plot = LossPlot(refresh_ms=10)
    qtbot.addWidget(plot)
    plot.add_run("a", "run a", _rows(3))
    plot.add_run("b", "run b", _rows(3, 1.0e5))
    plot.flush()
    assert {key[0] for key in plot.shown_curves()} == {"a", "b"}
    texts = [e.text for e in plot.legend.entries]
    assert "run a · loss, train (solid)" in texts and "run a · loss, validation (dashed)" in texts
    train = next(e for e in plot.legend.entries if e.text == "run a · loss, train (solid)")
    val = next(e for e in plot.legend.entries if e.text == "run a · loss, validation (dashed)")
    assert not train.dashed and val.dashed and train.symbol != val.symbol
    assert train.color != val.color  # distinct shades, not one colour for both
    plot.set_run_visible("a", False)
    plot.flush()
    assert {key[0] for key in plot.shown_curves()} == {"b"}
    assert not any(e.text.startswith("run a") for e in plot.legend.entries)
    assert not plot.is_run_visible("a") and plot.is_run_visible("b")


def test_relative_view_reads_as_percent_of_the_first_epoch(qtbot: Any) -> None:
    plot = LossPlot(refresh_ms=10)
    qtbot.addWidget(plot)
    plot.add_run("run", "run", [{"epoch": 1, "train/loss": 2.0e5, "val/loss": 1.9e5},
                                {"epoch": 2, "train/loss": 1.8e5, "val/loss": 1.805e5}])
    plot.set_relative(True)
    plot.flush()
    x, y = plot.shown_curves()[("run", "train", "loss")]
    assert x.tolist() == [1, 2] and np.allclose(y, [100.0, 90.0])
    assert plot.plot_item.getAxis("left").labelText == "% of epoch 1"
    assert plot.curve_data("run", "train", "loss")[1].tolist() == [2.0e5, 1.8e5]  # the data stay raw
    best = next(e.text for e in plot.legend.entries if e.symbol == "star")
    assert "\u22125.0 % since epoch 1" in best
    assert change_since_first(2.0, 2.5) == "+25.0 % since epoch 1" and change_since_first(0.0, 1.0) == ""
    assert np.isnan(percent_of_first(np.array([np.nan, 0.0]))).all()
