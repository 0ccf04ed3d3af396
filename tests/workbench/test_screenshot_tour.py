"""The screenshot tour's run is configured consistently: the README pictures show no warning to correct, while the
Model page still warns about a warm-up longer than the run; and a step that raises fails the tour at once."""

from __future__ import annotations

from typing import Any

import pytest

from workbench.main_window import PAGES
from workbench.screenshots import take_screenshots, tour_config


@pytest.mark.parametrize("epochs", ["", "1", "8", "20"])
def test_the_tour_configures_a_run_the_model_page_does_not_warn_about(make_window: Any, monkeypatch: pytest.MonkeyPatch,
                                                                       epochs: str) -> None:
    monkeypatch.setenv("MMVAE_SCREENSHOT_EPOCHS", epochs)
    model, training = tour_config()
    assert training["num_epochs"] == (int(epochs) if epochs else 3)
    assert 1 <= model["warmup"] <= max(1, training["num_epochs"] // 2)
    window = make_window()
    page = window.model_page
    page.select_model("MVAE")
    page.model_form.set_values(model)  # exactly as the tour sets them
    page.training_form.set_values(training)
    page.validate()
    assert not any(bar.message.level == "warning" for bar in map(page.messages.bar, page.messages.keys())), \
        page.messages.texts()
    # The warning itself is as strict as before: one epoch more of warm-up than the run trains raises it.
    page.model_form.set_values({"warmup": training["num_epochs"] + 1}, reset_others=False)
    page.validate()
    assert page.messages.has("warmup")


def test_an_exception_in_a_step_fails_the_tour_at_once(make_window: Any, tmp_path: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the app's error reporter and a ten-minute watchdog: the tour stops, names the step and the error,
    and still saves every page as it is."""
    window = make_window()
    tour = take_screenshots(window, tmp_path / "shots", timeout_ms=600_000)
    exit_codes: list[int] = []
    tour.exit_application = exit_codes.append

    def broken(name: str) -> None:
        raise RuntimeError(f"no such model {name}")

    monkeypatch.setattr(window.model_page, "select_model", broken)
    tour.step = "showing a volume on the Data page"
    tour.data_done()  # its next move is configuring the model, which now raises
    assert tour._finished and exit_codes == [1]
    assert tour.failures and tour.failures[0].startswith("RuntimeError while configuring the model: no such model MVAE")
    assert sorted(p.name for p in (tmp_path / "shots").glob("*.png")) == sorted(p.name for p in tour.saved)
    assert len(tour.saved) == len(PAGES)
