"""The screenshot tour's run is configured consistently: the README pictures show no warning to correct, while the
Model page still warns about a warm-up longer than the run."""

from __future__ import annotations

from typing import Any

import pytest

from workbench.screenshots import tour_config


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
