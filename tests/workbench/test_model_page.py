"""The Model page: any registered model (new ones without GUI changes), presets, run YAML round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import Field
from pydantic.dataclasses import dataclass

import core.models.registry as registry
from core.config import config_to_dict
from core.models import MVAE
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig
from core.workflows.runs import load_run_config, run_config_to_dict
from workbench.resources import load_presets

TIMEOUT = 60_000


def _model_names(page: Any) -> list[str]:
    from PySide6.QtCore import Qt

    return [page.model_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(page.model_list.count())]


def test_a_newly_registered_model_appears_with_its_form(make_window: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass(config=MODEL_CONFIG_DICT)
    class TinyConfig(BaseMultiVAEConfig):
        temperature: float = Field(0.5, gt=0, le=2, description="A parameter only this model has.")

    class TinyVAE(MVAE):
        name = "TinyVAE"
        config_class = TinyConfig  # type: ignore[assignment]
        supports_incomplete_data = False
        summary = "A model registered after the GUI was written."

    monkeypatch.setitem(registry._REGISTRY, "TinyVAE", TinyVAE)
    window = make_window()
    page = window.model_page
    page.populate_models()
    assert "TinyVAE" in _model_names(page)
    page.select_model("TinyVAE")
    assert page.model_form.keys() == ["latent_dim", "temperature"] + [k for k in page.model_form.keys()
                                                                        if k not in ("latent_dim", "temperature")]
    assert "only this model" in page.model_form.editor("temperature").input.toolTip()
    assert "complete data" in page.card_incomplete.text()
    page.model_form.editor("temperature").input.setText("3")
    page.validate()
    assert "temperature" in window.state.start_blocker


def test_presets_fill_the_forms(make_window: Any) -> None:
    window = make_window()
    page = window.model_page
    page.select_model("MVAE")
    presets = load_presets("MVAE")
    assert [p.name for p in page.presets()] == [p.name for p in presets]
    quick = presets[0]
    page.apply_preset(quick)
    assert {k: page.model_form.values()[k] for k in quick["model"]} == quick["model"]
    assert {k: page.training_form.values()[k] for k in quick["training"]} == quick["training"]
    # Every shipped preset is valid for its model (checked by core, through the page).
    for name in _model_names(page):
        page.select_model(name)
        for preset in page.presets():
            page.apply_preset(preset)
            page.validate()
            assert not page.model_form.errors() and not page.training_form.errors(), (name, preset.name)


def test_the_first_start_selects_the_benchmark_winner_with_its_preset(make_window: Any) -> None:
    from core.presets import recommended_start

    model, preset_name = recommended_start()
    page = make_window().model_page
    assert page.model_name() == model and page.preset_combo.currentText() == preset_name
    preset = next(p for p in load_presets(model) if p.name == preset_name)
    assert {k: page.model_form.values()[k] for k in preset["model"]} == preset["model"]
    assert {k: page.training_form.values()[k] for k in preset["training"]} == preset["training"]
    page.select_model("MVAE")  # every model's preset list opens on its Synthesis preset
    assert page.preset_combo.currentText() == "Synthesis"


def test_a_broken_recommendation_file_is_reported_and_mvae_is_chosen(make_window: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.pages.model as model_page

    def broken() -> None:
        raise ValueError("resources/presets/recommended.yaml must name the recommended 'model:'")

    monkeypatch.setattr(model_page, "recommended_start", broken)
    window = make_window()
    assert window.model_page.model_name() == "MVAE"
    assert any("recommended.yaml" in text for text in window.model_page.messages.texts())


def test_run_yaml_round_trip_through_the_gui(make_window: Any, qtbot: Any, manifest_cohort: Path, tmp_path: Path) -> None:
    first = make_window()
    with qtbot.waitSignal(first.state.cohort_changed, timeout=TIMEOUT):
        first.data_page.open_source(str(manifest_cohort))
    first.data_page.preprocessing_form.editor("target_shape").input.setText("8, 8, 8")
    first.data_page.preprocessing_form.changed.emit()
    page = first.model_page
    page.select_model("MVAE")
    page.model_form.set_values({"latent_dim": 6, "beta": 0.5})
    page.training_form.set_values({"num_epochs": 3, "seed": 7, "scheduler": "StepLR"})
    page.name_edit.setText("round-trip")
    page.validate()
    path = tmp_path / "run.yaml"
    assert page.save_yaml(path)
    config = load_run_config(path)  # the file the command line takes
    assert config.model_name == "MVAE" and config.model_params["latent_dim"] == 6
    assert config.training.seed == 7 and config_to_dict(config.data)["preprocessing"] == {"target_shape": [8, 8, 8]}
    assert "mmvae train" in path.read_text(encoding="utf-8").splitlines()[0]
    # A second window loads it: the model, the forms and the data settings all follow.
    second = make_window()
    with qtbot.waitSignal(second.state.cohort_changed, timeout=TIMEOUT):
        assert second.model_page.load_yaml(path)
    qtbot.waitUntil(lambda: second.state.preprocessing == {"target_shape": [8, 8, 8]}, timeout=TIMEOUT)
    second.model_page.validate()
    assert run_config_to_dict(load_run_config(path)) == run_config_to_dict(second.state.run_config)
    assert second.settings.recent_runs()[0] == str(path)
    # A broken file is reported inline, not raised.
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {source: demo}\nmodel: {name: MVAE, warmpu: 3}\n")
    assert not second.model_page.load_yaml(bad)
    assert "warmup" in second.model_page.messages.bar("yaml").message.text


def test_a_warmup_longer_than_the_run_is_pointed_out(make_window: Any) -> None:
    window = make_window()
    page = window.model_page
    page.select_model("MVAE")
    page.model_form.set_values({"warmup": 10}, reset_others=False)
    page.training_form.set_values({"num_epochs": 6}, reset_others=False)
    page.validate()
    bar = page.messages.bar("warmup")
    assert bar is not None and "Warmup is 10 epochs but the run trains 6" in bar.message.text
    page.model_form.set_values({"warmup": 6}, reset_others=False)
    page.validate()
    assert not page.messages.has("warmup")


def test_valid_rescaling_passes_and_problems_mark_their_field(make_window: Any, qtbot: Any, tmp_path: Path) -> None:
    """Regressions: ``uses_likelihood_rescaling`` was refused ("needs input_dims", a field the page hides) and
    ``n_modalitiez`` passed. The model is checked against the cohort's real modalities, and each problem marks
    the field its path names."""
    window = make_window()
    with qtbot.waitSignal(window.state.cohort_changed, timeout=TIMEOUT):
        window.data_page.open_demo()
    page = window.model_page
    page.select_model("MVAE")
    page.model_form.set_values({"uses_likelihood_rescaling": True}, reset_others=False)
    page.validate()
    assert window.state.start_blocker is None, window.state.start_blocker
    assert window.state.run_config is not None and window.state.run_config.model.params["uses_likelihood_rescaling"]
    # Four modalities have 10 subsets of size 2..3: k = 50 is refused by the model's check across fields,
    # which carries no location in pydantic; the problem's path still marks the k field.
    page.model_form.set_values({"k": 50}, reset_others=False)
    page.validate()
    assert "only 10 subsets" in page.model_form.errors()["k"]
    assert "model: k" in window.state.start_blocker and window.state.run_config is None
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: x\ndata: {source: demo}\nmodel: {name: MVAE, n_modalitiez: 2}\n")
    assert not page.load_yaml(typo)
    assert "Did you mean 'n_modalities'?" in page.messages.bar("yaml").message.text
