"""CVAE: defaults and roles, what it answers (posterior, conditional prior) and refuses, the objective,
the modalities it needs, user modules, persistence, learning."""

from __future__ import annotations

import pytest
import torch

from core.models import CVAE, ConfigError, CVAEConfig, IncompleteDataError, load
from core.models._shared.gaussian import kl_normal
from core.nn import MLPDecoder, MLPEncoder
from core.nn.conditional import BaseConditionalDecoder, ConditionalDecoder
from core.nn.joint import MultipleHeadJointEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training steps: 2 threads on a shared machine thrash


@pytest.fixture
def make_model(model_factory):
    return model_factory(CVAE)


def test_config_defaults_follow_the_seed_and_the_roles_resolve(make_model):
    config = CVAEConfig(n_modalities=2)
    assert (config.latent_dim, config.beta, config.decoder_dist, config.conditional_prior) == (10, 1.0, "normal", False)
    assert (config.main_modality, config.conditioning_modalities, config.decoders_dist) == (None, None, None)
    assert CVAE.supports_incomplete_data is False and CVAE.summary
    model = make_model()
    assert (model.main_modality, model.conditioning_modalities) == ("c", ["a", "b"])
    assert model.model_config.main_modality == "c" and model.prior_network is None


def test_config_errors_name_the_key(assert_config_errors, vectors):
    dims = {"n_modalities": 3, "input_dims": vectors}
    assert_config_errors(CVAEConfig, [
        ({**dims, "main_modality": "x"}, "main_modality 'x' is not a modality"),
        ({**dims, "main_modality": "a", "conditioning_modalities": ["a", "b"]}, "other than the main one"),
        ({**dims, "conditioning_modalities": ["z"]}, "conditioning_modalities names unknown modalities \\['z'\\]"),
        ({**dims, "decoders_dist": {"c": "laplace"}}, "set decoder_dist"),
        ({"n_modalities": 1, "input_dims": {"a": (2,)}}, "needs a conditioning modality"),
        ({**dims, "conditional_prio": True}, "Did you mean 'conditional_prior'"),
    ])
    with pytest.raises(ConfigError, match="input_dims"):
        CVAE(CVAEConfig(n_modalities=2))


@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes(shapes, n_samples, make_model, make_batch, assert_predictions):
    dims = shapes["image"]  # main 'b' (an image) from 'a'
    model = make_model(dims)
    batch = make_batch(dims, 4)
    lead = (4,) if n_samples == 1 else (n_samples, 4)
    for cond in (["a"], "all"):
        out = model.encode(batch, cond_mod=cond, N=n_samples)
        assert out.z.shape == (*lead, 4) and out.cond_mod_data["a"].shape == (*lead, 1, 16, 16)
        flat = model.encode(batch, cond_mod=cond, N=n_samples, flatten=True)
        assert flat.z.shape == (n_samples * 4, 4) and flat.cond_mod_data["a"].shape == (n_samples * 4, 1, 16, 16)
        assert_predictions(model.predict(batch, cond_mod=cond, gen_mod="b", N=n_samples), {"b": dims["b"]}, lead)


def test_conditioning_alone_draws_from_the_prior_and_with_the_main_modality_from_the_posterior(make_model, make_batch):
    batch = make_batch()
    plain = make_model()
    assert torch.equal(plain.encode(batch, cond_mod=["a", "b"], return_mean=True).z, torch.zeros(5, 4))
    assert torch.equal(plain.encode(batch, return_mean=True).z, plain.posterior(batch)[0])
    learned = make_model(conditional_prior=True)
    prior_mu, _ = learned.prior({m: batch.data[m] for m in "ab"})
    assert torch.equal(learned.encode(batch, cond_mod=["a", "b"], return_mean=True).z, prior_mu)
    generated = learned.generate_from_prior({m: batch.data[m] for m in "ab"}, N=2)
    assert generated.z.shape == (2, 5, 4) and learned.decode(generated)["c"].shape == (2, 5, 5)


def test_what_it_cannot_answer_is_refused_with_what_it_can(make_model, make_batch):
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="generates 'c' from its conditioning modalities \\['a', 'b'\\]"):
        model.encode(batch, cond_mod=["c"])
    with pytest.raises(ValueError, match="generates only 'c'"):
        model.predict(batch, cond_mod="all", gen_mod=["a"])
    with pytest.raises(ValueError, match="no unconditional model.*generate_from_prior\\(cond_mod_data, N\\)"):
        model.generate_from_prior(3)
    with pytest.raises(ValueError, match="cond_mod_data"):
        model.decode({"z": torch.zeros(3, 4)})
    with pytest.raises(TypeError, match="no per-modality network for 'a'"):
        model.encoders["a"](batch.data["a"])


def test_loss_is_the_negative_conditional_elbo(make_model, make_batch, under_seed):
    model = make_model(beta=3.0, conditional_prior=True)
    model.eval()
    batch = make_batch()
    out = under_seed(1, model, batch)
    assert float(out.loss.detach()) == pytest.approx(float(out.terms["recon"] + 3.0 * out.terms["kl_prior"]), rel=1e-5)
    with torch.no_grad():
        kl = kl_normal(*model.posterior(batch), *model.prior({m: batch.data[m] for m in "ab"})).mean()
    assert float(out.terms["kl_prior"]) == pytest.approx(float(kl), rel=1e-5)


def test_training_needs_the_main_and_conditioning_modalities_only(make_model, make_batch, under_seed):
    model = make_model(main_modality="b", conditioning_modalities=["a"])
    model.eval()
    with pytest.raises(IncompleteDataError, match="CVAE cannot train.*'a' is missing for 1 sample"):
        model(make_batch(missing={"a": [1]}))
    with pytest.raises(IncompleteDataError):
        model.compute_joint_nll(make_batch(missing={"b": [0]}), K=4)
    unused_missing = make_batch(missing={"c": [0, 3]})
    changed = make_batch()
    changed["data"] = {**unused_missing.data, "c": unused_missing.data["c"] + 100}
    assert torch.equal(under_seed(2, model, unused_missing).loss, under_seed(2, model, changed).loss)


def test_gradients_reach_every_parameter(make_model, make_batch, assert_finite_gradients):
    model = make_model(conditional_prior=True, decoder_scale="learned")
    assert list(model.decoder_log_scales) == ["c"]
    model(make_batch()).loss.backward()
    assert_finite_gradients(model)


def test_user_modules_are_used_recorded_and_required_to_load(vectors, make_batch, tmp_path):
    config = CVAEConfig(n_modalities=3, latent_dim=4, input_dims=vectors, main_modality="a", conditioning_modalities=["b"])
    encoder = MultipleHeadJointEncoder({m: MLPEncoder(vectors[m], 4, hidden=(16,)) for m in "ab"}, 4, hidden=(16,))
    decoder = ConditionalDecoder(4, vectors["a"], {"b": vectors["b"]}, embedding_dim=3)
    model = CVAE(config, encoder=encoder, decoder=decoder)
    assert model.encoder is encoder and model.decoder is decoder
    assert model.model_config.custom_architectures == ["decoder", "encoder"]
    assert torch.isfinite(model(make_batch()).loss)
    model.save(tmp_path / "bundle")
    with pytest.raises(ConfigError, match="user-supplied"):
        load(tmp_path / "bundle")
    assert isinstance(load(tmp_path / "bundle", encoder=encoder, decoder=decoder), CVAE)


def test_save_load_round_trip_and_likelihood(make_model, make_batch, round_trip, under_seed):
    model = make_model(conditional_prior=True)
    batch = make_batch()
    loaded = round_trip(model)
    for cond in (["a", "b"], "all"):
        assert torch.equal(model.encode(batch, cond, return_mean=True).z, loaded.encode(batch, cond, return_mean=True).z)
    assert torch.equal(under_seed(5, model, batch).loss, under_seed(5, loaded, batch).loss)
    nll = model.compute_joint_nll(batch, K=20, batch_size_K=7)
    assert nll.shape == () and torch.isfinite(nll)


class ConcatDecoder(BaseConditionalDecoder):
    """A user decoder in MultiVae's style: z and the raw conditioning vector, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLPDecoder(4 + 8, (8,), hidden=(64,))

    def forward(self, z, cond):
        return self.net(torch.cat([z, cond["a"]], dim=-1))


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    config = toy.config(CVAEConfig, main_modality="b", conditioning_modalities=["a"], conditional_prior=True)
    encoder = MultipleHeadJointEncoder({m: MLPEncoder((8,), 4, hidden=(64,)) for m in "ab"}, 4, hidden=(64,))
    prior = MultipleHeadJointEncoder({"a": MLPEncoder((8,), 4, hidden=(64,))}, 4, hidden=(64,))
    model = CVAE(config, encoder=encoder, decoder=ConcatDecoder(), prior_network=prior)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=10)
    assert after < before
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline
