"""Nexus: seed defaults, two-level shapes, forced perceptual dropout (training only), partial data, learning."""

from __future__ import annotations

import functools

import pytest
import torch

from core.models import ConfigError, Nexus, NexusConfig, TrainingProgress
from core.nn import MLPDecoder, MLPEncoder, mlp


@pytest.fixture
def make_model(model_factory):
    return model_factory(Nexus)


@pytest.fixture
def make_batch(make_batch):
    """Nexus trains on samples and modalities with nothing observed."""
    return functools.partial(make_batch, allow_unobserved_modalities=True)


def test_config_defaults_follow_the_seed():
    config = NexusConfig(n_modalities=2)
    assert (config.latent_dim, config.dropout_rate, config.msg_dim, config.aggregator) == (10, 0, 10, "mean")
    assert (config.top_beta, config.warmup) == (1, 20)
    assert config.modalities_specific_dim is None and config.bottom_betas is None and config.gammas is None
    assert config.adapt_top_decoder_variance is None and config.rescale_factors is None
    assert config.uses_likelihood_rescaling is False and config.custom_architectures == []
    assert Nexus.supports_incomplete_data is True and Nexus.summary


def test_config_errors_name_the_key(assert_config_errors):
    one = {"n_modalities": 1, "input_dims": {"a": [3]}}
    assert_config_errors(NexusConfig, [
        ({"n_modalities": 2, "msg_dims": 4}, "'msg_dims'.*Did you mean 'msg_dim'"),
        ({"n_modalities": 2, "dropout_rate": 1.5}, "dropout_rate"),
        ({"n_modalities": 2, "aggregator": "sum"}, "aggregator"),
        ({**one, "gammas": {"b": 1.0}}, "gammas names unknown modalities"),
        ({**one, "modalities_specific_dim": {"a": 0}}, "modalities_specific_dim"),
        ({**one, "adapt_top_decoder_variance": ["x"]}, "adapt_top_decoder_variance names unknown"),
    ])


def test_modality_specific_dims_default_to_latent_dim(make_model, make_batch):
    model = make_model(modalities_specific_dim={"a": 3})
    assert model.bottom_dims == {"a": 3, "b": 4, "c": 4}
    z = model.encode(make_batch(), "all").modalities_z
    assert {m: z[m].shape[-1] for m in z} == {"a": 3, "b": 4, "c": 4}


def test_custom_encoder_of_another_size_needs_modalities_specific_dim(vectors, make_model, make_batch):
    encoders = {m: MLPEncoder(s, 6, hidden=(16,)) for m, s in vectors.items()}
    with pytest.raises(ConfigError, match=r"encoders\['a'\] gives a latent of size 6.*modalities_specific_dim"):
        make_model(modules={"encoders": encoders})
    decoders = {m: MLPDecoder(6, s, hidden=(16,)) for m, s in vectors.items()}
    model = make_model(modules={"encoders": encoders, "decoders": decoders}, modalities_specific_dim={m: 6 for m in vectors})
    assert torch.isfinite(model(make_batch(), TrainingProgress(1)).loss)


@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(input_dims, n_samples, make_model, every_subset, assert_predictions):
    model = make_model(input_dims)
    for batch, subset, lead in every_subset(input_dims, n_samples):
        out = model.encode(batch, cond_mod=subset, N=n_samples)
        assert out.z.shape == (*lead, 4) and out.one_latent_space
        assert {m: z.shape for m, z in out.modalities_z.items()} == {m: (*lead, 4) for m in subset}
        flat = model.encode(batch, cond_mod=subset, N=n_samples, flatten=True)
        assert flat.z.shape == (n_samples * 4, 4) and all(z.shape == (n_samples * 4, 4) for z in flat.modalities_z.values())
        assert_predictions(model.predict(batch, cond_mod=subset, gen_mod="all", N=n_samples), input_dims, lead)


def test_decode_uses_the_bottom_code_for_conditioning_modalities_and_the_top_decoder_otherwise(make_model, make_batch):
    model = make_model()
    batch = make_batch()
    embedding = model.encode(batch, ["a"], return_mean=True)
    out = model.decode(embedding)
    assert torch.allclose(out["a"], model.decoder_output("a", embedding.modalities_z["a"]))
    assert torch.allclose(out["b"], model.decoder_output("b", model.top_decode("b", embedding.z)))
    via_top = model.decode(embedding, ["a"], use_bottom_z_for_recon=False)
    assert torch.allclose(via_top["a"], model.decoder_output("a", model.top_decode("a", embedding.z)))


def test_generation_from_the_prior_goes_through_the_top_decoders(shapes, make_model):
    model = make_model(shapes["image"])
    out = model.decode(model.generate_from_prior(3))
    assert out["a"].shape == (3, 1, 16, 16) and torch.isfinite(out["a"]).all()


def test_top_decoders_predict_unbounded_codes(make_model):
    model = make_model()
    codes = model.top_decode("a", 50 * torch.randn(64, 4))
    assert codes.min() < 0 and codes.max() > 1


def test_gradients_reach_every_parameter(make_model, make_batch, assert_finite_gradients):
    model = make_model(dropout_rate=0.5, adapt_top_decoder_variance=["b"])
    model.train()
    model(make_batch(n=8), TrainingProgress(2)).loss.backward()
    assert_finite_gradients(model)


def test_the_top_loss_does_not_train_the_bottom_vaes(vectors, make_model, make_batch):
    model = make_model()
    batch = make_batch()
    grads = []
    for top in (True, False):
        model.zero_grad()
        model.model_config.top_beta = 1.0 if top else 0.0
        model.model_config.gammas = None if top else {m: 0.0 for m in vectors}
        torch.manual_seed(4)
        model(batch, TrainingProgress(30)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if n.startswith(("encoders.", "decoders."))})
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_loss_adds_the_bottom_and_top_losses_with_per_epoch_annealing(make_model, make_batch):
    model = make_model(warmup=4)
    out = model(make_batch(), TrainingProgress(1, 0.9))
    assert float(out.terms["annealing"]) == pytest.approx(0.25)
    assert float(out.loss.detach()) == pytest.approx(float(out.terms["bottom_loss"] + out.terms["top_loss"]), rel=1e-5)
    assert float(model(make_batch(), TrainingProgress(9)).terms["annealing"]) == 1.0
    assert model.start_keep_best_epoch == 5


def test_forced_perceptual_dropout_keeps_at_least_one_observed_message(make_model):
    model = make_model(dropout_rate=1.0)
    model.train()
    available = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0]], dtype=torch.bool)
    for _ in range(20):
        kept = model.drop_messages(available)
        assert not (kept & ~available).any()
        assert (kept.sum(0) >= 1).all() or not available.any(0).all()
        n_available, n_kept = available.sum(0), kept.sum(0)
        assert torch.all(torch.where(n_available >= 2, n_kept < n_available, n_kept == n_available))
    model.eval()
    assert torch.equal(model.drop_messages(available), available)


def test_dropout_is_inactive_in_eval_mode(make_model, make_batch, under_seed):
    batch = make_batch()
    with_dropout, without = make_model(dropout_rate=1.0), make_model(dropout_rate=0.0)
    without.load_state_dict(with_dropout.state_dict())
    for model in (with_dropout, without):
        model.eval()
    first = under_seed(7, with_dropout, batch, TrainingProgress(3)).loss
    assert torch.equal(first, under_seed(7, without, batch, TrainingProgress(3)).loss)
    with_dropout.train()
    without.train()
    first = under_seed(7, with_dropout, batch, TrainingProgress(3)).loss
    assert not torch.equal(first, under_seed(7, without, batch, TrainingProgress(3)).loss)


def test_missing_modalities_do_not_change_the_loss_even_with_dropout(make_model, make_batch, with_noise_where_missing, under_seed):
    model = make_model(dropout_rate=0.5, adapt_top_decoder_variance=["a", "c"])
    model.train()
    batch = make_batch(n=6, missing={"a": [0, 3], "c": [1, 3]})
    changed = with_noise_where_missing(batch)
    first = under_seed(8, model, batch, TrainingProgress(2)).loss
    assert torch.equal(first, under_seed(8, model, changed, TrainingProgress(2)).loss)


def test_a_sample_with_no_observed_modality_gives_no_nan(make_model, make_batch):
    model = make_model(dropout_rate=0.5, adapt_top_decoder_variance=["a"])
    model.train()
    batch = make_batch(n=4, missing={"a": [2], "b": [2], "c": [2]})
    out = model(batch, TrainingProgress(2))
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.terms.values())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_encode_on_incomplete_data_fills_missing_bottom_codes_from_the_top_decoder(make_model, make_batch):
    model = make_model()
    batch = make_batch(missing={"b": [1]})
    with pytest.raises(ValueError, match="'b'"):
        model.encode(batch, ["a", "b"])
    out = model.encode(batch, ["a", "b"], ignore_incomplete=True, return_mean=True)
    assert torch.allclose(out.modalities_z["b"][1], model.top_decode("b", out.z[1:2])[0])
    alone = model.encode(batch, ["a"], return_mean=True)
    assert torch.allclose(out.z[1], alone.z[1], atol=1e-6), "sample 1 is conditioned on 'a' only"


def test_save_load_round_trip_gives_identical_outputs(make_model, make_batch, round_trip, under_seed):
    model = make_model(dropout_rate=0.3, modalities_specific_dim={"a": 3})
    batch = make_batch()
    loaded = round_trip(model)
    for cond in (["a"], ["a", "c"], "all"):
        a, b = model.encode(batch, cond, return_mean=True), loaded.encode(batch, cond, return_mean=True)
        assert torch.equal(a.z, b.z) and all(torch.equal(a.modalities_z[m], b.modalities_z[m]) for m in a.modalities_z)
    first = under_seed(5, model, batch, TrainingProgress(2)).loss
    assert torch.equal(first, under_seed(5, loaded, batch, TrainingProgress(2)).loss)


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    encoders, decoders = toy.small_vaes()
    small = {  # small user modules: the test is about the objective, not the default widths
        "encoders": encoders,
        "decoders": decoders,
        "top_encoders": {m: mlp([4, 64, 10]) for m in toy.dims},
        "joint_encoder": MLPEncoder((10,), 4, hidden=(64,)),
        "top_decoders": {m: MLPDecoder(4, (4,), hidden=(64,)) for m in toy.dims},
    }
    model = Nexus(toy.config(NexusConfig, warmup=2, dropout_rate=0.3), **small)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=20, val_progress=TrainingProgress(3))
    assert after < before
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline
