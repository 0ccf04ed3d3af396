"""One contract, every registered model: what the GUI and the command line rely on.

A new model registered in core.models is tested here from the day it lands.
"""

from __future__ import annotations

import pytest
import torch

from core.data import IncompleteDataset, MultimodalBaseDataset
from core.models import (
    IncompleteDataError,
    TrainingProgress,
    available,
    build_model,
    config_to_dict,
    get_model_class,
    load,
)
from core.models.config import config_schema

INPUT_DIMS = {"a": (6,), "b": (1, 8, 8), "c": (4,)}


def small_model(name: str):
    return build_model(name, {"n_modalities": 3, "latent_dim": 4, "input_dims": INPUT_DIMS})


def complete_batch(n: int = 6):
    return MultimodalBaseDataset({m: torch.randn(n, *s) for m, s in INPUT_DIMS.items()}).as_batch()


def incomplete_batch(n: int = 6):
    data = {m: torch.randn(n, *s) for m, s in INPUT_DIMS.items()}
    masks = {m: torch.ones(n, dtype=torch.bool) for m in INPUT_DIMS}
    masks["b"][::2] = False
    masks["c"][1] = False
    return IncompleteDataset(data, masks).as_batch()


@pytest.fixture(params=available())
def model_name(request) -> str:
    return request.param


def test_registry_lists_the_foundation_model():
    assert "MVAE" in available()


def test_config_schema_describes_every_field(model_name):
    cls = get_model_class(model_name)
    schema = config_schema(cls.config_class)
    assert schema["additionalProperties"] is False
    assert "latent_dim" in schema["properties"] and "n_modalities" in schema["required"]
    assert cls.summary, "every model needs a one-line summary for the model card"


def test_forward_gives_finite_loss_and_gradients(model_name):
    model = small_model(model_name)
    model.train()
    for stage in model.stages:
        model.enter_stage(stage)
        params = model.parameters_for_stage(stage)
        output = model(complete_batch(), TrainingProgress(stage.first_epoch + 1, 0.5))
        assert torch.isfinite(output.loss), stage
        model.zero_grad(set_to_none=True)
        output.loss.backward()
        reached = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
        assert reached, f"no gradient reaches the parameters of stage {stage.name}"
        for p in params:
            if p.grad is not None:
                assert torch.isfinite(p.grad).all()
        assert all(isinstance(v, torch.Tensor) for v in output.terms.values())


def test_cross_modal_prediction_shapes(model_name):
    model = small_model(model_name)
    batch = complete_batch(5)
    for cond in (["a"], ["a", "b"], "all"):
        out = model.predict(batch, cond_mod=cond, gen_mod="all", N=2)
        for m, shape in INPUT_DIMS.items():
            assert out[m].shape == (2, 5, *shape)
            assert torch.isfinite(out[m]).all()
    generated = model.decode(model.generate_from_prior(3))
    assert generated["b"].shape == (3, 1, 8, 8)


def test_eval_mode_is_deterministic_given_the_seed(model_name):
    model = small_model(model_name)
    model.eval()
    batch = complete_batch()
    torch.manual_seed(1)
    first = model(batch).loss
    torch.manual_seed(1)
    assert torch.equal(first, model(batch).loss)


def test_missing_modality_values_do_not_matter_or_incomplete_data_is_refused(model_name):
    model = small_model(model_name)
    model.eval()
    batch = incomplete_batch()
    if not model.supports_incomplete_data:
        with pytest.raises(IncompleteDataError, match="missing"):
            model(batch)
        return
    changed = dict(batch)
    changed["data"] = {**batch.data, "b": batch.data["b"] + 100 * (~batch.masks["b"]).float().view(-1, 1, 1, 1)}
    torch.manual_seed(2)
    loss = model(batch).loss
    torch.manual_seed(2)
    assert torch.allclose(loss, model(changed).loss)


def test_bundle_round_trip(model_name, tmp_path):
    model = small_model(model_name)
    model.save(tmp_path / "bundle")
    loaded = load(tmp_path / "bundle")
    assert type(loaded) is type(model)
    assert config_to_dict(loaded.model_config) == config_to_dict(model.model_config)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
