"""JMVAE: seed defaults, shapes for every subset, gradients, complete-data requirement, persistence, learning."""

from __future__ import annotations

import pytest
import torch

from core.data import DatasetOutput, IncompleteDataset, MultimodalBaseDataset
from core.models import (
    JMVAE,
    ConfigError,
    IncompleteDataError,
    JMVAEConfig,
    TrainingProgress,
    config_from_dict,
    load,
)
from core.models._shared.subsets import all_subsets
from core.nn import MLPDecoder, MLPEncoder
from core.nn.joint import MultipleHeadJointEncoder

SHAPES = {
    "vector": {"a": (8,), "b": (8,), "c": (5,)},
    "image": {"a": (1, 16, 16), "b": (1, 16, 16)},
    "volume": {"a": (1, 16, 16, 16), "b": (1, 16, 16, 16)},
}
VECTORS = SHAPES["vector"]


def make_model(input_dims=VECTORS, **overrides) -> JMVAE:
    return JMVAE(JMVAEConfig(n_modalities=len(input_dims), latent_dim=4, input_dims=input_dims, **overrides))


def make_batch(input_dims=VECTORS, n: int = 5, missing: dict[str, list[int]] | None = None) -> DatasetOutput:
    data = {m: torch.randn(n, *shape) for m, shape in input_dims.items()}
    if not missing:
        return MultimodalBaseDataset(data).as_batch()
    masks = {m: torch.ones(n, dtype=torch.bool) for m in input_dims}
    for m, rows in missing.items():
        masks[m][rows] = False
    return IncompleteDataset(data, masks).as_batch()


def test_config_defaults_follow_the_seed():
    config = JMVAEConfig(n_modalities=2)
    assert (config.latent_dim, config.alpha, config.warmup, config.beta) == (10, 0.1, 10, 1.0)
    assert config.uses_likelihood_rescaling is False and config.rescale_factors is None
    assert config.decoders_dist is None and config.decoder_dist_params is None and config.custom_architectures == []
    assert JMVAE.supports_incomplete_data is False and JMVAE.summary


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'alhpa'.*Did you mean 'alpha'"):
        config_from_dict(JMVAEConfig, {"n_modalities": 2, "alhpa": 0.1})
    with pytest.raises(ConfigError, match="alpha"):
        config_from_dict(JMVAEConfig, {"n_modalities": 2, "alpha": -1})
    with pytest.raises(ConfigError, match="warmup"):
        config_from_dict(JMVAEConfig, {"n_modalities": 2, "warmup": -2})


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(kind, n_samples):
    dims = SHAPES[kind]
    model = make_model(dims)
    batch = make_batch(dims, 4)
    lead = (4,) if n_samples == 1 else (n_samples, 4)
    for subset in all_subsets(list(dims)):
        z = model.encode(batch, cond_mod=list(subset), N=n_samples).z
        assert z.shape == (*lead, 4)
        assert model.encode(batch, cond_mod=list(subset), N=n_samples, flatten=True).z.shape == (n_samples * 4, 4)
        out = model.predict(batch, cond_mod=list(subset), gen_mod="all", N=n_samples)
        for m, shape in dims.items():
            assert out[m].shape == (*lead, *shape) and torch.isfinite(out[m]).all()


def test_subset_posterior_is_the_product_of_unimodal_experts_without_prior():
    model = make_model()
    batch = make_batch()
    mu, logvar = model.posterior_subset(batch, ["a", "b"])
    (mu_a, lv_a), (mu_b, lv_b) = (model.encoder_gaussian(m, batch.data[m]) for m in "ab")
    precision = (-lv_a).exp() + (-lv_b).exp()
    assert torch.allclose(logvar, -precision.log(), atol=1e-5)
    assert torch.allclose(mu, (mu_a * (-lv_a).exp() + mu_b * (-lv_b).exp()) / precision, atol=1e-5)
    mean = model.encode(batch, cond_mod=["a", "b"], return_mean=True).z
    assert torch.allclose(mean, mu)


def test_generation_from_the_prior_decodes():
    model = make_model(SHAPES["image"])
    out = model.decode(model.generate_from_prior(3))
    assert out["a"].shape == (3, 1, 16, 16) and torch.isfinite(out["a"]).all()


def test_gradients_reach_every_parameter():
    model = make_model()
    loss = model(make_batch(), TrainingProgress(3, 0.5)).loss
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_loss_is_the_annealed_jmvae_objective():
    model = make_model(warmup=4, alpha=0.5, beta=2.0)
    batch = make_batch()
    torch.manual_seed(3)
    out = model(batch, TrainingProgress(1))
    t = out.terms
    assert float(t["annealing"]) == pytest.approx(0.25)
    expected = t["recon"] + 0.25 * (2.0 * t["kl_prior"] + 0.5 * sum(t[f"kl[{m}]"] for m in VECTORS))
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(t["neg_elbo"]) == pytest.approx(float(t["recon"] + 2.0 * t["kl_prior"]), rel=1e-5)
    assert model.start_keep_best_epoch == 5


def test_training_on_incomplete_data_fails_with_a_reason():
    model = make_model()
    batch = make_batch(missing={"b": [1]})
    with pytest.raises(IncompleteDataError, match="joint encoder.*'b' is missing.*MVAE, MHVAE or Nexus"):
        model(batch, TrainingProgress(1))
    with pytest.raises(IncompleteDataError):
        model.compute_joint_nll(batch, K=4)


def test_imputation_on_incomplete_data_uses_the_observed_modalities():
    model = make_model()
    batch = make_batch(missing={"b": [1]})
    out = model.predict(batch, cond_mod=["a", "c"], gen_mod="b")
    assert out["b"].shape == (5, 8)
    with pytest.raises(IncompleteDataError, match="'b'"):
        model.encode(batch, cond_mod="all")


def test_user_modules_are_used_and_recorded(tmp_path):
    encoders = {m: MLPEncoder(s, 4, hidden=(16,)) for m, s in VECTORS.items()}
    decoders = {m: MLPDecoder(4, s, hidden=(16,)) for m, s in VECTORS.items()}
    joint = MultipleHeadJointEncoder(encoders, 4, hidden=(32,))
    model = JMVAE(JMVAEConfig(n_modalities=3, latent_dim=4, input_dims=VECTORS), encoders, decoders, joint)
    assert model.joint_encoder is joint and model.encoders["a"] is encoders["a"]
    assert model.model_config.custom_architectures == ["decoders", "encoders", "joint_encoder"]
    model.save(tmp_path / "bundle")
    with pytest.raises(ConfigError, match="user-supplied"):
        load(tmp_path / "bundle")
    assert isinstance(load(tmp_path / "bundle", encoders=encoders, decoders=decoders, joint_encoder=joint), JMVAE)


def test_default_joint_encoder_copies_the_unimodal_encoders():
    model = make_model()
    joint_params = {id(p) for p in model.joint_encoder.parameters()}
    assert not joint_params & {id(p) for p in model.encoders.parameters()}


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = make_model()
    model.eval()
    batch = make_batch()
    model.save(tmp_path / "bundle")
    loaded = load(tmp_path / "bundle")
    loaded.eval()
    for cond in (["a"], ["a", "b"], "all"):
        assert torch.equal(model.encode(batch, cond, return_mean=True).z, loaded.encode(batch, cond, return_mean=True).z)
    torch.manual_seed(5)
    first = model(batch, TrainingProgress(2)).loss
    torch.manual_seed(5)
    assert torch.equal(first, loaded(batch, TrainingProgress(2)).loss)


def test_joint_nll_is_finite():
    model = make_model()
    nll = model.compute_joint_nll(make_batch(), K=20, batch_size_K=7)
    assert nll.shape == () and torch.isfinite(nll)


def _toy(n: int, seed: int) -> MultimodalBaseDataset:
    """Two 8-d views of a shared 2-d latent through fixed random non-linear maps."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(100))
    z = torch.randn(n, 2, generator=g)
    return MultimodalBaseDataset({m: torch.tanh(z @ maps[i]) + 0.05 * torch.randn(n, 8, generator=g) for i, m in enumerate("ab")})


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline():
    train, val = _toy(256, 0), _toy(128, 1)
    dims = {"a": (8,), "b": (8,)}
    config = JMVAEConfig(n_modalities=2, latent_dim=4, input_dims=dims, warmup=2, decoder_dist_params={m: {"scale": 0.1} for m in dims})
    encoders = {m: MLPEncoder((8,), 4, hidden=(64,)) for m in dims}  # small: the test is about the objective
    decoders = {m: MLPDecoder(4, (8,), hidden=(64,)) for m in dims}
    model = JMVAE(config, encoders, decoders, MultipleHeadJointEncoder(encoders, 4, hidden=(64,)))
    optimizer = torch.optim.Adam(model.parameters_for_stage(model.stages[0]), lr=3e-3)

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(val, TrainingProgress(3)).loss)

    before = val_loss()
    for epoch in range(1, 11):
        model.train()
        for idx in torch.randperm(256).split(32):
            loss = model(train.subset(idx.tolist()).as_batch(), TrainingProgress(epoch)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert val_loss() < before
    prediction = model.predict(val, cond_mod="a", gen_mod="b")["b"]
    mse = (prediction - val.data["b"]).pow(2).mean()
    baseline = (train.data["b"].mean(0) - val.data["b"]).pow(2).mean()
    assert mse < 0.5 * baseline
