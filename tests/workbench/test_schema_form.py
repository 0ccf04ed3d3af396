"""Forms generated from config schemas: every registered model, the trainer and preprocessing."""

from __future__ import annotations

from typing import Any

import pytest

from core.data.preprocessing.config import PreprocessingConfig
from core.models import available, config_schema, get_model_class
from core.models.config import config_to_dict
from core.training import TrainerConfig
from workbench.pages.model import DATA_FILLED_KEYS
from workbench.widgets.schema_form import NO_DEFAULT, SchemaForm, fields_named_in, parse_schema


def _below_minimum(form: SchemaForm) -> tuple[str, str] | None:
    for key, editor in form.editors.items():
        spec = editor.spec
        if spec.kind in ("int", "float") and spec.minimum is not None:
            return key, str(int(spec.minimum) - 1 if spec.kind == "int" else spec.minimum - 1.0)
        if spec.kind in ("int", "float") and spec.exclusive_minimum is not None:
            return key, str(spec.exclusive_minimum)
    return None


@pytest.mark.parametrize("name", available())
def test_every_registered_model_gets_a_form_that_rejects_an_invalid_value(qtbot: Any, name: str) -> None:
    cls = get_model_class(name)
    form = SchemaForm(config_schema(cls.config_class), exclude=DATA_FILLED_KEYS)
    qtbot.addWidget(form)
    assert "latent_dim" in form.keys()
    assert not set(DATA_FILLED_KEYS) & set(form.keys())
    assert form.is_valid(), form.errors()
    # Every field carries its help text and default.
    for key, editor in form.editors.items():
        assert key in editor.input.toolTip()
    # A value below the declared minimum is flagged inline, under the field.
    key, bad = _below_minimum(form)
    editor = form.editor(key)
    qtbot.keyClicks(editor.input, "")  # focus
    editor.input.setText(bad)
    editor.input.textEdited.emit(bad)
    assert key in form.errors()
    assert editor.error_label.isVisibleTo(form) and editor.error_label.text().startswith("Must be")
    assert editor.input.property("invalid") is True
    # Text that is not a number is flagged too, and fixing it clears the flag.
    form.editor("latent_dim").input.setText("twelve")
    assert "not a whole number" in form.errors()["latent_dim"]
    form.set_values({})
    assert form.is_valid()


def test_values_round_trip_and_changed_only(qtbot: Any) -> None:
    form = SchemaForm(config_schema(TrainerConfig), defaults=config_to_dict(TrainerConfig()))
    qtbot.addWidget(form)
    assert form.values() == config_to_dict(TrainerConfig())
    assert form.values(changed_only=True) == {}
    unknown = form.set_values({"num_epochs": 7, "scheduler": "StepLR", "optimizer_params": {"weight_decay": 1e-5},
                               "not_a_key": 1})
    assert unknown == ["not_a_key"]
    assert form.values(changed_only=True) == {"num_epochs": 7, "scheduler": "StepLR",
                                              "optimizer_params": {"weight_decay": 1e-5}}
    # A long mapping reads from its start in its one-line editor (not cut to "…decay: 1e-05}").
    assert form.editor("optimizer_params").input.cursorPosition() == 0
    # Advanced values that differ from the defaults open the advanced section.
    assert form.advanced_box is not None and form.advanced_box.isVisibleTo(form)
    # Nullable numbers: empty means None.
    form.editor("grad_clip_norm").input.setText("")
    assert form.values()["grad_clip_norm"] is None
    form.editor("optimizer_params").input.setText("[not, a, mapping]")
    assert "mapping" in form.errors()["optimizer_params"]


def test_nested_objects_and_tuples(qtbot: Any) -> None:
    defaults = PreprocessingConfig().model_dump(mode="json")
    form = SchemaForm(PreprocessingConfig.model_json_schema(), collapsible=False, defaults=defaults)
    qtbot.addWidget(form)
    assert form.values() == {k: v for k, v in defaults.items()}
    form.editor("target_shape").input.setText("32 x 32 x 24")
    assert form.values()["target_shape"] == [32, 32, 24]
    form.editor("target_shape").input.setText("32, 32")
    assert "exactly 3" in form.errors()["target_shape"]
    normalization = form.editor("normalization").subform
    normalization.editor("method").input.setCurrentText("minmax")
    assert form.values(changed_only=True)["normalization"]["method"] == "minmax"
    PreprocessingConfig(**form.values(changed_only=True) | {"target_shape": None})


def test_external_errors_from_core_are_flagged_inline(qtbot: Any) -> None:
    form = SchemaForm(config_schema(get_model_class("MVAE").config_class), exclude=DATA_FILLED_KEYS)
    qtbot.addWidget(form)
    message = "Invalid MVAEConfig: k = 3 but only 0 subsets of size 2..1 exist for 2 modalities."
    keys = fields_named_in(message, form.keys())
    assert keys == ["k"]
    form.set_external_errors({"k": message})
    assert form.errors() == {"k": message}
    assert form.advanced_box is not None and form.advanced_box.isVisibleTo(form)  # k is advanced: shown
    form.editor("k").input.setText("0")
    form.editor("k").input.textEdited.emit("0")  # editing clears the external flag
    assert form.is_valid()


def test_defaults_from_factories_fill_the_schema_gaps() -> None:
    specs = {s.key: s for s in parse_schema(PreprocessingConfig.model_json_schema(),
                                            defaults=PreprocessingConfig().model_dump(mode="json"))}
    assert specs["observation_mask_from_nonzero"].default == ["US"]
    assert all(s.default is not NO_DEFAULT for s in specs.values())
