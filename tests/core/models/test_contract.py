"""One contract, every registered model: what the GUI and the command line rely on.

A new model registered in core.models is tested here from the day it lands.
"""

from __future__ import annotations

import inspect

import pytest
import torch

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


def short_chains(model) -> dict[str, int]:
    """``predict`` options for a model whose encoder samples by MCMC (JNF's HMC for subsets): a chain of 4
    steps instead of the default 100, since these tests are about shapes and refusals, not mixing."""
    return {"mcmc_steps": 4} if "mcmc_steps" in inspect.signature(model.encode).parameters else {}


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


def test_forward_gives_finite_loss_and_gradients(model_name, make_batch):
    model = small_model(model_name)
    model.train()
    for stage in model.stages:
        model.enter_stage(stage)
        params = model.parameters_for_stage(stage)
        output = model(make_batch(INPUT_DIMS, 6), TrainingProgress(stage.first_epoch + 1, 0.5))
        assert torch.isfinite(output.loss), stage
        model.zero_grad(set_to_none=True)
        output.loss.backward()
        reached = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
        assert reached, f"no gradient reaches the parameters of stage {stage.name}"
        for p in params:
            if p.grad is not None:
                assert torch.isfinite(p.grad).all()
        assert all(isinstance(v, torch.Tensor) for v in output.terms.values())


def test_cross_modal_prediction_shapes(model_name, make_batch, assert_predictions):
    model = small_model(model_name)
    batch = make_batch(INPUT_DIMS, 5)
    if getattr(get_model_class(model_name), "conditions_on_fixed_modalities", False):
        # A conditional model (CVAE) generates its main modality from its conditioning modalities
        # (default: the last modality from the others), and refuses anything else.
        main, cond = model.main_modality, model.conditioning_modalities
        assert (main, cond) == ("c", ["a", "b"])
        for cond_mod in (cond, "all"):
            assert_predictions(model.predict(batch, cond_mod=cond_mod, gen_mod="all", N=2), {main: INPUT_DIMS[main]}, (2, 5))
        with pytest.raises(ValueError, match="lacks \\['b'\\]"):
            model.predict(batch, cond_mod=["a"], gen_mod="all")
        generated = model.decode(model.generate_from_prior({m: batch.data[m] for m in cond}, N=3))
        assert generated[main].shape == (3, 5, *INPUT_DIMS[main])
        return
    for cond in (["a"], ["a", "b"], "all"):
        assert_predictions(model.predict(batch, cond_mod=cond, gen_mod="all", N=2, **short_chains(model)), INPUT_DIMS, (2, 5))
    generated = model.decode(model.generate_from_prior(3))
    assert generated["b"].shape == (3, 1, 8, 8)


def test_eval_mode_is_deterministic_given_the_seed(model_name, make_batch, under_seed):
    model = small_model(model_name)
    model.eval()
    batch = make_batch(INPUT_DIMS, 6)
    first = under_seed(1, model, batch).loss
    assert torch.equal(first, under_seed(1, model, batch).loss)


def test_missing_modality_values_do_not_matter_or_incomplete_data_is_refused(model_name, make_batch, under_seed):
    model = small_model(model_name)
    model.eval()
    batch = make_batch(INPUT_DIMS, 6, missing={"b": [0, 2, 4], "c": [1]})
    if not model.supports_incomplete_data:
        with pytest.raises(IncompleteDataError, match="missing"):
            model(batch)
        return
    changed = dict(batch)
    changed["data"] = {**batch.data, "b": batch.data["b"] + 100 * (~batch.masks["b"]).float().view(-1, 1, 1, 1)}
    loss = under_seed(2, model, batch).loss
    assert torch.allclose(loss, under_seed(2, model, changed).loss)


def test_bundle_round_trip(model_name, tmp_path):
    model = small_model(model_name)
    model.save(tmp_path / "bundle")
    loaded = load(tmp_path / "bundle")
    assert type(loaded) is type(model)
    assert config_to_dict(loaded.model_config) == config_to_dict(model.model_config)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_model_says_beforehand_which_generations_it_cannot_do(model_name, make_batch):
    """``cannot_generate`` is None exactly for the (conditioning, target) pairs ``predict`` serves."""
    model = small_model(model_name)
    batch = make_batch(INPUT_DIMS, 3)
    conditionings = (["a"], ["b"], ["a", "b"], ["a", "c"], "all")
    targets = ("a", "b", "c", "all")
    served = 0
    for cond in conditionings:
        for target in targets:
            reason = model.cannot_generate(cond, target)
            if reason is None:
                served += 1
                out = model.predict(batch, cond_mod=cond, gen_mod=target, **short_chains(model))
                assert set(out) == {target} if target != "all" else len(out) > 0
            else:
                assert isinstance(reason, str) and reason
                with pytest.raises(ValueError):
                    model.predict(batch, cond_mod=cond, gen_mod=target, **short_chains(model))
    fixed = getattr(get_model_class(model_name), "conditions_on_fixed_modalities", False)
    assert served == (len(conditionings) * len(targets) if not fixed else 4)  # a CVAE: c or 'all' from a+b or all
    with pytest.raises(ValueError, match="Unknown modalities"):
        model.cannot_generate(["a"], ["nope"])
