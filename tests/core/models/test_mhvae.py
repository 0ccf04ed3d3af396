"""MHVAE: seed defaults, default blocks for vectors/images/volumes, block sanity checks, subset-averaged
loss on partial data, the prior chain, persistence and learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import core.models.mhvae as mhvae_module
from core.data import DatasetOutput, IncompleteDataset, MultimodalBaseDataset
from core.models import MHVAE, ConfigError, MHVAEConfig, TrainingProgress, load
from core.models._shared.subsets import all_subsets
from core.nn import MLPDecoder, hierarchical
from core.nn.hierarchical import GaussianHead, NarrowUpsampleBlock, default_mhvae_blocks


@pytest.fixture
def shapes(shapes):
    """MHVAE's images differ in their number of channels."""
    return {**shapes, "image": {"a": (1, 16, 16), "b": (2, 16, 16)}}


@pytest.fixture
def make_model(model_factory):
    return model_factory(MHVAE)


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


def test_config_defaults_follow_the_seed(assert_plain_decoders):
    config = MHVAEConfig(n_modalities=2)
    assert (config.latent_dim, config.n_latent, config.beta) == (10, 3, 1.0)
    assert_plain_decoders(config)
    assert MHVAE.supports_incomplete_data is True and MHVAE.summary


def test_config_errors_name_the_key(assert_config_errors):
    assert_config_errors(MHVAEConfig, [
        ({"n_modalities": 2, "n_latents": 3}, "'n_latents'.*Did you mean 'n_latent'"),
        ({"n_modalities": 2, "n_latent": 1}, "n_latent"),
        ({"n_modalities": 2, "beta": -0.5}, "beta"),
    ])


@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(input_dims, n_samples, make_model, every_subset, assert_predictions):
    model = make_model(input_dims)
    for batch, subset, lead in every_subset(input_dims, n_samples):
        out = model.encode(batch, cond_mod=subset, N=n_samples)
        assert out.z.shape == (*lead, *model.z1_shape) and out.one_latent_space
        assert sorted(out.all_z) == ["z_1", "z_2", "z_3"] and out.all_z["z_3"].shape == (*lead, 4)
        flat = model.encode(batch, cond_mod=subset, N=n_samples, flatten=True)
        assert flat.z.shape == (n_samples * 4, *model.z1_shape)
        assert_predictions(model.predict(batch, cond_mod=subset, gen_mod="all", N=n_samples), input_dims, lead)


def test_spatial_data_gets_spatial_latents_and_vectors_vector_latents(shapes, make_model):
    assert make_model(shapes["volume"]).latent_shapes == [(8, 8, 8, 8), (8, 4, 4, 4), (4,)]
    assert make_model(shapes["image"], n_latent=4).latent_shapes == [(8, 8, 8), (8, 4, 4), (8, 4, 4), (4,)]
    assert make_model(shapes["vector"]).latent_shapes == [(4,), (4,), (4,)]
    assert make_model({"a": (8,), "b": (1, 16, 16)}).latent_shapes == [(4,), (4,), (4,)]


def test_the_deepest_dense_layers_read_a_bounded_map_on_large_grids(make_model, make_batch):
    # A fine z_1 (one halving) on a large grid: the deepest level's map (48x48 here) is halved once more
    # before the dense layers of z_L, and grown back on the way down; smaller grids keep their blocks.
    dims = {"a": (1, 192, 192), "b": (1, 192, 192)}
    model = make_model(dims, spatial_downsampling=1, spatial_channels=4, spatial_latent_channels=2)
    assert model.latent_shapes == [(2, 96, 96), (2, 48, 48), (4,)]
    head = model.bottom_up_blocks["a"][-1]
    assert head.mean.in_features == 8 * 24 * 24 <= 8 * hierarchical.DEEPEST_VOXELS
    assert len(head.reduce) == 1 and len(model.top_down_blocks[-1].expand) == 1
    batch = make_batch(dims, 2)
    model(batch, TrainingProgress(1)).loss.backward()
    assert all(p.grad is not None for p in [*head.reduce.parameters(), *model.top_down_blocks[-1].expand.parameters()])
    small = make_model({"a": (1, 16, 16), "b": (1, 16, 16)})
    assert not any("reduce" in k or "expand" in k for k in small.state_dict())


