"""The Explore page: the projection is computed in the background and cached with the run, colouring by
missingness follows the cohort's masks, subsampling says "n of N", and a click opens the subject on the
Synthesize page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

from core.data.sources import load_data
from core.display import PALETTE
from core.workflows.projection import JOINT, missingness_patterns
from core.workflows.runs import load_run_config

TIMEOUT = 120_000



def _explore(make_window: Any, qtbot: Any, run: Path) -> Any:
    window = make_window(runs_root=run.parent)
    page = window.explore_page
    window.go_to_page(3)
    qtbot.waitUntil(lambda: page.projection is not None and not page.runner.is_running, timeout=TIMEOUT)
    assert not page.messages.has("projection"), page.messages.texts()
    return window, page


def _brush_colours(scatter: Any) -> list[str]:
    return [QColor(p.brush().color()).name() for p in scatter.points()]


def test_projection_in_the_background_coloured_by_missingness(make_window: Any, qtbot: Any, trained_run: Path) -> None:
    window, page = _explore(make_window, qtbot, trained_run)
    projection = page.projection
    loaded = load_data(load_run_config(trained_run / "config.yaml").data)
    dataset = loaded.dataset
    assert page.caption.text().startswith("PCA of the posterior means · showing 16 of 16 subjects")
    # Colouring by missingness matches the cohort's masks, point by point.
    assert page.colour_by.currentData() == "missingness"
    index = {s: i for i, s in enumerate(dataset.ids)}
    masks = np.stack([dataset.masks[m].numpy() for m in projection.modalities], axis=1)
    expected = missingness_patterns(masks[[index[s] for s in projection.subjects]], projection.modalities)
    column = projection.colours["missingness"]
    assert column.labels() == expected
    scatter = page.plot.scatters[JOINT]
    subjects = [p.data() for p in scatter.points()]
    assert sorted(subjects) == sorted(dataset.ids)
    colour_of = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(column.categories)}
    shown = dict(zip(subjects, _brush_colours(scatter), strict=True))
    for s in subjects:
        assert shown[s] == colour_of[expected[projection.subjects.index(s)]]
    # The legend lists exactly the patterns present.
    legend = [label.text for _, label in page.plot.legend.items]
    assert sorted(legend) == sorted(set(expected))
    # The tooltip says the pattern is what the subject has, not a "missingness" it lacks.
    first = projection.subjects[0]
    tip = page.plot._tip(0.0, 0.0, first)
    assert f"has {expected[0].replace('+', ', ')}" in tip and "missingness" not in tip
    assert page.colour_by.currentText().startswith("Modalities present")
    # One plot per modality, with a point exactly for the subjects that have it.
    for m in projection.modalities:
        points = {p.data() for p in page.plot.scatters[m].points()}
        assert points == {s for s in dataset.ids if bool(dataset.masks[m][index[s]])}
    # Participants columns and the split are colour choices too.
    choices = [page.colour_by.itemData(i) for i in range(page.colour_by.count())]
    assert {"missingness", "split", "site", "age", "lesion_present"} <= set(choices)
    page.set_colour_by("site")
    assert sorted(label.text for _, label in page.plot.legend.items) == sorted(set(projection.colours["site"].labels()))
    # Cached in the run folder: computing again reads it back.
    assert list((trained_run / "projections").glob("pca-*.npz"))
    page.compute()
    qtbot.waitUntil(lambda: not page.runner.is_running, timeout=TIMEOUT)
    assert page.projection.from_cache and "read from the run's cache" in page.caption.text()


def test_subsampled_projection_says_n_of_n(make_window: Any, qtbot: Any, trained_run: Path) -> None:
    window, page = _explore(make_window, qtbot, trained_run)
    page.max_points.setValue(6)
    page.max_points.editingFinished.emit()
    qtbot.waitUntil(lambda: page.projection.n_shown == 6 and not page.runner.is_running, timeout=TIMEOUT)
    assert "showing 6 of 16 subjects" in page.caption.text()
    assert len(page.plot.scatters[JOINT].points()) == 6


def test_click_on_a_point_opens_the_subject_on_the_synthesize_page(make_window: Any, qtbot: Any, trained_run: Path) -> None:
    window, page = _explore(make_window, qtbot, trained_run)
    subject = page.projection.subjects[3]
    scene = page.plot.scene_position(JOINT, subject)
    viewport = page.plot.graphics.viewport()
    point = page.plot.graphics.mapFromScene(scene)
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=point)
    synth = window.synthesize_page
    qtbot.waitUntil(lambda: window.current_page() is synth, timeout=5000)
    qtbot.waitUntil(lambda: synth.result is not None and not synth.runner.is_running, timeout=TIMEOUT)
    assert synth.current_subject() == subject and synth.result.subject == subject
    assert page.plot.selected == subject
    assert synth.run_picker.current_run() == trained_run
