"""DMVAE: seed defaults, shared and private codes for every subset, generation, the objective,
incomplete data, user modules, persistence, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.models import DMVAE, DMVAEConfig, TrainingProgress
from core.nn import MLPDecoder, MLPEncoder
from core.nn.multilatent import SharedPrivateEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training steps: 2 threads on a shared machine thrash


@pytest.fixture
def make_model(model_factory):
    return model_factory(DMVAE, modalities_specific_dim=2)


def test_config_defaults_follow_the_seed(assert_plain_decoders):
    config = DMVAEConfig(n_modalities=2)
    assert (config.latent_dim, config.beta, config.modalities_specific_dim, config.modalities_specific_betas) == (10, 1.0, None, None)
    assert config.private_dim("any") == 1 and config.private_beta("any") == 1.0
    assert_plain_decoders(config)
    assert DMVAE.supports_incomplete_data is True and DMVAE.summary


def test_config_errors_name_the_key(assert_config_errors, vectors):
    dims = {"n_modalities": 3, "input_dims": vectors}
    assert_config_errors(DMVAEConfig, [
        ({**dims, "modalities_specific_dim": 0}, "modalities_specific_dim"),
        ({**dims, "modalities_specific_dim": {"a": 2}}, "modalities_specific_dim names \\['a'\\]"),
        ({**dims, "modalities_specific_betas": {"a": 1, "b": 1, "c": -1}}, "modalities_specific_betas"),
        ({**dims, "bta": 1}, "'bta'.*Did you mean 'beta'"),
    ])


def test_private_sizes_per_modality(model_factory, make_batch):
    model = model_factory(DMVAE)(modalities_specific_dim={"a": 1, "b": 3, "c": 2})
    out = model.encode(make_batch(), cond_mod="a", N=2)
    assert {m: w.shape for m, w in out.modalities_z.items()} == {"a": (2, 5, 1), "b": (2, 5, 3), "c": (2, 5, 2)}


@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(input_dims, n_samples, make_model, every_subset, assert_predictions):
    model = make_model(input_dims)
    for batch, subset, lead in every_subset(input_dims, n_samples):
        out = model.encode(batch, cond_mod=subset, N=n_samples)
        assert out.z.shape == (*lead, 4) and all(w.shape == (*lead, 2) for w in out.modalities_z.values())
        flat = model.encode(batch, cond_mod=subset, N=n_samples, flatten=True)
        assert flat.z.shape == (n_samples * 4, 4) and flat.modalities_z["a"].shape == (n_samples * 4, 2)
        assert_predictions(model.predict(batch, cond_mod=subset, gen_mod="all", N=n_samples), input_dims, lead)


def test_private_codes_come_from_the_posterior_when_observed_and_the_prior_otherwise(make_model, make_batch):
    model = make_model()
    batch = make_batch()
    shared, private = model.encode_modalities(batch, ["a"])
    out = model.encode(batch, cond_mod="a", return_mean=True)
    assert torch.equal(out.modalities_z["a"], private["a"][0])
    assert torch.equal(out.modalities_z["b"], torch.zeros(5, 2))
    # the shared code is the product of q_a with the prior expert
    mu_a, lv_a = shared["a"]
    precision = (-lv_a).exp() + 1
    assert torch.allclose(out.z, mu_a * (-lv_a).exp() / precision, atol=1e-6)


def test_generation_from_the_prior_draws_every_private_code(shapes, make_model):
    model = make_model(shapes["image"])
    generated = model.generate_from_prior(3)
    assert generated.z.shape == (3, 4) and {w.shape for w in generated.modalities_z.values()} == {(3, 2)}
    out = model.decode(generated)
    assert out["a"].shape == (3, 1, 16, 16) and torch.isfinite(out["a"]).all()
    # a code without private parts (a latent sampler's) decodes too, its private codes from the prior
    assert model.decode({"z": generated.z})["b"].shape == (3, 1, 16, 16)


def test_loss_sums_the_joint_and_cross_modal_elbos(make_model, make_batch, vectors, under_seed):
    model = make_model()
    model.eval()
    out = under_seed(3, model, make_batch())
    total = sum(out.terms[f"neg_elbo[{k}]"] for k in ["joint", *vectors])
    assert float(out.loss.detach()) == pytest.approx(float(total), rel=1e-5)
    assert set(out.terms) >= {"recon", "kl_prior", "kl_per_dim[z]", "kl_private[a]"}


def test_missing_modalities_change_nothing_and_drop_their_elbo(make_model, make_batch, with_noise_where_missing, under_seed):
    model = make_model()
    model.eval()
    batch = make_batch(missing={"b": [0, 1, 2, 3, 4]}, allow_unobserved_modalities=True)
    out = under_seed(2, model, batch)
    assert torch.isfinite(out.loss) and float(out.terms["neg_elbo[b]"]) == 0.0
    assert float(out.terms["kl_private[b]"]) == 0.0
    assert torch.equal(out.loss, under_seed(2, model, with_noise_where_missing(batch)).loss)


def test_gradients_reach_every_parameter(make_model, make_batch, assert_finite_gradients):
    model = make_model()
    model(make_batch(missing={"b": [2]}), TrainingProgress(1, 0.5)).loss.backward()
    assert_finite_gradients(model)


class FourHeads(nn.Module):
    """A user encoder in MultiVae's style, returning the four tensors as a tuple."""

    def __init__(self, d_in: int, shared: int, private: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(d_in, n) for n in (shared, shared, private, private)])

    def forward(self, x):
        return tuple(head(x) for head in self.heads)


def test_user_modules_are_used_and_recorded(vectors, make_batch):
    encoders = {m: FourHeads(s[0], 4, 3) for m, s in vectors.items()}
    decoders = {m: MLPDecoder(7, s, hidden=(16,)) for m, s in vectors.items()}
    model = DMVAE(DMVAEConfig(n_modalities=3, latent_dim=4, input_dims=vectors, modalities_specific_dim=3), encoders, decoders)
    assert model.encoders["a"] is encoders["a"]
    assert model.model_config.custom_architectures == ["decoders", "encoders"]
    assert torch.isfinite(model(make_batch()).loss)


def test_save_load_round_trip_gives_identical_outputs(make_model, make_batch, round_trip, under_seed):
    model = make_model()
    batch = make_batch()
    loaded = round_trip(model)
    for cond in (["a"], ["a", "b"], "all"):
        first, second = model.encode(batch, cond, return_mean=True), loaded.encode(batch, cond, return_mean=True)
        assert torch.equal(first.z, second.z) and torch.equal(first.modalities_z["a"], second.modalities_z["a"])
    assert torch.equal(under_seed(5, model, batch).loss, under_seed(5, loaded, batch).loss)


def test_joint_nll_is_finite_also_on_incomplete_data(make_model, make_batch):
    model = make_model()
    for batch in (make_batch(), make_batch(missing={"b": [0]})):
        nll = model.compute_joint_nll(batch, K=20, batch_size_K=7)
        assert nll.shape == () and torch.isfinite(nll)


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    encoders = {m: SharedPrivateEncoder(MLPEncoder((8,), 5, hidden=(64,)), 4) for m in toy.dims}
    decoders = {m: MLPDecoder(5, (8,), hidden=(64,)) for m in toy.dims}
    model = DMVAE(toy.config(DMVAEConfig, modalities_specific_dim=1), encoders, decoders)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=10)
    assert after < before
    torch.manual_seed(0)
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline
