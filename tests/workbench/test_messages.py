"""Feedback in user words, on the page where the action was: plain messages with a fix, details behind a
click and the traceback behind a second one; an error arriving on another page is shown where the user is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QApplication

from core.data.cohort import CohortError
from workbench.messages import MessageBar, gui_advice, plain_task_error
from workbench.workers import TaskError


def _raised(error: BaseException) -> TaskError:
    try:
        raise error
    except BaseException as caught:  # noqa: BLE001 - the test builds the error a worker would report
        return TaskError.from_exception(caught)


def test_errors_read_as_what_failed_why_and_what_to_do() -> None:
    text, details = plain_task_error("The cohort could not be opened", _raised(
        FileNotFoundError(2, "No such file or directory", "/share/cohort")))
    assert text.startswith("The cohort could not be opened because /share/cohort was not found.")
    assert "FileNotFoundError" not in text and "FileNotFoundError" in details and "Traceback" in details
    text, _ = plain_task_error("The preview failed", _raised(KeyError("T1")))
    assert "internal error (KeyError)" in text and "bug report" in text and "'T1'" not in text
    text, _ = plain_task_error("Training failed", _raised(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")))
    assert "ran out of memory" in text and "smaller batch size" in text
    # The library's own messages are kept, with command-line advice turned into what to do in the window.
    text, _ = plain_task_error("The cohort could not be opened", _raised(CohortError(
        "No image file of a known modality was found in /d (folders layout). Fix: check the folder, or pass "
        "modality_patterns (e.g. {'*_T1.nii.gz': 'T1'}) or a manifest CSV.")))
    assert "modality_patterns" not in text and "File > Open manifest" in text
    assert "'Map file names to modalities…' on the Data page" in text and "*_T1.nii.gz is T1" in text
    assert gui_advice("nothing to change") == "nothing to change"


def test_details_then_traceback_behind_a_second_click(qtbot: Any) -> None:
    _, details = plain_task_error("Training failed", _raised(KeyError("T1")))
    from workbench.messages import Message

    bar = MessageBar(Message("error", "Training failed because of an internal error.", details))
    qtbot.addWidget(bar)
    bar.show()
    assert bar.details is not None and bar.traceback is not None and bar.traceback_button is not None
    assert not bar.details.isVisible() and not bar.traceback_button.isVisible()
    bar.details_button.click()
    assert bar.details.isVisible() and bar.details.toPlainText() == "KeyError: 'T1'"
    assert bar.traceback_button.isVisible() and not bar.traceback.isVisible()
    bar.traceback_button.click()
    assert bar.traceback.isVisible() and bar.traceback.toPlainText().startswith("Traceback (most recent call last)")
    bar.details_button.click()
    assert not bar.details.isVisible() and not bar.traceback.isVisible()


def test_an_error_from_another_page_appears_on_the_page_in_use(make_window: Any, qtbot: Any, tmp_path: Path) -> None:
    window = make_window()
    window.go_to_page(1)  # the Model page: e.g. a run file whose cohort is gone asks the Data page to open it
    missing = tmp_path / "gone-cohort"
    with qtbot.waitSignal(window.data_page.open_runner.failed, timeout=30_000):
        window.data_page.open_source(str(missing))
    QApplication.processEvents()
    model = window.model_page.messages
    relayed = [k for k in model.keys() if k.startswith("from:Data:")]
    assert relayed, model.keys()
    bar = model.bar(relayed[0])
    assert bar.message.text.startswith("Data page: The cohort could not be opened")
    assert bar.action_button is not None and bar.action_button.text() == "Go to Data"
    assert not window.data_page.source_label.text().startswith("Opening")  # no stale "Opening …"
    bar.action_button.click()
    QApplication.processEvents()
    assert window.nav.currentRow() == 0 and window.data_page.messages.has("open")
    assert not any(k.startswith("from:Data:") for k in model.keys())  # shown once, on its own page now
