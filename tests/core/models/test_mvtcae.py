"""MVTCAE: seed defaults, shapes, the objective term by term, incomplete data, persistence, learning."""

from __future__ import annotations

import pytest
import torch

from core.models import MVTCAE, MVTCAEConfig, TrainingProgress
from core.models._shared.gaussian import kl_normal, kl_standard_normal

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training steps: 2 threads on a shared machine thrash


@pytest.fixture
def make_model(model_factory):
    return model_factory(MVTCAE)


def test_config_defaults_follow_the_seed(assert_plain_decoders):
    config = MVTCAEConfig(n_modalities=2)
    assert (config.latent_dim, config.alpha, config.beta) == (10, 0.1, 2.5)
    assert_plain_decoders(config)
    assert MVTCAE.supports_incomplete_data is True and MVTCAE.summary


def test_config_errors_name_the_key(assert_config_errors):
    assert_config_errors(MVTCAEConfig, [
        ({"n_modalities": 2, "alhpa": 0.1}, "'alhpa'.*Did you mean 'alpha'"),
        ({"n_modalities": 2, "alpha": 1.5}, "alpha"),
        ({"n_modalities": 2, "beta": -1}, "beta"),
    ])


@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(input_dims, n_samples, make_model, every_subset, assert_predictions):
    model = make_model(input_dims)
    for batch, subset, lead in every_subset(input_dims, n_samples):
        assert model.encode(batch, cond_mod=subset, N=n_samples).z.shape == (*lead, 4)
        assert model.encode(batch, cond_mod=subset, N=n_samples, flatten=True).z.shape == (n_samples * 4, 4)
        assert_predictions(model.predict(batch, cond_mod=subset, gen_mod="all", N=n_samples), input_dims, lead)


def test_posterior_is_the_product_of_experts_without_the_prior(make_model, make_batch):
    model = make_model()
    batch = make_batch()
    (mu_a, lv_a), (mu_b, lv_b) = (model.encoder_gaussian(m, batch.data[m]) for m in "ab")
    precision = (-lv_a).exp() + (-lv_b).exp()
    mean = model.encode(batch, cond_mod=["a", "b"], return_mean=True).z
    assert torch.allclose(mean, (mu_a * (-lv_a).exp() + mu_b * (-lv_b).exp()) / precision, atol=1e-5)
    assert torch.allclose(model.encode(batch, cond_mod="a", return_mean=True).z, mu_a)


def test_loss_is_the_total_correlation_objective(make_model, make_batch, vectors, under_seed):
    model = make_model(alpha=0.3, beta=2.0)
    model.eval()
    batch = make_batch()
    out = under_seed(4, model, batch)
    t = out.terms
    m = len(vectors)
    expected = (m - 0.3) / m * t["recon"] + 2.0 * ((1 - 0.3) * t["kl_prior"] + 0.3 / m * sum(t[f"kl[{k}]"] for k in vectors))
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    with torch.no_grad():
        experts = model.experts(batch)
        mu, logvar = model.product_posterior(batch, model.modalities, experts)
    assert float(t["kl_prior"]) == pytest.approx(float(kl_standard_normal(mu, logvar).mean()), rel=1e-5)
    assert float(t["kl[a]"]) == pytest.approx(float(kl_normal(mu, logvar, *experts["a"]).mean()), rel=1e-5)


def test_incomplete_samples_use_their_observed_views(make_model, make_batch, with_noise_where_missing, under_seed):
    model = make_model()
    model.eval()
    batch = make_batch(missing={"b": [0, 1], "c": [1]})
    out = under_seed(2, model, batch)
    assert torch.isfinite(out.loss)
    assert torch.equal(out.loss, under_seed(2, model, with_noise_where_missing(batch)).loss)
    # sample 1 observes 'a' only: its joint posterior is q_a itself, so KL(q(z|X) || q_a) vanishes for it
    mu, logvar = model.product_posterior(batch, model.modalities, model.experts(batch))
    mu_a, lv_a = model.encoder_gaussian("a", batch.data["a"])
    assert torch.allclose(mu[1], mu_a[1], atol=1e-6) and torch.allclose(logvar[1], lv_a[1], atol=1e-6)


def test_a_sample_with_nothing_observed_is_left_out(make_model, make_batch, under_seed):
    model = make_model()
    model.eval()
    batch = make_batch(n=4, missing={"a": [3], "b": [3], "c": [3]})
    out = under_seed(1, model, batch)
    assert torch.isfinite(out.loss) and out.batch_size == 3


def test_gradients_reach_every_parameter(make_model, make_batch, assert_finite_gradients):
    model = make_model()
    model(make_batch(missing={"b": [2]}), TrainingProgress(1, 0.5)).loss.backward()
    assert_finite_gradients(model)


def test_save_load_round_trip_gives_identical_outputs(make_model, make_batch, round_trip, under_seed):
    model = make_model()
    batch = make_batch()
    loaded = round_trip(model)
    for cond in (["a"], ["a", "b"], "all"):
        assert torch.equal(model.encode(batch, cond, return_mean=True).z, loaded.encode(batch, cond, return_mean=True).z)
    assert torch.equal(under_seed(5, model, batch).loss, under_seed(5, loaded, batch).loss)


def test_joint_nll_is_finite_also_on_incomplete_data(make_model, make_batch):
    model = make_model()
    for batch in (make_batch(), make_batch(missing={"b": [0]})):
        nll = model.compute_joint_nll(batch, K=20, batch_size_K=7)
        assert nll.shape == () and torch.isfinite(nll)


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    model = MVTCAE(toy.config(MVTCAEConfig), *toy.small_vaes())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=10)
    assert after < before
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline
