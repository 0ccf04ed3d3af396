"""The Data page: open the demo and a manifest, see the matrix and the report, view a volume, preview
preprocessing, prepare the dataset (with an HDF5 cache) in the background, and cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workbench.widgets.presence_matrix import MISSING, PRESENT, UNREADABLE

TIMEOUT = 60_000


def _open(window: Any, qtbot: Any, source: str) -> None:
    """Open a cohort and wait until the task is over; fail with the page's message if it failed."""
    page = window.data_page
    page.open_source(source)
    qtbot.waitUntil(lambda: not page.open_runner.is_running, timeout=TIMEOUT)
    assert not page.messages.has("open"), page.messages.bar("open").message.details


def test_open_the_demo_cohort_and_see_the_matrix(make_window: Any, qtbot: Any, tiny_demo: dict) -> None:
    window = make_window()
    page = window.data_page
    window.act_open_demo.trigger()
    qtbot.waitUntil(lambda: not page.open_runner.is_running, timeout=TIMEOUT)
    assert not page.messages.has("open"), page.messages.bar("open").message.details
    model = page.matrix.matrix_model
    assert model.rowCount() == tiny_demo["n_subjects"]
    assert model.columnCount() >= 2
    states = model.states
    assert (states == PRESENT).any() and (states == MISSING).any()  # the demo has missing modalities
    counts = page.matrix.counts()
    for m, n in counts.items():
        assert f"{m}\n{n}/{tiny_demo['n_subjects']}" == model.headerData(model.modalities.index(m), _horizontal())
        assert f"{m}: <b>{n}</b>" in page.counts_label.text()
    assert window.settings.recent_cohorts()[0] == "demo"
    assert "demo" in window.cohort_status.text()
    # Click a present cell: that volume is shown.
    row, col = map(int, np.argwhere(states == PRESENT)[0])
    index = model.index(row, col)
    page.matrix.clicked.emit(index)
    viewer = page.volume_view
    qtbot.waitUntil(lambda: bool(viewer.arrays), timeout=TIMEOUT)
    volume = viewer.arrays[0]
    assert volume.ndim == 3 and viewer.panels[0].title == f"{model.subjects[row]} · {model.modalities[col]}"
    # The linked orthogonal viewer: its three planes side by side, slices that scroll, a window/level to set.
    layout = viewer.graphics.ci
    assert sorted(layout.items[viewer.views[0][p].box] for p in ("axial", "coronal", "sagittal")) == [[(2, 1)], [(2, 2)], [(2, 3)]]
    viewer.set_position(1, 2, 3)
    assert np.array_equal(viewer.views[0]["axial"].image.image, np.nan_to_num(volume[:, :, 3]))
    assert np.array_equal(viewer.views[0]["sagittal"].image.image, np.nan_to_num(volume[1, :, :]))
    viewer.window_box.setValue(0.5)
    viewer.level_box.setValue(0.25)
    assert tuple(viewer.views[0]["coronal"].image.levels) == pytest.approx((0.0, 0.5))
    # The value under the crosshair says it is in the file's own units (the Synthesize page shows model space).
    assert viewer.readout.text().endswith("(source units, as stored in the file)")
    # A missing cell says so instead of failing.
    row, col = map(int, np.argwhere(states == MISSING)[0])
    page.matrix.clicked.emit(model.index(row, col))
    assert not viewer.arrays and "has no" in viewer.message.text()


def _horizontal() -> Any:
    from PySide6.QtCore import Qt

    return Qt.Orientation.Horizontal


def test_manifest_report_preview_and_prepare_with_cache(make_window: Any, qtbot: Any, manifest_cohort: Path,
                                                         tmp_path: Path) -> None:
    window = make_window()
    page = window.data_page
    _open(window, qtbot, str(manifest_cohort))
    assert page.matrix.state("sub-07", "T2") == UNREADABLE
    assert page.matrix.state("sub-02", "T2") == MISSING
    assert page.issue_tree.topLevelItemCount() >= 1
    assert page.messages.has("report")  # the unreadable file is announced, with the fix in the report
    # Preprocessing preview of one subject, before and after.
    page.preview_subject.setCurrentText("sub-00")
    page.preprocessing_form.editor("target_shape").input.setText("8, 8, 8")
    with qtbot.waitSignal(page.preview_runner.done, timeout=TIMEOUT):
        page.preview_button.click()
    view = page.preview_grid.view("T1", "preprocessed")
    assert view.array is not None and view.array.shape == (8, 8, 8)
    assert page.preview_grid.view("T1", "as stored").array.shape == (12, 12, 12)
    # An invalid setting is flagged inline and blocks the preview.
    page.preprocessing_form.editor("target_shape").input.setText("8, 8")
    page.preview_button.click()
    assert "exactly 3" in page.preprocessing_form.errors()["target_shape"]
    assert "Fix the settings" in page.preview_status.text()
    page.preprocessing_form.editor("target_shape").input.setText("8, 8, 8")
    page.preprocessing_form.changed.emit()
    # Prepare the dataset into an HDF5 cache, in the background, with progress.
    cache = tmp_path / "cohort.h5"
    page.cache_check.setChecked(True)
    page.cache_path.setText(str(cache))
    page.cache_path.editingFinished.emit()
    assert window.state.data_config_dict()["cache"] == str(cache)
    with qtbot.waitSignal(window.state.loaded_changed, timeout=TIMEOUT):
        page.prepare_button.click()
        assert page.progress.isVisibleTo(page)
    assert cache.is_file()
    assert window.state.is_loaded_current()
    assert window.state.loaded.dataset.input_dims["T1"] == (1, 8, 8, 8)
    assert "Ready" in page.dataset_summary.text()
    # The cache opens as a cohort of its own.
    _open(window, qtbot, str(cache))
    assert page.matrix.matrix_model.rowCount() == len(window.state.loaded.dataset)
    assert not page.preprocessing_form.isEnabled()


def test_cancel_while_preparing_keeps_nothing(make_window: Any, qtbot: Any, manifest_cohort: Path, tmp_path: Path) -> None:
    window = make_window()
    page = window.data_page
    _open(window, qtbot, str(manifest_cohort))
    cache = tmp_path / "cancelled.h5"
    page.cache_check.setChecked(True)
    page.cache_path.setText(str(cache))
    page.cache_path.editingFinished.emit()
    with qtbot.waitSignal(page.prepare_runner.cancelled, timeout=TIMEOUT):
        page.prepare_button.click()
        page.progress.cancel_button.click()
    assert page.messages.has("cancelled")
    assert not page.progress.isVisibleTo(page)
    assert window.state.loaded is None
    qtbot.waitUntil(lambda: not page.prepare_runner._threads, timeout=TIMEOUT)
    assert not cache.exists()
    # The page still works after a cancel.
    with qtbot.waitSignal(window.state.loaded_changed, timeout=TIMEOUT):
        page.prepare_button.click()
    assert cache.is_file()


def test_file_names_mapped_to_modalities_in_a_dialog(make_window: Any, qtbot: Any, tmp_path: Path) -> None:
    """The advice 'pass modality_patterns' done the GUI way: the failed open offers the dialog, the dialog
    suggests the files' endings, the folder opens with them, the run config and the settings keep them."""
    import nibabel as nib

    from workbench.widgets.pattern_dialog import ModalityPatternDialog

    root = tmp_path / "site"
    for i, case in enumerate(("c1", "c2", "c3")):
        for j, name in enumerate(("MPRAGE", "SPACE")):
            (root / case).mkdir(parents=True, exist_ok=True)
            data = np.random.default_rng(i * 2 + j).random((6, 6, 6)).astype(np.float32) + 1
            nib.save(nib.Nifti1Image(data, np.eye(4)), root / case / f"{case}_{name}.nii.gz")
    window = make_window()
    page = window.data_page
    page.open_source(str(root))
    qtbot.waitUntil(lambda: not page.open_runner.is_running, timeout=TIMEOUT)
    bar = page.messages.bar("open")
    assert bar is not None and "Map file names to modalities" in bar.message.text and bar.action_button is not None
    bar.action_button.click()
    dialog = page._pattern_dialog
    assert isinstance(dialog, ModalityPatternDialog) and dialog.isVisible()
    suggested = [dialog.table.item(r, 0).text() for r in range(dialog.table.rowCount())]
    assert sorted(suggested) == ["*_MPRAGE.nii.gz", "*_SPACE.nii.gz"]
    for row, pattern in enumerate(suggested):
        dialog.table.item(row, 1).setText("T1" if "MPRAGE" in pattern else "T2")
    dialog.open_button.click()
    qtbot.waitUntil(lambda: page.state.info is not None and not page.open_runner.is_running, timeout=TIMEOUT)
    assert not page.messages.has("open")
    assert page.state.info.modalities == ["T1", "T2"] and len(page.state.info.subjects) == 3
    assert page.state.data_config_dict()["modality_patterns"] == {"*_MPRAGE.nii.gz": "T1", "*_SPACE.nii.gz": "T2"}
    assert window.settings.modality_patterns(str(root)) == {"*_MPRAGE.nii.gz": "T1", "*_SPACE.nii.gz": "T2"}
    # Reopened later (recent cohorts, the next launch), the folder opens with its patterns.
    page.open_source("demo")
    qtbot.waitUntil(lambda: page.state.info is not None and page.state.info.source == "demo", timeout=TIMEOUT)
    _open(window, qtbot, str(root))
    assert page.state.info.modalities == ["T1", "T2"]
    # A file the patterns do not cover is named, with the way to map it.
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), root / "c1" / "c1_FLAIR3D.nii.gz")
    _open(window, qtbot, str(root))
    info_bar = page.messages.bar("unmatched")
    assert info_bar is not None and "c1_FLAIR3D.nii.gz" in info_bar.message.text and info_bar.action_button is not None
    info_bar.action_button.click()
    dialog = page._pattern_dialog
    rows = {dialog.table.item(r, 0).text(): dialog.table.item(r, 1).text() for r in range(dialog.table.rowCount())}
    assert rows == {"*_MPRAGE.nii.gz": "T1", "*_SPACE.nii.gz": "T2", "*_FLAIR3D.nii.gz": ""}
    dialog.reject()
