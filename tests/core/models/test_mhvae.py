"""MHVAE: seed defaults, default blocks for vectors/images/volumes, block sanity checks, subset-averaged
loss on partial data, the prior chain, persistence and learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import core.models.mhvae as mhvae_module
from core.data import DatasetOutput, IncompleteDataset, MultimodalBaseDataset
from core.models import MHVAE, ConfigError, MHVAEConfig, TrainingProgress, config_from_dict, load
from core.models._shared.subsets import all_subsets
from core.nn import MLPDecoder
from core.nn.hierarchical import GaussianHead, default_mhvae_blocks

SHAPES = {
    "vector": {"a": (8,), "b": (8,), "c": (5,)},
    "image": {"a": (1, 16, 16), "b": (2, 16, 16)},
    "volume": {"a": (1, 16, 16, 16), "b": (1, 16, 16, 16)},
}
VECTORS = SHAPES["vector"]


def make_model(input_dims=VECTORS, modules: dict | None = None, **overrides) -> MHVAE:
    config = MHVAEConfig(n_modalities=len(input_dims), latent_dim=4, input_dims=input_dims, **overrides)
    return MHVAE(config, **(modules or {}))


def make_batch(input_dims=VECTORS, n: int = 5, missing: dict[str, list[int]] | None = None) -> DatasetOutput:
    data = {m: torch.randn(n, *shape) for m, shape in input_dims.items()}
    if not missing:
        return MultimodalBaseDataset(data).as_batch()
    masks = {m: torch.ones(n, dtype=torch.bool) for m in input_dims}
    for m, rows in missing.items():
        masks[m][rows] = False
    return IncompleteDataset(data, masks).as_batch()


def small_user_blocks(n_latent: int = 3, width: int = 16, latent: int = 4) -> dict:
    """MultiVae-style user blocks for two 8-d modalities: shared bottom-up and posterior blocks."""
    shared_bu = [nn.Sequential(nn.Linear(width, width), nn.SiLU()) for _ in range(n_latent - 2)] + [GaussianHead(width, latent)]
    return {
        "encoders": {m: nn.Sequential(nn.Linear(8, width), nn.SiLU()) for m in "ab"},
        "decoders": {m: MLPDecoder(latent, (8,), hidden=(width,)) for m in "ab"},
        "bottom_up_blocks": {m: shared_bu for m in "ab"},
        "top_down_blocks": [nn.Sequential(nn.Linear(latent, width), nn.SiLU()) for _ in range(n_latent - 1)],
        "posterior_blocks": [GaussianHead(2 * width, latent) for _ in range(n_latent - 1)],
        "prior_blocks": [GaussianHead(width, latent) for _ in range(n_latent - 1)],
    }


def test_config_defaults_follow_the_seed():
    config = MHVAEConfig(n_modalities=2)
    assert (config.latent_dim, config.n_latent, config.beta) == (10, 3, 1.0)
    assert config.uses_likelihood_rescaling is False and config.rescale_factors is None
    assert config.decoders_dist is None and config.decoder_dist_params is None and config.custom_architectures == []
    assert MHVAE.supports_incomplete_data is True and MHVAE.summary


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'n_latents'.*Did you mean 'n_latent'"):
        config_from_dict(MHVAEConfig, {"n_modalities": 2, "n_latents": 3})
    with pytest.raises(ConfigError, match="n_latent"):
        config_from_dict(MHVAEConfig, {"n_modalities": 2, "n_latent": 1})
    with pytest.raises(ConfigError, match="beta"):
        config_from_dict(MHVAEConfig, {"n_modalities": 2, "beta": -0.5})


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(kind, n_samples):
    dims = SHAPES[kind]
    model = make_model(dims)
    batch = make_batch(dims, 4)
    lead = (4,) if n_samples == 1 else (n_samples, 4)
    for subset in all_subsets(list(dims)):
        out = model.encode(batch, cond_mod=list(subset), N=n_samples)
        assert out.z.shape == (*lead, *model.z1_shape) and out.one_latent_space
        assert sorted(out.all_z) == ["z_1", "z_2", "z_3"] and out.all_z["z_3"].shape == (*lead, 4)
        flat = model.encode(batch, cond_mod=list(subset), N=n_samples, flatten=True)
        assert flat.z.shape == (n_samples * 4, *model.z1_shape)
        pred = model.predict(batch, cond_mod=list(subset), gen_mod="all", N=n_samples)
        for m, shape in dims.items():
            assert pred[m].shape == (*lead, *shape) and torch.isfinite(pred[m]).all()


def test_spatial_data_gets_spatial_latents_and_vectors_vector_latents():
    assert make_model(SHAPES["volume"]).latent_shapes == [(8, 8, 8, 8), (8, 4, 4, 4), (4,)]
    assert make_model(SHAPES["image"], n_latent=4).latent_shapes == [(8, 8, 8), (8, 4, 4), (8, 4, 4), (4,)]
    assert make_model(VECTORS).latent_shapes == [(4,), (4,), (4,)]
    assert make_model({"a": (8,), "b": (1, 16, 16)}).latent_shapes == [(4,), (4,), (4,)]


@pytest.mark.parametrize("kind", list(SHAPES))
def test_generation_runs_the_prior_chain_and_decodes(kind):
    dims = SHAPES[kind]
    model = make_model(dims)
    generated = model.generate_from_prior(3)
    assert generated.z.shape == (3, *model.z1_shape)
    assert [generated.all_z[f"z_{level}"].shape[1:] for level in (1, 2, 3)] == model.latent_shapes
    out = model.decode(generated)
    for m, shape in dims.items():
        assert out[m].shape == (3, *shape) and torch.isfinite(out[m]).all()
    torch.manual_seed(1)
    cold = model.generate_from_prior(2, temperature=0.0).z
    assert torch.equal(cold, model.generate_from_prior(2, temperature=0.0).z)


@pytest.mark.parametrize("kind", ["vector", "image"])
def test_gradients_reach_every_parameter(kind):
    dims = SHAPES[kind]
    model = make_model(dims)
    model(make_batch(dims, 4), TrainingProgress(1)).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_sanity_checks_raise_clear_errors():
    blocks = default_mhvae_blocks(VECTORS, 4, 3)
    with pytest.raises(ConfigError, match=r"bottom_up_blocks\['a'\] has 1 blocks.*n_latent - 1 = 2"):
        make_model(modules={"bottom_up_blocks": {**blocks["bottom_up_blocks"], "a": blocks["bottom_up_blocks"]["a"][:1]}})
    with pytest.raises(ConfigError, match="bottom_up_blocks are given for"):
        make_model(modules={"bottom_up_blocks": {"a": blocks["bottom_up_blocks"]["a"]}})
    with pytest.raises(ConfigError, match="top_down_blocks has 3 blocks"):
        make_model(modules={"top_down_blocks": [*blocks["top_down_blocks"], nn.Identity()]})
    with pytest.raises(ConfigError, match="prior_blocks must be a list of 2 modules"):
        make_model(modules={"prior_blocks": blocks["prior_blocks"][0]})
    with pytest.raises(ConfigError, match=r"prior_blocks\[1\] must be a torch.nn.Module"):
        make_model(modules={"prior_blocks": [blocks["prior_blocks"][0], "head"]})
    with pytest.raises(ConfigError, match="posterior_blocks are given for"):
        make_model(modules={"posterior_blocks": {"a": blocks["posterior_blocks"]["a"]}})
    with pytest.raises(ConfigError, match="posterior_blocks has 1 blocks"):
        make_model(modules={"posterior_blocks": blocks["posterior_blocks"]["a"][:1]})
    wrong_depth = {m: [*bu[:-1], GaussianHead(256, 5)] for m, bu in blocks["bottom_up_blocks"].items()}
    with pytest.raises(ConfigError, match=r"bottom_up_blocks\['a'\]\[-1\] returns a mean of shape \(5,\).*latent_dim = 4"):
        make_model(modules={"bottom_up_blocks": wrong_depth})
    narrow = [nn.Sequential(nn.Linear(4, 100), nn.SiLU()) for _ in range(2)]
    with pytest.raises(ConfigError, match=r"top_down_blocks\[1\] / prior_blocks\[1\] fail on z_3 of shape \(4,\)"):
        make_model(modules={"top_down_blocks": narrow})


def test_top_down_shape_mismatch_with_the_skips_is_explained():
    dims = SHAPES["image"]
    blocks = default_mhvae_blocks(dims, 4, 3)
    wrong_grid = [blocks["top_down_blocks"][0], nn.Sequential(nn.Linear(4, 128 * 9), nn.Unflatten(1, (128, 3, 3)))]
    with pytest.raises(ConfigError, match=r"top_down_blocks\[1\] gives h_2 of shape \(128, 3, 3\).*d\^\(2\) of 'a'.*\(128, 4, 4\)"):
        make_model(dims, modules={"top_down_blocks": wrong_grid})


def test_default_blocks_need_input_dims():
    blocks = small_user_blocks()
    with pytest.raises(ConfigError, match="default blocks from input_dims.*pass bottom_up_blocks"):
        MHVAE(MHVAEConfig(n_modalities=2, latent_dim=4), encoders=blocks["encoders"], decoders=blocks["decoders"])


def test_user_blocks_with_shared_weights_train_save_and_load(tmp_path):
    blocks = small_user_blocks()
    model = MHVAE(MHVAEConfig(n_modalities=2, latent_dim=4), **blocks)
    assert model.share_posterior_blocks
    assert model.bottom_up_blocks["a"][0] is model.bottom_up_blocks["b"][0]
    assert model.model_config.custom_architectures == sorted(blocks)
    batch = make_batch({"a": (8,), "b": (8,)})
    model(batch, TrainingProgress(1)).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    model.save(tmp_path / "bundle")
    with pytest.raises(ConfigError, match="user-supplied"):
        load(tmp_path / "bundle")
    loaded = load(tmp_path / "bundle", **blocks)
    assert torch.equal(model.encode(batch, "a", return_mean=True).z, loaded.encode(batch, "a", return_mean=True).z)


def test_modality_and_subset_encode_give_every_level():
    model = make_model()
    batch = make_batch(missing={"b": [0]})
    params, skips = model.modality_encode(batch.data)
    assert params["a"].embedding.shape == (5, 4) and [d.shape for d in skips["a"]] == [(5, 256), (5, 256)]
    z, kl = model.subset_encode(params, skips, ["b", "c"], batch)
    assert sorted(z) == ["z_1", "z_2", "z_3"] and sorted(kl) == ["kl_1", "kl_2", "kl_3"]
    assert all(k.shape == (5,) and torch.isfinite(k).all() for k in kl.values())
    alone, kl_alone = model.subset_encode(params, skips, ["b"], batch, return_mean=True)
    assert all(float(k[0].detach()) == 0.0 for k in kl_alone.values()), "no observed expert: the posterior is the prior"


def test_missing_modalities_do_not_change_the_loss():
    model = make_model()
    batch = make_batch(n=6, missing={"a": [0, 3], "c": [1, 3]})
    changed = DatasetOutput(batch)
    changed["data"] = {m: torch.where(batch.masks[m].view(-1, 1), x, 10 * torch.randn_like(x)) for m, x in batch.data.items()}
    torch.manual_seed(8)
    first = model(batch, TrainingProgress(2)).loss
    torch.manual_seed(8)
    assert torch.equal(first, model(changed, TrainingProgress(2)).loss)


@pytest.fixture
def deterministic_sampling(monkeypatch):
    """Replace every draw by the mean so that losses can be compared exactly."""
    monkeypatch.setattr(mhvae_module, "rsample", lambda mu, logvar, n=1, return_mean=False: mu)


def _subset_loss(model: MHVAE, batch: DatasetOutput, subset: list[str]) -> torch.Tensor:
    params, skips = model.modality_encode(batch.data)
    z, kl = model.subset_encode(params, skips, subset, batch, return_mean=True)
    recon = sum(model.reconstruction_log_likelihood(batch, m, model.decoder_output(m, z["z_1"])) for m in model.modalities)
    return -recon + model.model_config.beta * sum(kl.values())


def test_subsets_without_an_observed_modality_are_skipped_per_sample(deterministic_sampling):
    dims = {"a": (8,), "b": (8,)}
    model = make_model(dims, beta=0.5)
    batch = make_batch(dims, n=3, missing={"b": [0]})
    per_subset = {s: _subset_loss(model, batch, list(s)) for s in all_subsets(["a", "b"])}
    expected_0 = per_subset[("a",)][0]  # {a} and {a, b} both reduce to q(z | x_a); {b} holds nothing of sample 0
    expected_rest = sum(loss[1:] for loss in per_subset.values()) / 3
    expected = (expected_0 + expected_rest.sum()) / 3
    assert torch.allclose(model(batch).loss, expected, rtol=1e-5)
    assert torch.allclose(per_subset[("a", "b")][0], per_subset[("a",)][0])


def test_the_loss_is_a_batch_mean_and_empty_samples_add_nothing(deterministic_sampling):
    model = make_model()
    batch = make_batch(n=4)
    doubled = MultimodalBaseDataset({m: torch.cat([x, x]) for m, x in batch.data.items()}).as_batch()
    assert torch.allclose(model(batch).loss, model(doubled).loss, rtol=1e-5)
    with_empty = IncompleteDataset(
        {m: torch.cat([x, torch.zeros(1, *x.shape[1:])]) for m, x in batch.data.items()},
        {m: torch.tensor([True] * 4 + [False]) for m in batch.data},
    ).as_batch()
    assert torch.allclose(5 * model(with_empty).loss, 4 * model(batch).loss, rtol=1e-5)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    dims = SHAPES["image"]
    model = make_model(dims)
    model.eval()
    batch = make_batch(dims, 3)
    model.save(tmp_path / "bundle")
    loaded = load(tmp_path / "bundle")
    loaded.eval()
    for cond in (["a"], "all"):
        assert torch.equal(model.encode(batch, cond, return_mean=True).z, loaded.encode(batch, cond, return_mean=True).z)
    torch.manual_seed(5)
    first = model(batch).loss
    torch.manual_seed(5)
    assert torch.equal(first, loaded(batch).loss)


def test_joint_nll_is_finite_on_partial_data():
    model = make_model()
    nll = model.compute_joint_nll(make_batch(missing={"a": [1]}), K=12, batch_size_K=5)
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
    config = MHVAEConfig(n_modalities=2, latent_dim=4, input_dims=dims, decoder_dist_params={m: {"scale": 0.1} for m in dims})
    model = MHVAE(config, **default_mhvae_blocks(dims, 4, 3, width=64))  # narrow: the test is about the objective
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(val).loss)

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