@pytest.mark.parametrize("kind", ["volume", "image"])
def test_narrow_decoders_keep_the_shapes_and_convolve_only_once_at_the_data_grid(kind, shapes, make_model, make_batch):
    dims = shapes[kind]
    plain, narrow = make_model(dims), make_model(dims, spatial_decoder_channels=4)
    assert narrow.latent_shapes == plain.latent_shapes
    decoder = narrow.decoders["a"]
    last = decoder.up[-1]
    assert isinstance(last, NarrowUpsampleBlock) and last.grid == tuple(dims["a"][1:])
    assert decoder.head.in_channels == 4
    # The data grid is reached only by the linear resize, so the only layer there is the head.
    grid_sized = []
    decoder.up[-1].register_forward_hook(lambda module, args, out: grid_sized.append(out.shape))
    batch = make_batch(dims, 2)
    out = narrow.predict(batch, cond_mod="all", gen_mod="all")
    assert grid_sized == [(2, 4, *dims["a"][1:])]
    assert {m: tuple(out[m].shape) for m in dims} == {m: (2, *shape) for m, shape in dims.items()}
    narrow(batch, TrainingProgress(1)).loss.backward()
    assert all(p.grad is not None for p in narrow.decoders.parameters())


@pytest.mark.parametrize("kind", ["volume", "image"])
def test_the_refined_narrow_decoder_starts_as_the_narrow_one_and_learns_its_full_resolution_path(
    kind, shapes, make_model, make_batch
):
    dims = shapes[kind]
    torch.manual_seed(0)
    narrow = make_model(dims, spatial_decoder_channels=4)
    torch.manual_seed(0)
    refined = make_model(dims, spatial_decoder_channels=4, spatial_decoder_refine=True)
    last = refined.decoders["a"].up[-1]
    assert isinstance(last.refine, hierarchical.UpsampleConvBlock) and last.refine.grid == tuple(dims["a"][1:])
    assert refined.decoders["a"].head.in_channels == 4 + last.refine.block[0].out_channels
    # The gain starts at 0, so the full-resolution features add nothing until training opens it.
    decoder = refined.decoders["a"]
    coarse = decoder.up[:-1](decoder.start(torch.randn(2, *refined.z1_shape)))
    features = last(coarse)
    assert torch.equal(features[:, 4:], torch.zeros_like(features[:, 4:]))
    assert torch.equal(features[:, :4], nn.functional.interpolate(last.narrow(coarse), size=last.grid, mode=last.mode))
    batch = make_batch(dims, 2)
    refined(batch, TrainingProgress(1)).loss.backward()
    assert last.refine_gain.grad is not None and last.refine_gain.grad.abs() > 0
    assert set(narrow.state_dict()) < set(refined.state_dict())
    with pytest.raises(ConfigError, match="spatial_decoder_channels"):
        make_model(dims, spatial_decoder_refine=True)


def test_generation_runs_the_prior_chain_and_decodes(input_dims, make_model, assert_predictions):
    model = make_model(input_dims)
    generated = model.generate_from_prior(3)
    assert generated.z.shape == (3, *model.z1_shape)
    assert [generated.all_z[f"z_{level}"].shape[1:] for level in (1, 2, 3)] == model.latent_shapes
    assert_predictions(model.decode(generated), input_dims, (3,))
    torch.manual_seed(1)
    cold = model.generate_from_prior(2, temperature=0.0).z
    assert torch.equal(cold, model.generate_from_prior(2, temperature=0.0).z)


@pytest.mark.parametrize("kind", ["vector", "image"])
def test_gradients_reach_every_parameter(kind, shapes, make_model, make_batch, assert_finite_gradients):
    dims = shapes[kind]
    model = make_model(dims)
    model(make_batch(dims, 4), TrainingProgress(1)).loss.backward()
    assert_finite_gradients(model)


def test_sanity_checks_raise_clear_errors(vectors, make_model):
    blocks = default_mhvae_blocks(vectors, 4, 3)
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


def test_top_down_shape_mismatch_with_the_skips_is_explained(shapes, make_model):
    dims = shapes["image"]
    blocks = default_mhvae_blocks(dims, 4, 3)
    wrong_grid = [blocks["top_down_blocks"][0], nn.Sequential(nn.Linear(4, 128 * 9), nn.Unflatten(1, (128, 3, 3)))]
    with pytest.raises(ConfigError, match=r"top_down_blocks\[1\] gives h_2 of shape \(128, 3, 3\).*d\^\(2\) of 'a'.*\(128, 4, 4\)"):
        make_model(dims, modules={"top_down_blocks": wrong_grid})


def test_default_blocks_need_input_dims():
    blocks = small_user_blocks()
    with pytest.raises(ConfigError, match="default blocks from input_dims.*pass bottom_up_blocks"):
        MHVAE(MHVAEConfig(n_modalities=2, latent_dim=4), encoders=blocks["encoders"], decoders=blocks["decoders"])


def test_user_blocks_with_shared_weights_train_save_and_load(tmp_path, make_batch):
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


def test_modality_and_subset_encode_give_every_level(make_model, make_batch):
    model = make_model()
    batch = make_batch(missing={"b": [0]})
    params, skips = model.modality_encode(batch.data)
    assert params["a"].embedding.shape == (5, 4) and [d.shape for d in skips["a"]] == [(5, 256), (5, 256)]
    z, kl = model.subset_encode(params, skips, ["b", "c"], batch)
    assert sorted(z) == ["z_1", "z_2", "z_3"] and sorted(kl) == ["kl_1", "kl_2", "kl_3"]
    assert all(k.shape == (5,) and torch.isfinite(k).all() for k in kl.values())
    alone, kl_alone = model.subset_encode(params, skips, ["b"], batch, return_mean=True)
    assert all(float(k[0].detach()) == 0.0 for k in kl_alone.values()), "no observed expert: the posterior is the prior"


def test_missing_modalities_do_not_change_the_loss(make_model, make_batch, with_noise_where_missing, under_seed):
    model = make_model()
    batch = make_batch(n=6, missing={"a": [0, 3], "c": [1, 3]})
    changed = with_noise_where_missing(batch)
    first = under_seed(8, model, batch, TrainingProgress(2)).loss
    assert torch.equal(first, under_seed(8, model, changed, TrainingProgress(2)).loss)


@pytest.fixture
def deterministic_sampling(monkeypatch):
    """Replace every draw by the mean so that losses can be compared exactly."""
    monkeypatch.setattr(mhvae_module, "rsample", lambda mu, logvar, n=1, return_mean=False: mu)


def _subset_loss(model: MHVAE, batch: DatasetOutput, subset: list[str]) -> torch.Tensor:
    params, skips = model.modality_encode(batch.data)
    z, kl = model.subset_encode(params, skips, subset, batch, return_mean=True)
    recon = sum(model.reconstruction_log_likelihood(batch, m, model.decoder_output(m, z["z_1"])) for m in model.modalities)
    return -recon + model.model_config.beta * sum(kl.values())


def test_subsets_without_an_observed_modality_are_skipped_per_sample(deterministic_sampling, make_model, make_batch):
    dims = {"a": (8,), "b": (8,)}
    model = make_model(dims, beta=0.5)
    batch = make_batch(dims, n=3, missing={"b": [0]})
    per_subset = {s: _subset_loss(model, batch, list(s)) for s in all_subsets(["a", "b"])}
    expected_0 = per_subset[("a",)][0]  # {a} and {a, b} both reduce to q(z | x_a); {b} holds nothing of sample 0
    expected_rest = sum(loss[1:] for loss in per_subset.values()) / 3
    expected = (expected_0 + expected_rest.sum()) / 3
    assert torch.allclose(model(batch).loss, expected, rtol=1e-5)
    assert torch.allclose(per_subset[("a", "b")][0], per_subset[("a",)][0])


def test_pairs_with_the_same_experts_are_one_row_and_pairs_without_any_are_none():
    # Subsets {a}, {b}, {a, b}; sample 0 observes a and b, sample 1 only a, sample 2 only b.
    in_subset = torch.tensor([[True, False, True], [False, True, True]])  # (M, S)
    masks = torch.tensor([[True, True, False], [True, False, True]])  # (M, B)
    pairs = mhvae_module.ExpertSets.of(in_subset.unsqueeze(-1) & masks.unsqueeze(1))
    rows = {(int(b), tuple(pairs.present[:, r].tolist())): float(pairs.multiplicity[r]) for r, b in enumerate(pairs.sample)}
    assert rows == {
        (0, (True, False)): 1.0, (0, (False, True)): 1.0, (0, (True, True)): 1.0,
        (1, (True, False)): 2.0,  # {a} and {a, b} are both q(z | x_a) for sample 1; {b} holds nothing of it
        (2, (False, True)): 2.0,
    }
    assert pairs.counted_per_sample.tolist() == [3.0, 2.0, 2.0]
    joint = pairs.row_of(masks, torch.arange(3))  # each sample's row with all its observed modalities
    assert [int(pairs.sample[r]) for r in joint] == [0, 1, 2]
    assert [tuple(pairs.present[:, r].tolist()) for r in joint] == [(True, True), (True, False), (False, True)]


def test_an_all_subset_evaluation_runs_each_distinct_posterior_once(make_model, make_batch, monkeypatch):
    model = make_model()
    model.eval()
    batch = make_batch(n=6, missing={"a": [0, 3], "c": [1, 3]})
    rows: list[int] = []
    top_down = model.top_down

    def counting(params, skips, present, **kwargs):
        rows.append(present.shape[1])
        return top_down(params, skips, present, **kwargs)

    monkeypatch.setattr(model, "top_down", counting)
    model(batch)
    observed = [sum(bool(batch.masks[m][i]) for m in model.modalities) for i in range(6)]
    assert rows == [sum(2 ** k - 1 for k in observed)] and rows[0] < len(all_subsets(model.modalities)) * 6


def test_the_loss_is_a_batch_mean_and_empty_samples_add_nothing(deterministic_sampling, make_model, make_batch):
    model = make_model()
    batch = make_batch(n=4)
    doubled = MultimodalBaseDataset({m: torch.cat([x, x]) for m, x in batch.data.items()}).as_batch()
    assert torch.allclose(model(batch).loss, model(doubled).loss, rtol=1e-5)
    with_empty = IncompleteDataset(
        {m: torch.cat([x, torch.zeros(1, *x.shape[1:])]) for m, x in batch.data.items()},
        {m: torch.tensor([True] * 4 + [False]) for m in batch.data},
    ).as_batch()
    assert torch.allclose(5 * model(with_empty).loss, 4 * model(batch).loss, rtol=1e-5)


def test_save_load_round_trip_gives_identical_outputs(shapes, make_model, make_batch, round_trip, under_seed):
    dims = shapes["image"]
    model = make_model(dims)
    batch = make_batch(dims, 3)
    loaded = round_trip(model)
    for cond in (["a"], "all"):
        assert torch.equal(model.encode(batch, cond, return_mean=True).z, loaded.encode(batch, cond, return_mean=True).z)
    first = under_seed(5, model, batch).loss
    assert torch.equal(first, under_seed(5, loaded, batch).loss)


def test_joint_nll_is_finite_on_partial_data(make_model, make_batch):
    model = make_model()
    nll = model.compute_joint_nll(make_batch(missing={"a": [1]}), K=12, batch_size_K=5)
    assert nll.shape == () and torch.isfinite(nll)


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    blocks = default_mhvae_blocks(toy.dims, 4, 3, width=64)  # narrow: the test is about the objective
    model = MHVAE(toy.config(MHVAEConfig), **blocks)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=10)
    assert after < before
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline


def test_least_squares_losses_train_each_side_only():
    from core.models._shared.adversarial import PatchDiscriminator, least_squares_losses

    torch.manual_seed(0)
    discriminator = PatchDiscriminator(dims=3, in_channels=1, grid=(8, 8, 8), width=4, n_layers=2)
    real = torch.randn(2, 1, 8, 8, 8)
    fake = torch.randn(3, 1, 8, 8, 8, requires_grad=True)
    generator_loss, discriminator_loss = least_squares_losses(discriminator, real, fake)
    generator_loss.backward(retain_graph=True)
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in discriminator.parameters())  # L_G does not train D
    fake.grad = None
    discriminator_loss.backward()
    assert fake.grad is None  # L_D does not train the generator
    assert all(p.grad is not None for p in discriminator.parameters())


def test_adversarial_term_is_off_by_default_and_starts_at_its_epoch():
    from core.models._shared.annealing import TrainingProgress

    dims = {"a": (1, 8, 8, 8), "b": (1, 8, 8, 8)}
    plain = MHVAE(MHVAEConfig(n_modalities=2, input_dims=dims, latent_dim=4))
    assert plain.discriminators is None and not any(k.startswith("discriminators") for k in plain.state_dict())
    model = MHVAE(MHVAEConfig(n_modalities=2, input_dims=dims, latent_dim=4, adversarial_weight=0.5, adversarial_start_epoch=3))
    assert set(model.discriminators) == {"a", "b"}
    batch = {"data": {m: torch.randn(4, *s) for m, s in dims.items()},
             "masks": {"a": torch.tensor([True, True, False, True]), "b": torch.ones(4, dtype=torch.bool)}}
    model.train()
    before = model(batch, TrainingProgress(epoch=2)).terms
    assert before["adversarial_g[a]"] == 0 and before["adversarial_d[b]"] == 0
    after = model(batch, TrainingProgress(epoch=3))
    assert after.terms["adversarial_g[a]"] > 0 and after.terms["adversarial_d[b]"] > 0
    after.loss.backward()
    assert all(p.grad is not None for p in model.discriminators.parameters())
    model.eval()
    assert model(batch, TrainingProgress(epoch=3)).terms["adversarial_g[a]"] == 0  # validation: the ELBO alone
    with pytest.raises(ConfigError, match="image or volume"):
        MHVAE(MHVAEConfig(n_modalities=2, input_dims={"a": (4,), "b": (3,)}, latent_dim=2, adversarial_weight=1.0))
