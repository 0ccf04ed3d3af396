"""JMVAE: seed defaults, shapes for every subset, gradients, complete-data requirement, persistence, learning."""

from __future__ import annotations

import pytest
import torch

from core.models import (
    JMVAE,
    ConfigError,
    IncompleteDataError,
    JMVAEConfig,
    TrainingProgress,
    load,
)
from core.nn import MLPDecoder, MLPEncoder
from core.nn.joint import MultipleHeadJointEncoder


@pytest.fixture
def make_model(model_factory):
    return model_factory(JMVAE)


def test_config_defaults_follow_the_seed(assert_plain_decoders):
    config = JMVAEConfig(n_modalities=2)
    assert (config.latent_dim, config.alpha, config.warmup, config.beta) == (10, 0.1, 10, 1.0)
    assert_plain_decoders(config)
    assert JMVAE.supports_incomplete_data is False and JMVAE.summary


def test_config_errors_name_the_key(assert_config_errors):
    assert_config_errors(JMVAEConfig, [
        ({"n_modalities": 2, "alhpa": 0.1}, "'alhpa'.*Did you mean 'alpha'"),
        ({"n_modalities": 2, "alpha": -1}, "alpha"),
        ({"n_modalities": 2, "warmup": -2}, "warmup"),
    ])


@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(input_dims, n_samples, make_model, every_subset, assert_predictions):
    model = make_model(input_dims)
    for batch, subset, lead in every_subset(input_dims, n_samples):
        z = model.encode(batch, cond_mod=subset, N=n_samples).z
        assert z.shape == (*lead, 4)
        assert model.encode(batch, cond_mod=subset, N=n_samples, flatten=True).z.shape == (n_samples * 4, 4)
        assert_predictions(model.predict(batch, cond_mod=subset, gen_mod="all", N=n_samples), input_dims, lead)


def test_subset_posterior_is_the_product_of_unimodal_experts_without_prior(make_model, make_batch):
    model = make_model()
    batch = make_batch()
    mu, logvar = model.posterior_subset(batch, ["a", "b"])
    (mu_a, lv_a), (mu_b, lv_b) = (model.encoder_gaussian(m, batch.data[m]) for m in "ab")
    precision = (-lv_a).exp() + (-lv_b).exp()
    assert torch.allclose(logvar, -precision.log(), atol=1e-5)
    assert torch.allclose(mu, (mu_a * (-lv_a).exp() + mu_b * (-lv_b).exp()) / precision, atol=1e-5)
    mean = model.encode(batch, cond_mod=["a", "b"], return_mean=True).z
    assert torch.allclose(mean, mu)


def test_generation_from_the_prior_decodes(shapes, make_model):
    model = make_model(shapes["image"])
    out = model.decode(model.generate_from_prior(3))
    assert out["a"].shape == (3, 1, 16, 16) and torch.isfinite(out["a"]).all()


def test_gradients_reach_every_parameter(make_model, make_batch, assert_finite_gradients):
    model = make_model()
    loss = model(make_batch(), TrainingProgress(3, 0.5)).loss
    loss.backward()
    assert_finite_gradients(model)


def test_loss_is_the_annealed_jmvae_objective(make_model, make_batch, vectors):
    model = make_model(warmup=4, alpha=0.5, beta=2.0)
    batch = make_batch()
    torch.manual_seed(3)
    out = model(batch, TrainingProgress(1))
    t = out.terms
    assert float(t["annealing"]) == pytest.approx(0.25)
    expected = t["recon"] + 0.25 * (2.0 * t["kl_prior"] + 0.5 * sum(t[f"kl[{m}]"] for m in vectors))
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(t["neg_elbo"]) == pytest.approx(float(t["recon"] + 2.0 * t["kl_prior"]), rel=1e-5)
    assert model.start_keep_best_epoch == 5


def test_training_on_incomplete_data_fails_with_a_reason(make_model, make_batch):
    model = make_model()
    batch = make_batch(missing={"b": [1]})
    with pytest.raises(IncompleteDataError, match="joint encoder.*'b' is missing.*MVAE, MHVAE or Nexus"):
        model(batch, TrainingProgress(1))
    with pytest.raises(IncompleteDataError):
        model.compute_joint_nll(batch, K=4)


def test_imputation_on_incomplete_data_uses_the_observed_modalities(make_model, make_batch):
    model = make_model()
    batch = make_batch(missing={"b": [1]})
    out = model.predict(batch, cond_mod=["a", "c"], gen_mod="b")
    assert out["b"].shape == (5, 8)
    with pytest.raises(IncompleteDataError, match="'b'"):
        model.encode(batch, cond_mod="all")


def test_user_modules_are_used_and_recorded(tmp_path, vectors):
    encoders = {m: MLPEncoder(s, 4, hidden=(16,)) for m, s in vectors.items()}
    decoders = {m: MLPDecoder(4, s, hidden=(16,)) for m, s in vectors.items()}
    joint = MultipleHeadJointEncoder(encoders, 4, hidden=(32,))
    model = JMVAE(JMVAEConfig(n_modalities=3, latent_dim=4, input_dims=vectors), encoders, decoders, joint)
    assert model.joint_encoder is joint and model.encoders["a"] is encoders["a"]
    assert model.model_config.custom_architectures == ["decoders", "encoders", "joint_encoder"]
    model.save(tmp_path / "bundle")
    with pytest.raises(ConfigError, match="user-supplied"):
        load(tmp_path / "bundle")
    assert isinstance(load(tmp_path / "bundle", encoders=encoders, decoders=decoders, joint_encoder=joint), JMVAE)


def test_default_joint_encoder_copies_the_unimodal_encoders(make_model):
    model = make_model()
    joint_params = {id(p) for p in model.joint_encoder.parameters()}
    assert not joint_params & {id(p) for p in model.encoders.parameters()}


def test_save_load_round_trip_gives_identical_outputs(make_model, make_batch, round_trip, under_seed):
    model = make_model()
    batch = make_batch()
    loaded = round_trip(model)
    for cond in (["a"], ["a", "b"], "all"):
        assert torch.equal(model.encode(batch, cond, return_mean=True).z, loaded.encode(batch, cond, return_mean=True).z)
    first = under_seed(5, model, batch, TrainingProgress(2)).loss
    assert torch.equal(first, under_seed(5, loaded, batch, TrainingProgress(2)).loss)


def test_joint_nll_is_finite(make_model, make_batch):
    model = make_model()
    nll = model.compute_joint_nll(make_batch(), K=20, batch_size_K=7)
    assert nll.shape == () and torch.isfinite(nll)


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    encoders, decoders = toy.small_vaes()
    model = JMVAE(toy.config(JMVAEConfig, warmup=2), encoders, decoders, MultipleHeadJointEncoder(encoders, 4, hidden=(64,)))
    optimizer = torch.optim.Adam(model.parameters_for_stage(model.stages[0]), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=10, val_progress=TrainingProgress(3))
    assert after < before
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline
