"""CRMVAE: seed defaults, shapes, the objective term by term, incomplete data, persistence, learning."""

from __future__ import annotations

import pytest
import torch

from core.models import CRMVAE, CRMVAEConfig, TrainingProgress

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training steps: 2 threads on a shared machine thrash


@pytest.fixture
def make_model(model_factory):
    return model_factory(CRMVAE)


def test_config_defaults_follow_the_seed(assert_plain_decoders, assert_config_errors):
    config = CRMVAEConfig(n_modalities=2)
    assert (config.latent_dim, config.beta) == (10, 2.5)
    assert_plain_decoders(config)
    assert CRMVAE.supports_incomplete_data is True and CRMVAE.summary
    assert_config_errors(CRMVAEConfig, [
        ({"n_modalities": 2, "bta": 1}, "'bta'.*Did you mean 'beta'"),
        ({"n_modalities": 2, "beta": -1}, "beta"),
    ])


@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(input_dims, n_samples, make_model, every_subset, assert_predictions):
    model = make_model(input_dims)
    for batch, subset, lead in every_subset(input_dims, n_samples):
        assert model.encode(batch, cond_mod=subset, N=n_samples).z.shape == (*lead, 4)
        assert_predictions(model.predict(batch, cond_mod=subset, gen_mod="all", N=n_samples), input_dims, lead)


def test_loss_weighs_every_term_by_one_over_m_plus_one(make_model, make_batch, vectors, under_seed):
    model = make_model(beta=2.0)
    model.eval()
    out = under_seed(4, model, make_batch())
    t = out.terms
    pi = 1 / (len(vectors) + 1)
    expected = pi * (t["recon"] + t["recon_unimodal"]) + 2.0 * pi * (t["kl_prior"] + sum(t[f"kl[{m}]"] for m in vectors))
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_incomplete_samples_use_their_observed_modalities(make_model, make_batch, with_noise_where_missing, under_seed):
    model = make_model()
    model.eval()
    batch = make_batch(missing={"b": [0, 1], "c": [1], "a": [4]})
    out = under_seed(2, model, batch)
    assert torch.isfinite(out.loss)
    assert torch.equal(out.loss, under_seed(2, model, with_noise_where_missing(batch)).loss)
    nothing = make_batch(n=4, missing={"a": [3], "b": [3], "c": [3]})
    assert under_seed(1, model, nothing).batch_size == 3


def test_gradients_reach_every_parameter(make_model, make_batch, assert_finite_gradients):
    model = make_model()
    model(make_batch(missing={"b": [2]}), TrainingProgress(1, 0.5)).loss.backward()
    assert_finite_gradients(model)


def test_save_load_round_trip_and_joint_nll(make_model, make_batch, round_trip, under_seed):
    model = make_model()
    batch = make_batch()
    loaded = round_trip(model)
    assert torch.equal(model.encode(batch, ["a", "b"], return_mean=True).z, loaded.encode(batch, ["a", "b"], return_mean=True).z)
    assert torch.equal(under_seed(5, model, batch).loss, under_seed(5, loaded, batch).loss)
    nll = model.compute_joint_nll(make_batch(missing={"b": [0]}), K=20, batch_size_K=7)
    assert nll.shape == () and torch.isfinite(nll)


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    model = CRMVAE(toy.config(CRMVAEConfig), *toy.small_vaes())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=10)
    assert after < before
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline
