"""TELBO: seed defaults, shapes for every subset, the two stages (what trains, what is frozen, the fixed
unimodal KL), complete data for the joint stage, user modules, persistence, learning."""

from __future__ import annotations

import pytest
import torch

from core.models import IncompleteDataError, TELBOConfig, TrainingProgress
from core.models._shared.gaussian import kl_standard_normal
from core.models.telbo import TELBO
from core.nn.joint import MultipleHeadJointEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training steps: 2 threads on a shared machine thrash


@pytest.fixture
def make_model(model_factory):
    return model_factory(TELBO, warmup=2)


def test_config_defaults_follow_the_seed(assert_config_errors, vectors):
    config = TELBOConfig(n_modalities=2)
    assert (config.latent_dim, config.warmup, config.lambda_factors, config.gamma_factors) == (10, 10, None, None)
    assert config.uses_likelihood_rescaling is True and config.rescale_factors is None
    assert TELBO.supports_incomplete_data is False and TELBO.summary
    dims = {"n_modalities": 3, "input_dims": vectors}
    assert_config_errors(TELBOConfig, [
        ({**dims, "warmup": 0}, "warmup"),
        ({**dims, "lambda_factors": {"a": 1.0}}, "lambda_factors names \\['a'\\]"),
        ({**dims, "gamma_factors": {"a": 1, "b": 1, "c": 0}}, "gamma_factors"),
        ({**dims, "gama_factors": {}}, "'gama_factors'.*Did you mean 'gamma_factors'"),
    ])


def test_factors_default_to_the_rescale_factors(vectors):
    config = TELBOConfig(n_modalities=3, input_dims=vectors)
    assert [config.lambda_factor(m) for m in "abc"] == [1.0, 1.0, 8 / 5]
    given = TELBOConfig(n_modalities=3, input_dims=vectors, gamma_factors={"a": 2, "b": 3, "c": 4})
    assert [given.gamma_factor(m) for m in "abc"] == [2, 3, 4] and given.lambda_factor("c") == 8 / 5
    assert TELBOConfig(n_modalities=3, input_dims=vectors, uses_likelihood_rescaling=False).lambda_factor("c") == 1.0


@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(input_dims, n_samples, make_model, every_subset, assert_predictions):
    model = make_model(input_dims)
    for batch, subset, lead in every_subset(input_dims, n_samples):
        assert model.encode(batch, cond_mod=subset, N=n_samples).z.shape == (*lead, 4)
        assert_predictions(model.predict(batch, cond_mod=subset, gen_mod="all", N=n_samples), input_dims, lead)


def test_subset_posterior_is_the_product_of_experts_with_the_prior(make_model, make_batch):
    model = make_model()
    batch = make_batch()
    (mu_a, lv_a), (mu_b, lv_b) = (model.encoder_gaussian(m, batch.data[m]) for m in "ab")
    precision = (-lv_a).exp() + (-lv_b).exp() + 1
    mean = model.encode(batch, cond_mod=["a", "b"], return_mean=True).z
    assert torch.allclose(mean, (mu_a * (-lv_a).exp() + mu_b * (-lv_b).exp()) / precision, atol=1e-5)
    assert torch.equal(model.encode(batch, cond_mod="a", return_mean=True).z, mu_a)
    assert torch.equal(model.encode(batch, return_mean=True).z, model.joint_gaussian(batch)[0])


@pytest.mark.parametrize("stage_index", [0, 1])
def test_each_stage_trains_its_own_parameters_only(stage_index, make_model, make_batch):
    model = make_model()
    stage = model.stages[stage_index]
    model.enter_stage(stage)
    model.train()
    model(make_batch(), TrainingProgress(stage.first_epoch)).loss.backward()
    trained = {id(p) for p in model.parameters_for_stage(stage)}
    for name, p in model.named_parameters():
        if id(p) in trained:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, f"{name} is not trained in stage {stage.name} but got a gradient"
    if stage_index == 1:
        assert not model.joint_encoder.training and not model.decoders.training and model.encoders.training


def test_stage_two_is_the_sum_of_unimodal_elbos_with_their_own_kl(make_model, make_batch, vectors, under_seed):
    model = make_model()
    model.eval()
    batch = make_batch()
    out = under_seed(1, model, batch, TrainingProgress(3))
    assert model.current_stage.name == "unimodal"
    assert float(out.loss.detach()) == pytest.approx(float(sum(out.terms[f"neg_elbo[{m}]"] for m in vectors)), rel=1e-5)
    with torch.no_grad():
        kl_a = kl_standard_normal(*model.encoder_gaussian("a", batch.data["a"])).mean()
    assert float(out.terms["kl[a]"]) == pytest.approx(float(kl_a), rel=1e-5)  # q_a's own variance, not the joint's


def test_the_joint_stage_refuses_incomplete_data_and_stage_two_accepts_it(make_model, make_batch, with_noise_where_missing, under_seed):
    model = make_model()
    model.eval()
    batch = make_batch(missing={"b": [1]})
    with pytest.raises(IncompleteDataError, match="TELBO cannot train on incomplete data.*'b' is missing"):
        model(batch, TrainingProgress(1))
    with pytest.raises(IncompleteDataError):
        model.compute_joint_nll(batch, K=4)
    out = under_seed(2, model, batch, TrainingProgress(3))
    assert torch.isfinite(out.loss)
    assert torch.equal(out.loss, under_seed(2, model, with_noise_where_missing(batch), TrainingProgress(3)).loss)


def test_user_joint_encoder_is_used_and_recorded(toy):
    encoders, decoders = toy.small_vaes(width=16)
    dims = dict(toy.dims)
    joint = MultipleHeadJointEncoder(encoders, 4, hidden=(16,))
    model = TELBO(TELBOConfig(n_modalities=2, latent_dim=4, input_dims=dims), encoders, decoders, joint)
    assert model.joint_encoder is joint
    assert model.model_config.custom_architectures == ["decoders", "encoders", "joint_encoder"]


def test_save_load_round_trip_and_joint_nll(make_model, make_batch, round_trip, under_seed):
    model = make_model()
    batch = make_batch()
    loaded = round_trip(model)
    for cond in (["a"], ["a", "b"], "all"):
        assert torch.equal(model.encode(batch, cond, return_mean=True).z, loaded.encode(batch, cond, return_mean=True).z)
    assert torch.equal(under_seed(5, model, batch, TrainingProgress(1)).loss, under_seed(5, loaded, batch, TrainingProgress(1)).loss)
    nll = model.compute_joint_nll(batch, K=20, batch_size_K=7)
    assert nll.shape == () and torch.isfinite(nll)


def test_two_stage_training_beats_the_mean_baseline(toy):
    encoders, decoders = toy.small_vaes()
    model = TELBO(toy.config(TELBOConfig, warmup=5), encoders, decoders, MultipleHeadJointEncoder(encoders, 4, hidden=(64,)))
    for stage, epochs in zip(model.stages, (range(1, 6), range(6, 11)), strict=True):
        model.enter_stage(stage)
        optimizer = torch.optim.Adam(model.parameters_for_stage(stage), lr=3e-3)
        before = toy.val_loss(model, TrainingProgress(stage.first_epoch))
        for epoch in epochs:
            toy.train_epoch(model, optimizer, epoch)
        assert toy.val_loss(model, TrainingProgress(stage.first_epoch)) < before, stage.name
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline
