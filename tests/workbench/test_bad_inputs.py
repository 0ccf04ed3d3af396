"""The bad-input cases of ``tests/bad_inputs.py`` through the Data page's open path: the same cohort report
as ``mmvae info``, every case named with its fix, no traceback, the rest of the cohort shown, nothing
written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bad_inputs import CASES, HEALTHY, digest, unmet, write_bad_cohort

from core.data.quality import check_cohort
from workbench.widgets.presence_matrix import PRESENT, UNREADABLE

TIMEOUT = 60_000


def test_the_data_page_names_every_case_like_the_command_line(make_window: Any, qtbot: Any, tmp_path: Path) -> None:
    cohort = write_bad_cohort(tmp_path / "data")
    before = digest(tmp_path / "data")
    window = make_window()
    page = window.data_page
    page.open_source(str(cohort))
    qtbot.waitUntil(lambda: not page.open_runner.is_running, timeout=TIMEOUT)
    assert not page.messages.has("open"), page.messages.bar("open").message.details
    info = window.state.info
    assert unmet(info.issues) == []
    _, report = check_cohort(cohort)
    assert [str(i) for i in info.issues] == [str(i) for i in report.issues], "one report for the CLI and the GUI"
    shown = [page.issue_tree.topLevelItem(k).text(3) for k in range(page.issue_tree.topLevelItemCount())]
    for case in CASES:
        assert any(case.words in text for text in shown), case.name
    assert page.messages.has("report")
    for subject in HEALTHY:
        assert page.matrix.state(subject, "T1") == PRESENT and page.matrix.state(subject, "T2") == PRESENT
    for case in CASES:
        if case.level == "error" and case.subject and case.modality in ("T1", "T2") and case.subject != "escape":
            assert page.matrix.state(case.subject, case.modality) == UNREADABLE, case.name
    assert digest(tmp_path / "data") == before
