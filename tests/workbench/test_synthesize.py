"""The Synthesize page end to end (open the demo, train from the GUI, explore, synthesize, export), the
uncertainty map (zero for one sample, positive for several), leave-one-out metrics that are core's metrics,
a cancellable batch export that leaves nothing behind, the per-modality verdict and the export gate it drives,
and the linked orthogonal viewer (3D and 2D) with its colour bars."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import QMessageBox

import workbench.pages.synthesize as synthesize_module
from core.metrics import mse, psnr, ssim
from core.workflows.synthesis import METRIC_COLUMNS, PASS_FRACTION
from workbench.pages.synthesize import UNCERTAINTY_UNITS
from workbench.widgets.ortho_viewer import OrthoViewer, Panel

TIMEOUT = 120_000



def _synthesize_page(make_window: Any, qtbot: Any, runs_root: Path) -> tuple[Any, Any]:
    window = make_window(runs_root=runs_root)
    page = window.synthesize_page
    window.go_to_page(4)
    qtbot.waitUntil(lambda: page.context is not None and not page.runner.is_running, timeout=TIMEOUT)
    assert not page.messages.has("run"), page.messages.texts()
    return window, page


def _generate(page: Any, qtbot: Any, button: Any) -> None:
    with qtbot.waitSignal(page.runner.done, timeout=TIMEOUT):
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert not page.messages.has("generate"), page.messages.texts()


def _subject_lacking(page: Any) -> str:
    ctx = page.context
    return next(s for s in ctx.dataset.ids if 2 <= len(ctx.observed(s)) < len(ctx.modalities))


def _wait_batch(page: Any, qtbot: Any) -> None:
    qtbot.waitUntil(lambda: not page.batch_runner.is_running and not page.batch_runner._threads, timeout=TIMEOUT)


def test_end_to_end_train_explore_synthesize_export(make_window: Any, qtbot: Any, tmp_path: Path) -> None:
    """The whole workflow through the real widgets, with assertions on every file written."""
    window = make_window()
    with qtbot.waitSignal(window.state.cohort_changed, timeout=TIMEOUT):
        window.data_page.open_demo()
    model = window.model_page
    model.select_model("MVAE")
    model.model_form.set_values({"latent_dim": 4})
    model.training_form.set_values({"num_epochs": 1, "batch_size": 4})
    model.validate()
    assert window.state.start_blocker is None, window.state.start_blocker
    window.go_to_page(2)
    train = window.train_page
    with qtbot.waitSignal(train.run_started, timeout=5000):
        qtbot.mouseClick(train.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: train.job is None and train._phase == "idle", timeout=TIMEOUT)
    assert train.messages.has("result"), train.messages.texts()
    run_dir = Path(train._run_id)
    # Explore: the new run is picked up and projected in the background.
    window.go_to_page(3)
    explore = window.explore_page
    qtbot.waitUntil(lambda: explore.projection is not None and not explore.runner.is_running, timeout=TIMEOUT)
    assert explore.run_picker.current_run() == run_dir
    assert "showing 16 of 16 subjects" in explore.caption.text()
    # Synthesize: a subject that lacks a modality, 4 samples.
    window.go_to_page(4)
    page = window.synthesize_page
    qtbot.waitUntil(lambda: page.context is not None and not page.runner.is_running, timeout=TIMEOUT)
    subject = _subject_lacking(page)
    assert page.select_subject(subject)
    missing = page.context.missing(subject)
    assert [m for m, box in page.condition_boxes.items() if not box.isEnabled()] == missing
    page.samples.setValue(4)
    _generate(page, qtbot, page.generate_button)
    assert set(page.result.results) == set(missing)
    target = page.shown_modality()
    assert target in missing
    assert [p.title for p in page.viewer.panels] == ["real", "synthesized", "difference", "uncertainty"]
    assert page.viewer.arrays[0] is None and page.viewer.arrays[1] is not None  # no real volume for a missing one
    assert page.metric_value(target, "no real volume", "Metric") == "no real volume"
    # Export the shown volume with its uncertainty map: source geometry, sidecar provenance.
    out = tmp_path / "one" / f"{subject}_{target}.nii.gz"
    out.parent.mkdir()
    page.with_uncertainty.setChecked(True)
    page.export_current(str(out), confirmed=True)  # the export gate has its own test
    _wait_batch(page, qtbot)
    assert not page.messages.has("export") or "Exported" in page.messages.texts()[0], page.messages.texts()
    record = page.context.records[subject]
    source = nib.load(record.modalities[record.reference_modality].path)
    written = nib.load(out)
    assert written.shape == source.shape
    assert np.allclose(written.affine, source.affine, atol=1e-5)
    assert int(written.header["sform_code"]) == int(source.header["sform_code"]) or int(source.header["sform_code"]) == 0
    std = nib.load(out.with_name(f"{subject}_{target}_std.nii.gz"))
    assert std.shape == source.shape and float(np.asarray(std.dataobj).max()) > 0
    sidecar = json.loads(out.with_name(f"{subject}_{target}.json").read_text())
    assert sidecar["synthetic"] is True and sidecar["subject"] == subject and sidecar["modality"] == target
    assert sidecar["model"] == "MVAE" and sidecar["n_samples"] == 4
    assert sidecar["conditioning_modalities"] == page.result.conditioning
    assert Path(sidecar["run"]) == run_dir.resolve()
    assert sidecar["reference"]["shape"] == list(source.shape)
    # Batch export of every missing modality, the metrics CSV and the report.
    folder = tmp_path / "all"
    page.export_all_missing(str(folder), confirmed=True)
    _wait_batch(page, qtbot)
    ctx = page.context
    expected = {f"{s}_{m}_synth.nii.gz" for s in ctx.dataset.ids for m in ctx.missing(s) if ctx.observed(s)}
    assert {p.name for p in folder.glob("*_synth.nii.gz")} == expected
    assert len(list(folder.glob("*_synth.json"))) == len(expected)
    assert "Wrote" in page.export_label.text()
    csv_path = tmp_path / "metrics.csv"
    page.write_metrics_csv(str(csv_path))
    _wait_batch(page, qtbot)
    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0]) == METRIC_COLUMNS
    assert {r["subject"] for r in rows} == {s for s in ctx.dataset.ids if len(ctx.observed(s)) >= 2}
    report = tmp_path / "report.html"
    page.write_report(str(report))
    _wait_batch(page, qtbot)
    assert report.is_file() and "<h2>Latent space</h2>" in report.read_text()
    assert not any(p.name.startswith(".") for p in folder.iterdir())


def test_uncertainty_is_zero_for_one_sample_and_positive_for_several(make_window: Any, qtbot: Any, trained_run: Path) -> None:
    window, page = _synthesize_page(make_window, qtbot, trained_run.parent)
    assert page.select_subject(_subject_lacking(page))
    page.samples.setValue(1)
    _generate(page, qtbot, page.generate_button)
    assert page.result.n_samples == 1
    for item in page.result.results.values():
        assert np.all(item.std == 0)
    uncertainty = page.viewer.arrays[3]
    assert uncertainty is not None and np.all(uncertainty == 0)
    page.samples.setValue(5)
    _generate(page, qtbot, page.generate_button)
    for item in page.result.results.values():
        assert float(item.std.mean()) > 0
    assert float(page.viewer.arrays[3].max()) > 0
    assert "std over 5 samples" in page.viewer.panels[3].note
    # The uncertainty map has a colour bar in its units, spanning the column's window.
    assert page.viewer.panels[3].units == UNCERTAINTY_UNITS
    bar = page.viewer.colour_bars[3]
    assert bar.isVisible() and bar.axis.labelText == UNCERTAINTY_UNITS
    assert bar.levels() == pytest.approx(tuple(page.viewer.views[3]["axial"].image.levels))


def _accept(dialog: QMessageBox) -> Any:
    return next(b for b in dialog.buttons() if dialog.buttonRole(b) == QMessageBox.ButtonRole.AcceptRole)


def test_a_modality_that_fails_its_check_is_exported_only_after_confirmation(
        make_window: Any, qtbot: Any, trained_run: Path, tmp_path: Path) -> None:
    window, page = _synthesize_page(make_window, qtbot, trained_run.parent)
    # The verdict is computed in the background when the run opens, from every held-out subject, and cached.
    qtbot.waitUntil(lambda: page.verdicts is not None and not page.verdict_runner.is_running, timeout=TIMEOUT)
    assert (trained_run / "synthesis_verdicts.json").is_file()
    ctx = page.context
    for m, verdict in page.verdicts.items():
        held_out = [s for s in ctx.dataset.ids if ctx.split.get(s) == verdict.split and m in ctx.observed(s)
                    and len(ctx.observed(s)) >= 2]
        assert verdict.n_subjects == len(held_out) > 0
        assert verdict.passed == (verdict.n_better >= PASS_FRACTION * verdict.n_subjects)
        assert verdict.text in page.verdict_label.text()
    subject = _subject_lacking(page)
    assert page.select_subject(subject)
    _generate(page, qtbot, page.generate_button)
    target = page.shown_modality()
    verdict = page.verdicts[target]
    assert verdict.passed is False, verdict.text  # one epoch on 16 subjects does not beat the average brain
    assert page.verdict_text(target).startswith("not better than the average brain: not for reading")
    # One volume: the gate asks; Cancel writes nothing.
    one = tmp_path / "one"
    one.mkdir()
    out = one / f"{subject}_{target}.nii.gz"
    page.export_current(str(out))
    dialog = page.gate_dialog
    assert dialog is not None and dialog.isVisible()
    assert target in dialog.text() and verdict.text in dialog.informativeText()
    assert not page.batch_runner.is_running
    qtbot.mouseClick(dialog.button(QMessageBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    assert page.gate_dialog is None and not page.batch_runner.is_running
    assert list(one.iterdir()) == [] and "nothing was written" in page.export_label.text()
    # Confirmed: written, with the verdict in the sidecar and the NIfTI description.
    page.export_current(str(out))
    qtbot.mouseClick(_accept(page.gate_dialog), Qt.MouseButton.LeftButton)
    _wait_batch(page, qtbot)
    assert out.is_file(), page.messages.texts()
    sidecar = json.loads(out.with_name(f"{subject}_{target}.json").read_text(encoding="utf-8"))
    assert sidecar["verdict"]["passed"] is False and sidecar["verdict"]["text"] == verdict.text
    descrip = nib.load(out).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert descrip.startswith(f"SYNTHETIC {target} mmvae; {verdict.short}")
    # A batch: the same gate, listing every failing modality among those it would write.
    folder = tmp_path / "batch"
    page.export_all_missing(str(folder))
    dialog = page.gate_dialog
    targets = {m for s in ctx.dataset.ids if ctx.observed(s) for m in ctx.missing(s)}
    assert dialog is not None and all(m in dialog.text() for m in targets if not page.verdicts[m].passed)
    qtbot.mouseClick(dialog.button(QMessageBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    assert not page.batch_runner.is_running and not (folder.exists() and any(folder.iterdir()))
    page.export_all_missing(str(folder))
    qtbot.mouseClick(_accept(page.gate_dialog), Qt.MouseButton.LeftButton)
    _wait_batch(page, qtbot)
    sidecars = list(folder.glob("*_synth.json"))
    assert sidecars
    for path in sidecars:
        written = json.loads(path.read_text(encoding="utf-8"))
        assert written["verdict"]["text"] == page.verdicts[written["modality"]].text
        assert written["field_of_view"] == ("whole grid (no observation mask)" if written["modality"] != "US"
                                            else ctx.fields_of_view.cohort["US"].source)


def test_leave_one_out_metrics_agree_with_core_metrics(make_window: Any, qtbot: Any, trained_run: Path) -> None:
    window, page = _synthesize_page(make_window, qtbot, trained_run.parent)
    subject = _subject_lacking(page)
    assert page.select_subject(subject)
    hidden = page.context.observed(subject)[-1]
    page.set_hidden(hidden)
    page.samples.setValue(1)
    _generate(page, qtbot, page.loo_button)
    result = page.result
    assert result.hidden == hidden and hidden not in result.conditioning
    assert page.conditioning() == result.conditioning  # the check boxes show what the model was given
    assert page.shown_modality() == hidden
    item = result.results[hidden]
    real, synthesized = page.viewer.arrays[0], page.viewer.arrays[1]
    assert np.array_equal(real, item.real[0]) and np.array_equal(synthesized, item.mean[0])
    assert np.allclose(page.viewer.arrays[2], synthesized - real)
    x, x_hat = torch.from_numpy(item.real)[None], torch.from_numpy(item.mean)[None]
    observed = torch.from_numpy(item.observed)[None] if item.observed is not None else None
    baseline = torch.from_numpy(item.mean_image)[None]
    data_range = page.context.ranges[hidden]
    expected = {
        "MSE": (mse(x, x_hat, observed), mse(x, baseline, observed)),
        "PSNR (dB)": (psnr(x, x_hat, data_range, observed), psnr(x, baseline, data_range, observed)),
        "SSIM": (ssim(x, x_hat, data_range, observed), ssim(x, baseline, data_range, observed)),
    }
    for metric, (model_value, mean_value) in expected.items():  # the table shows 4 significant digits
        assert float(page.metric_value(hidden, metric, "Model")) == pytest.approx(float(model_value[0]), rel=1e-3)
        assert float(page.metric_value(hidden, metric, "Mean")) == pytest.approx(float(mean_value[0]), rel=1e-3)
    key = {"MSE": "mse", "PSNR (dB)": "psnr", "SSIM": "ssim"}
    for metric, (model_value, mean_value) in expected.items():  # and the page computed exactly core's numbers
        assert item.metrics[key[metric]] == pytest.approx(float(model_value[0]), rel=1e-6)
        assert item.baseline[key[metric]] == pytest.approx(float(mean_value[0]), rel=1e-6)
    better = "yes" if float(expected["MSE"][0][0]) < float(expected["MSE"][1][0]) else "no"
    assert page.metric_value(hidden, "MSE", "Better") == better
    assert "leave-one-out error" in page.metrics_note.text()


def test_batch_export_can_be_cancelled_and_leaves_no_partial_files(
        make_window: Any, qtbot: Any, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    window, page = _synthesize_page(make_window, qtbot, trained_run.parent)
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "mine.nii.gz").write_bytes(b"the user's own file")
    real_export = synthesize_module.export_missing
    written_one = threading.Event()

    def export_and_wait(ctx: Any, out: str, cancel: Any = None, progress: Any = None, **kw: Any) -> Any:
        calls = {"n": 0}

        def slow_cancel() -> bool:
            if any(p.name.startswith(".mmvae-export") and any(p.rglob("*.nii.gz")) for p in Path(out).iterdir()):
                written_one.set()  # something is staged: now wait (at most 20 s) for the user's Cancel
                for _ in range(400):
                    if cancel():
                        break
                    threading.Event().wait(0.05)
            calls["n"] += 1
            return cancel()

        return real_export(ctx, out, cancel=slow_cancel, progress=progress, **kw)

    monkeypatch.setattr(synthesize_module, "export_missing", export_and_wait)
    page.export_all_missing(str(folder), confirmed=True)
    assert page.batch_progress.isVisible() and page.batch_progress.cancel_button.isEnabled()
    qtbot.waitUntil(written_one.is_set, timeout=TIMEOUT)
    with qtbot.waitSignal(page.batch_runner.cancelled, timeout=5000):
        qtbot.mouseClick(page.batch_progress.cancel_button, Qt.MouseButton.LeftButton)
    _wait_batch(page, qtbot)
    assert sorted(p.name for p in folder.iterdir()) == ["mine.nii.gz"]  # nothing half-written stays
    assert "nothing was written" in page.export_label.text()
    assert not page.batch_progress.isVisible()
    assert page.export_all_button.isEnabled()


def test_the_page_fits_1280_and_shows_only_the_chosen_subject(make_window: Any, qtbot: Any, trained_run: Path) -> None:
    """Long texts (a result title, a task's step, an export on a hospital share) never widen the window; subject
    labels read whole; picking another subject drops the previous one's views and metrics."""
    from PySide6.QtWidgets import QApplication, QStyle, QStyleOptionComboBox

    window, page = _synthesize_page(make_window, qtbot, trained_run.parent)
    qtbot.waitUntil(lambda: not page.verdict_runner.is_running, timeout=TIMEOUT)
    first = _subject_lacking(page)
    assert page.select_subject(first)
    _generate(page, qtbot, page.generate_button)
    assert page.metrics_table.rowCount() > 0 and page.viewer.panels
    share = "//hospital-share/neuroradiology/research/2024/glioma-cohort-with-a-very-long-name/" * 3
    page.result_label.setText(f"Leave one out: T2 hidden · {share} from FLAIR+T1+T2+US · N = 256")
    page.verdict_progress.start("Checking each modality against the average brain on the held-out subjects " * 3)
    page.batch_progress.start("Synthesizing and writing every missing modality")
    page.batch_progress.set_progress(7, 50, f"writing: {share}sub-012_US_synth.nii.gz")
    page.export_label.setText(f"Wrote 50 volume(s) to {share}: sub-001_US_synth.nii.gz, sub-003_US_synth.nii.gz …")
    QApplication.processEvents()
    assert page.minimumSizeHint().width() <= 1280 - window.nav.width()
    assert window.minimumSizeHint().width() <= 1280
    assert share in page.batch_progress.status.toolTip()  # the whole step is a hover away
    page.verdict_progress.finish()
    page.batch_progress.finish()
    window.resize(1280, 800)
    QApplication.processEvents()
    assert window.width() == 1280
    # Every subject label reads whole: in the closed box and in the open list.
    box = page.subject_box
    option = QStyleOptionComboBox()
    box.initStyleOption(option)
    field = box.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, option, QStyle.SubControl.SC_ComboBoxEditField, box)
    metrics = box.fontMetrics()
    labels = [box.itemText(i) for i in range(box.count())]
    assert all("lacks" in t or "complete" in t for t in labels)
    assert field.width() >= max(metrics.horizontalAdvance(t) for t in labels), labels
    assert box.view().minimumWidth() >= max(metrics.horizontalAdvance(t) for t in labels)
    tip = box.itemData(box.currentIndex(), Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith(f"{first} has {', '.join(page.context.observed(first))}")
    # Another subject: the previous subject's synthesis is gone from the views, the table and the title.
    second = next(s for s in page.subjects() if s != first)
    assert page.select_subject(second)
    assert page.result is None and page.viewer.panels == [] and page.metrics_table.rowCount() == 0
    assert second in page.viewer.message.text() and page.modality_box.count() == 0
    assert first not in page.result_label.text() and not page.export_button.isEnabled()


def _plane_sizes(viewer: OrthoViewer) -> dict[tuple[str, str], tuple[float, float]]:
    """(column, plane) -> the view's width and height in pixels, for every view drawn."""
    sizes = {}
    for panel, views in zip(viewer.panels, viewer.views, strict=True):
        for plane, view in views.items():
            rect = view.box.sceneBoundingRect()
            sizes[(panel.title, plane)] = (rect.width(), rect.height())
    return sizes


def _settle(window: Any, width: int, height: int) -> None:
    from PySide6.QtWidgets import QApplication

    window.resize(width, height)
    for _ in range(5):  # the window, then the page's layouts, then the views' graphics layout
        QApplication.processEvents()
    assert (window.width(), window.height()) == (width, height)


def _leave_one_out_at_1280(make_window: Any, qtbot: Any, runs_root: Path) -> tuple[Any, Any]:
    """The Synthesize page in a 1280x800 window after a leave-one-out check of a subject with two modalities or more."""
    window, page = _synthesize_page(make_window, qtbot, runs_root)
    qtbot.waitUntil(lambda: not page.verdict_runner.is_running, timeout=TIMEOUT)
    _settle(window, 1280, 800)
    ctx = page.context
    subject = next(s for s in page.subjects() if len(ctx.observed(s)) >= 2)
    assert page.select_subject(subject)
    page.set_hidden(ctx.observed(subject)[-1])
    _generate(page, qtbot, page.loo_button)
    return window, page


def test_at_1280_by_800_each_plane_gets_200_px_and_more_at_1920(make_window: Any, qtbot: Any, trained_run: Path) -> None:
    """The linked planes get the window: two volumes, each a row of its three planes, at least 200 px on their
    shorter side at 1280x800 (leave one out: real and synthesized; a missing modality: synthesized and uncertainty,
    with its colour bar), larger at 1920x1080. The user's choice of columns is kept; every value stays readable."""
    window, page = _leave_one_out_at_1280(make_window, qtbot, trained_run.parent)
    _settle(window, 1280, 800)
    viewer = page.viewer
    assert viewer.shown_titles() == ["real", "synthesized"] and viewer.arrangement == "rows"
    sizes = _plane_sizes(viewer)
    assert len(sizes) == 6 and min(min(size) for size in sizes.values()) >= 200, sizes
    # The readout is one line and still has every column's value, shown or not, with the units note.
    assert viewer.readout.height() <= viewer.readout.fontMetrics().height() + 6
    assert "difference" in viewer.readout.text() and "uncertainty" in viewer.readout.text()
    assert viewer.readout.toolTip() == viewer.readout.text()
    assert not viewer.controls_row.isVisible() and viewer.controls_toggle.isVisible()  # folded away, one click back
    # A missing modality: its synthesis and the uncertainty map, the colour bar beside the planes.
    assert page.select_subject(_subject_lacking(page))
    _generate(page, qtbot, page.generate_button)
    _settle(window, 1280, 800)
    assert viewer.shown_titles() == ["synthesized", "uncertainty"]
    sizes = _plane_sizes(viewer)
    assert len(sizes) == 6 and min(min(size) for size in sizes.values()) >= 200, sizes
    bar = viewer.colour_bars[3]
    assert bar.isVisible() and bar.axis.labelText == UNCERTAINTY_UNITS
    # Larger window, larger planes.
    _settle(window, 1920, 1080)
    larger = _plane_sizes(viewer)
    assert min(min(size) for size in larger.values()) >= 1.4 * min(min(size) for size in sizes.values()), larger
    # The user ticks all four: a grid (one column per volume), and that choice holds for the next synthesis.
    _settle(window, 1280, 800)
    for title in ("real", "difference"):
        qtbot.mouseClick(viewer.column_boxes[title], Qt.MouseButton.LeftButton)
    assert viewer.shown_titles() == ["real", "synthesized", "difference", "uncertainty"] and viewer.arrangement == "grid"
    assert all(views for views in viewer.views)
    _generate(page, qtbot, page.generate_button)
    assert viewer.shown_titles() == ["real", "synthesized", "difference", "uncertainty"]
    # The last ticked column cannot be unticked: something is always shown.
    for title in ("real", "synthesized", "difference", "uncertainty"):
        qtbot.mouseClick(viewer.column_boxes[title], Qt.MouseButton.LeftButton)
    assert viewer.shown_titles() == ["uncertainty"] and viewer.column_boxes["uncertainty"].isChecked()


def test_metric_headers_and_values_read_whole_at_1280(make_window: Any, qtbot: Any, trained_run: Path) -> None:
    """No header or value of the metrics table is cut, even with the side panel dragged as narrow as it goes; a
    modality without a real volume says so in one cell across the metric columns."""
    window, page = _leave_one_out_at_1280(make_window, qtbot, trained_run.parent)
    page.splitter.setSizes([10_000, 0])  # the viewer as wide as it can be
    _settle(window, 1280, 800)
    table = page.metrics_table
    header = table.horizontalHeader()
    assert table.rowCount() == 3
    padding = 2 * 6  # the style sheet's header padding on each side
    for c in range(table.columnCount()):
        text = table.horizontalHeaderItem(c).text()
        needed = max(header.sectionSizeHint(c), header.fontMetrics().horizontalAdvance(text) + padding)
        assert header.sectionSize(c) >= needed, (text, header.sectionSize(c), needed)
        for r in range(table.rowCount()):
            value = table.item(r, c).text()
            assert header.sectionSize(c) >= table.fontMetrics().horizontalAdvance(value) + 4, (value, header.sectionSize(c))
    widths = [header.sectionSize(c) for c in range(table.columnCount())]
    assert sum(widths) <= table.viewport().width() + 1, (widths, table.viewport().width())  # nothing cut at the right
    assert not table.horizontalScrollBar().isVisible()
    # Synthesize a missing modality: "no real volume" spans the metric columns and does not widen Metric.
    assert page.select_subject(_subject_lacking(page))
    _generate(page, qtbot, page.generate_button)
    row = next(r for r in range(table.rowCount()) if table.item(r, 1).text() == "no real volume")
    assert table.columnSpan(row, 1) == table.columnCount() - 1
    assert header.sectionSize(1) < table.fontMetrics().horizontalAdvance("no real volume")


def test_synthesis_failures_read_in_plain_words_on_this_page(
        make_window: Any, qtbot: Any, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    window, page = _synthesize_page(make_window, qtbot, trained_run.parent)
    qtbot.waitUntil(lambda: not page.verdict_runner.is_running, timeout=TIMEOUT)

    def denied(*args: Any, **kw: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", "/archive/locked/model.safetensors")

    def full(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(synthesize_module, "synthesize_subject", denied)
    monkeypatch.setattr(synthesize_module, "export_missing", full)
    assert page.select_subject(_subject_lacking(page))
    with qtbot.waitSignal(page.runner.failed, timeout=TIMEOUT):
        qtbot.mouseClick(page.generate_button, Qt.MouseButton.LeftButton)
    bar = page.messages.bar("generate")
    assert bar is not None and bar.message.level == "error"
    assert bar.message.text.startswith("The synthesis failed because the workbench is not allowed to use "
                                       "/archive/locked/model.safetensors. Choose a folder you can write to")
    assert "Traceback" not in bar.message.text and "PermissionError" in bar.message.details
    assert not any("synthesis" in t for t in window.data_page.messages.texts())  # on the page where it happened
    assert page.generate_button.isEnabled()
    folder = tmp_path / "out"
    page.export_all_missing(str(folder), overwrite=False, confirmed=True)
    _wait_batch(page, qtbot)
    bar = page.messages.bar("export")
    assert bar is not None and bar.message.text == ("The export failed because the disk is full. Free some space or "
                                                    "choose another folder.")
    assert not page.batch_progress.isVisible() and page.export_all_button.isEnabled()


def test_a_run_trained_on_another_cohort_says_so(make_window: Any, qtbot: Any, trained_run: Path, tiny_demo: dict[str, Any]) -> None:
    from workbench.pages._runs import other_cohort_note

    window = make_window(runs_root=trained_run.parent, demo_settings={**tiny_demo, "n_subjects": 12})
    with qtbot.waitSignal(window.state.cohort_changed, timeout=TIMEOUT):
        window.data_page.open_demo()
    explore = window.explore_page
    window.go_to_page(3)
    assert explore.current_run() == trained_run
    note = explore.messages.bar("cohort")
    assert note is not None and note.message.level == "info"
    assert note.message.text.startswith(f"{trained_run.name} was trained on demo cohort (16 subjects), not on the "
                                        "cohort open on the Data page (demo cohort)")
    qtbot.waitUntil(lambda: not explore.runner.is_running, timeout=TIMEOUT)
    page = window.synthesize_page
    window.go_to_page(4)
    assert page.messages.bar("cohort").message.text == note.message.text
    qtbot.waitUntil(lambda: page.context is not None and not page.runner.is_running, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not page.verdict_runner.is_running, timeout=TIMEOUT)
    # The same cohort as the run's: nothing to say.
    window.state.demo_settings = dict(tiny_demo)
    assert other_cohort_note(window.state, trained_run) == ""
    window.state.cohort_changed.emit()
    assert not page.messages.has("cohort") and not explore.messages.has("cohort")


def test_orthogonal_views_share_crosshair_and_window(qtbot: Any) -> None:
    viewer = OrthoViewer()
    qtbot.addWidget(viewer)
    viewer.resize(900, 600)
    viewer.show()
    rng = np.random.default_rng(0)
    real = rng.random((12, 14, 10)).astype(np.float32)
    synth = real + 0.1
    viewer.set_panels([Panel("real", real[None]), Panel("synthesized", synth[None]),
                       Panel("difference", synth - real, "difference"),
                       Panel("uncertainty", real * 0.2, "uncertainty", units="std of normalised intensity")])
    assert viewer.planes == ("axial", "coronal", "sagittal") and viewer.position == [6, 7, 5]
    # A click in the coronal view of the synthesized column moves the one crosshair (x and z).
    with qtbot.waitSignal(viewer.position_changed, timeout=2000):
        viewer.click("coronal", 3.4, 8.7)
    assert viewer.position == [3, 7, 8]
    assert [b.value() for b in viewer.coords] == [3, 7, 8]
    for views in viewer.views:
        axial = views["axial"]
        assert axial.vline.value() == pytest.approx(3.5) and axial.hline.value() == pytest.approx(7.5)
    assert np.array_equal(viewer.views[0]["axial"].image.image, real[:, :, 8])
    assert viewer.value_at("synthesized") == pytest.approx(float(synth[3, 7, 8]))
    # A real mouse click in an axial view.
    target = viewer.views[1]["axial"].box.mapViewToScene(QPointF(9.5, 2.5))
    qtbot.mouseClick(viewer.graphics.viewport(), Qt.MouseButton.LeftButton, pos=viewer.graphics.mapFromScene(target))
    assert viewer.position[:2] == [9, 2]
    # One window/level for real and synthesized; difference and uncertainty keep their own.
    viewer.set_levels(0.2, 0.6)
    assert viewer.views[0]["axial"].image.levels.tolist() == pytest.approx([0.2, 0.6])
    assert viewer.views[1]["sagittal"].image.levels.tolist() == pytest.approx([0.2, 0.6])
    assert viewer.views[2]["axial"].image.levels.tolist()[0] < 0 < viewer.views[2]["axial"].image.levels.tolist()[1]
    # Difference and uncertainty columns have colour bars over their own windows; the uncertainty's says its units.
    assert sorted(viewer.colour_bars) == [2, 3]
    assert viewer.colour_bars[3].axis.labelText == "std of normalised intensity"
    low, high = viewer.colour_bars[3].levels()
    assert low == 0 and high == pytest.approx(float(np.percentile(real * 0.2, 99)), rel=1e-5)
    assert viewer.colour_bars[2].levels() == pytest.approx(tuple(viewer.views[2]["axial"].image.levels))
    before = viewer.levels
    viewer.drag_window_level(40, 0)
    assert viewer.levels[1] - viewer.levels[0] > before[1] - before[0]
    assert viewer.window_box.value() == pytest.approx(viewer.levels[1] - viewer.levels[0], abs=1e-3)
    # Keyboard: Up moves through axial slices.
    z = viewer.position[2]
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_Up)
    assert viewer.position[2] == min(z + 1, 9)


def _four_column_grid(qtbot: Any, note: str) -> OrthoViewer:
    """A shown viewer with real, synthesized (with ``note``), difference and uncertainty columns, laid out."""
    viewer = OrthoViewer()
    qtbot.addWidget(viewer)
    viewer.resize(1000, 700)
    viewer.show()
    volume = np.random.default_rng(0).random((12, 14, 10)).astype(np.float32)
    viewer.set_panels([Panel("real", volume), Panel("synthesized", volume, note=note),
                       Panel("difference", volume - 0.5, "difference"), Panel("uncertainty", volume, "uncertainty")])
    assert viewer.arrangement == "grid"
    qtbot.waitUntil(lambda: viewer.views[0]["axial"].box.sceneBoundingRect().width() > 50)
    return viewer


def test_a_long_note_does_not_widen_its_grid_column(qtbot: Any) -> None:
    long_note = "The subject has no real FLAIR: only the uncertainty map says how sure the model is, " * 2
    viewer = _four_column_grid(qtbot, long_note)
    widths = [views["axial"].box.sceneBoundingRect().width() for views in viewer.views]
    assert max(widths) - min(widths) <= 0.1 * max(widths), widths
    title = viewer._titles[1]
    assert title.toolTip() == long_note and "…" in title.text  # the note is elided, and whole in its tooltip


def test_two_dimensional_images_show_a_single_view(qtbot: Any) -> None:
    viewer = OrthoViewer()
    qtbot.addWidget(viewer)
    image = np.arange(16 * 12, dtype=np.float32).reshape(1, 16, 12)
    viewer.set_panels([Panel("real", image), Panel("synthesized", image * 0.5), Panel("uncertainty", image * 0, "uncertainty")])
    assert viewer.is_2d and viewer.planes == ("image",)
    assert all(list(views) == ["image"] for views in viewer.views)
    viewer.click("image", 4.2, 7.9)
    assert viewer.position[:2] == [4, 7]
    assert viewer.value_at("real") == float(image[0, 4, 7])
    assert not viewer.coords[2].isEnabled()


def test_a_run_on_two_dimensional_images(make_window: Any, qtbot: Any, tmp_path: Path, train_tiny: Any) -> None:
    """2D cohorts (one slice per subject) synthesize, show in a single view per column and export with the slice axis."""
    run = train_tiny(tmp_path / "runs" / "tiny2d", {"name": "MVAE", "latent_dim": 4}, {"n_subjects": 12, "shape": [24, 24], "seed": 1})
    window, page = _synthesize_page(make_window, qtbot, run.parent)
    subject = _subject_lacking(page)
    assert page.select_subject(subject)
    page.set_hidden(page.context.observed(subject)[0])
    _generate(page, qtbot, page.loo_button)
    assert page.viewer.is_2d and page.viewer.planes == ("image",)
    assert page.viewer.arrays[0].shape == (24, 24)
    out = tmp_path / "slice.nii.gz"
    page.export_current(str(out), confirmed=True)
    _wait_batch(page, qtbot)
    record = page.context.records[subject]
    source = nib.load(record.modalities[record.reference_modality].path)
    assert nib.load(out).shape == source.shape == (24, 24, 1)
    # The dark theme redraws the views with the same content.
    window.set_theme("dark")
    assert page.viewer.arrays[0].shape == (24, 24) and page.viewer.views
    window.go_to_page(3)
    qtbot.waitUntil(lambda: window.explore_page.projection is not None and not window.explore_page.runner.is_running,
                    timeout=TIMEOUT)
    window.set_theme("light")
    assert window.explore_page.plot.scatters


def test_overlay_blends_or_checkers_synthesized_over_real_and_values_carry_units(qtbot: Any) -> None:
    viewer = OrthoViewer()
    qtbot.addWidget(viewer)
    viewer.resize(900, 600)
    viewer.show()
    real = np.zeros((16, 12, 8), np.float32)
    synth = np.ones((16, 12, 8), np.float32)
    viewer.units_note = "displayed in model space"
    viewer.set_panels([Panel("real", real, units="normalised intensity"),
                       Panel("synthesized", synth, units="normalised intensity"),
                       Panel("uncertainty", synth * 0.1, "uncertainty", units="std of normalised intensity")])
    # Side by side: no overlay column; the overlay row is offered because there are two intensity volumes.
    assert viewer.compare_row.isVisibleTo(viewer) and [p.title for p in viewer.panels] == ["real", "synthesized", "uncertainty"]
    # The readout gives every value with its units, once per run of columns in the same units, and the space shown.
    text = viewer.readout.text()
    assert "real 0  ·  synthesized 1 normalised intensity" in text
    assert "uncertainty 0.1 std of normalised intensity" in text and text.endswith("(displayed in model space)")
    # Blend: an extra column, the synthesized volume weighted by the slider, in the shared window.
    viewer.set_compare("Blend", 30)
    assert [p.title for p in viewer.panels][-1] == "overlay" and len(viewer.views) == 4
    axial = viewer.views[3]["axial"].image
    assert np.allclose(axial.image, 0.3) and viewer.compare_label.text() == "synthesized 30 %"
    assert axial.levels.tolist() == pytest.approx(list(viewer.levels))
    viewer.compare_slider.setValue(80)
    assert np.allclose(viewer.views[3]["coronal"].image.image, 0.8)
    # Checkerboard: alternating tiles of the chosen size, real in the first tile.
    viewer.set_compare("Checkerboard", 4)
    tiles = viewer.views[3]["axial"].image.image
    assert tiles[0, 0] == 0 and tiles[4, 0] == 1 and tiles[0, 4] == 1 and tiles[4, 4] == 0 and tiles[3, 3] == 0
    assert viewer.compare_label.text() == "tiles of 4 voxels"
    # A new subject's volumes keep the overlay; back to side by side drops the column.
    viewer.set_panels([Panel("real", real + 2, units="normalised intensity"), Panel("synthesized", synth, units="normalised intensity")])
    assert viewer.views[-1]["axial"].image.image[0, 0] == 2
    viewer.set_compare("Side by side")
    assert [p.title for p in viewer.panels] == ["real", "synthesized"]
    # One volume (the Data page): nothing to overlay.
    viewer.set_panels([Panel("T1", real)])
    assert not viewer.compare_row.isVisibleTo(viewer)


def test_open_in_external_viewer_hands_the_export_to_the_desktop(
        make_window: Any, qtbot: Any, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Any] = []

    class FakeDesktop:
        """Records the URL instead of launching an application."""

        answer = True

        @staticmethod
        def openUrl(url: Any) -> bool:
            opened.append(url)
            return FakeDesktop.answer

    monkeypatch.setattr(synthesize_module, "QDesktopServices", FakeDesktop)
    window, page = _synthesize_page(make_window, qtbot, trained_run.parent)
    assert not page.external_button.isEnabled()
    subject = _subject_lacking(page)
    assert page.select_subject(subject)
    _generate(page, qtbot, page.generate_button)
    assert page.viewer.units_note.startswith("displayed in model space") and "source's units" in page.viewer.units_note
    assert "normalised intensity" in page.viewer.readout.text()
    out = tmp_path / f"{subject}_{page.shown_modality()}.nii.gz"
    page.export_current(str(out), confirmed=True)
    _wait_batch(page, qtbot)
    assert out.is_file() and page.external_button.isEnabled()
    qtbot.mouseClick(page.external_button, Qt.MouseButton.LeftButton)
    assert len(opened) == 1 and opened[0].isLocalFile() and Path(opened[0].toLocalFile()) == out
    # No application for .nii.gz: the page says how to set one up, naming the file.
    FakeDesktop.answer = False
    assert page.open_in_external_viewer() is False
    assert any("No application is set to open" in t and out.name in t for t in page.messages.texts())


def test_a_cvae_run_generates_its_main_modality_and_says_which_it_cannot(make_window: Any, qtbot: Any, tmp_path: Path,
                                                                         train_tiny: Any, tiny_demo: dict[str, Any]) -> None:
    cvae = {"name": "CVAE", "latent_dim": 4, "main_modality": "T2", "conditioning_modalities": ["T1"]}
    train_tiny(tmp_path / "runs" / "tiny-cvae", cvae, {**tiny_demo, "missing": "none"})  # a CVAE needs complete subjects
    _, page = _synthesize_page(make_window, qtbot, tmp_path / "runs")
    page.set_conditioning(["T1"])
    _generate(page, qtbot, page.generate_button)
    assert set(page.result.results) == {"T2"}
    others = [m for m in page.context.modalities if m not in ("T1", "T2")]
    assert set(page.result.not_generated) == set(others)
    assert f"not generated: {', '.join(others)}" in page.result_label.text()
    assert "only 'T2'" in page.result_label.toolTip()


def test_grid_titles_start_on_one_line_whatever_their_number_of_lines(qtbot: Any) -> None:
    viewer = _four_column_grid(qtbot, "from FLAIR+T1")
    tops = [title.item.sceneBoundingRect().top() for title in viewer._titles if title is not None]
    heights = [title.item.sceneBoundingRect().height() for title in viewer._titles if title is not None]
    assert max(heights) > 1.5 * min(heights), heights  # one title has two lines (its note), the others one
    assert max(tops) - min(tops) <= 1.0, tops
