import pytest
import torch

from core.data import IncompleteDataset, MultimodalBaseDataset, collate_multimodal
from core.models import (
    MVAE,
    ConfigError,
    IncompleteDataError,
    MVAEConfig,
    TrainingProgress,
    config_from_dict,
    load,
)
from core.models._shared.subsets import all_subsets
from core.nn import default_decoder, default_encoder

INPUT_DIMS = {"T1": (1, 8, 8), "T2": (1, 8, 8), "age": (3,)}


def make_model(**overrides) -> MVAE:
    return MVAE(MVAEConfig(n_modalities=3, latent_dim=4, input_dims=INPUT_DIMS, **overrides))


def make_batch(n: int = 6, incomplete: bool = False):
    data = {m: torch.randn(n, *shape) for m, shape in INPUT_DIMS.items()}
    if not incomplete:
        return MultimodalBaseDataset(data).as_batch()
    masks = {m: torch.ones(n, dtype=torch.bool) for m in INPUT_DIMS}
    masks["T2"][::2] = False
    masks["age"][1] = False
    return collate_multimodal([IncompleteDataset(data, masks)[i] for i in range(n)])


def test_config_defaults_follow_the_seed():
    config = MVAEConfig(n_modalities=2)
    assert (config.latent_dim, config.use_subsampling, config.k, config.warmup, config.beta) == (10, True, 0, 10, 1)
    assert config.uses_likelihood_rescaling is False and config.rescale_factors is None
    assert config.decoders_dist is None and config.decoder_dist_params is None and config.custom_architectures == []


def test_config_typo_names_the_key():
    with pytest.raises(ConfigError, match="'warmpu'.*Did you mean 'warmup'"):
        config_from_dict(MVAEConfig, {"n_modalities": 2, "warmpu": 5})
    with pytest.raises(ConfigError, match="latent_dim"):
        config_from_dict(MVAEConfig, {"n_modalities": 2, "latent_dim": 0})
    with pytest.raises(ConfigError, match="decoders_dist"):
        config_from_dict(MVAEConfig, {"n_modalities": 1, "input_dims": {"a": [2]}, "decoders_dist": {"b": "normal"}})


@pytest.mark.parametrize("subset", all_subsets(list(INPUT_DIMS)))
@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(subset, n_samples):
    model = make_model()
    batch = make_batch(5)
    z = model.encode(batch, cond_mod=list(subset), N=n_samples).z
    assert z.shape == ((5, 4) if n_samples == 1 else (n_samples, 5, 4))
    flat = model.encode(batch, cond_mod=list(subset), N=n_samples, flatten=True).z
    assert flat.shape == (n_samples * 5, 4)
    out = model.predict(batch, cond_mod=list(subset), gen_mod="all", N=n_samples)
    for m, shape in INPUT_DIMS.items():
        assert out[m].shape == ((5, *shape) if n_samples == 1 else (n_samples, 5, *shape))
    assert model.encode(batch, list(subset), return_mean=True).z.equal(model.encode(batch, list(subset), return_mean=True).z)


def test_generation_from_prior_decodes():
    model = make_model()
    out = model.decode(model.generate_from_prior(7))
    assert out["T1"].shape == (7, 1, 8, 8) and out["age"].shape == (7, 3)


def test_finite_gradients_reach_every_parameter():
    model = make_model(k=1, warmup=0)
    model.train()
    loss = model(make_batch(6, incomplete=True), TrainingProgress(1, 0.3)).loss
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_values_of_a_missing_modality_do_not_change_the_loss(under_seed):
    model = make_model(k=1)
    batch = make_batch(6, incomplete=True)
    other = {**batch, "data": {**batch.data, "T2": batch.data["T2"].clone()}}
    other["data"]["T2"][~batch.masks["T2"]] = 1e3 * torch.randn_like(other["data"]["T2"][~batch.masks["T2"]])
    loss = under_seed(5, model, batch, TrainingProgress(3)).loss
    loss_other = under_seed(5, model, other, TrainingProgress(3)).loss
    assert torch.allclose(loss, loss_other)


def test_encode_refuses_a_missing_conditioning_modality_unless_asked():
    model = make_model()
    batch = make_batch(6, incomplete=True)
    with pytest.raises(IncompleteDataError, match="T2"):
        model.encode(batch, cond_mod=["T2"])
    z = model.encode(batch, cond_mod=["T1", "T2"], ignore_incomplete=True).z
    assert torch.isfinite(z).all()


def test_annealing_is_passed_by_the_trainer_not_smuggled():
    model = make_model(warmup=4, beta=2.0)
    batch = make_batch()
    assert model(batch, TrainingProgress(1, 0.0)).terms["beta"] == 0.0
    assert model(batch, TrainingProgress(3, 0.0)).terms["beta"] == pytest.approx(1.0)
    assert model(batch).terms["beta"] == pytest.approx(2.0)


def test_random_subsets_only_in_training():
    model = make_model(k=2)
    model.train()
    assert "elbo[random subsets]" in model(make_batch()).terms
    model.eval()
    assert "elbo[random subsets]" not in model(make_batch()).terms


def test_joint_nll_is_finite_and_tightens_with_more_samples():
    model = make_model()
    batch = make_batch(4)
    torch.manual_seed(0)
    nll_small = torch.stack([model.compute_joint_nll(batch, K=2, batch_size_K=2) for _ in range(20)]).mean()
    nll_large = torch.stack([model.compute_joint_nll(batch, K=200, batch_size_K=50) for _ in range(3)]).mean()
    assert torch.isfinite(nll_large)
    assert nll_large <= nll_small  # the importance-sampled bound tightens with K


def test_save_load_round_trip(tmp_path):
    model = make_model()
    batch = make_batch()
    model.save(tmp_path / "bundle")
    loaded = load(tmp_path / "bundle")
    assert isinstance(loaded, MVAE) and loaded.model_config == model.model_config
    a = model.encode(batch, "all", return_mean=True).z
    b = loaded.encode(batch, "all", return_mean=True).z
    assert torch.equal(a, b)


def test_custom_modules_are_required_again_on_load(tmp_path):
    encoders = {m: default_encoder(s, 4) for m, s in INPUT_DIMS.items()}
    decoders = {m: default_decoder(4, s) for m, s in INPUT_DIMS.items()}
    model = MVAE(MVAEConfig(n_modalities=3, latent_dim=4, input_dims=INPUT_DIMS), encoders=encoders, decoders=decoders)
    assert model.model_config.custom_architectures == ["decoders", "encoders"]
    model.save(tmp_path / "b")
    with pytest.raises(ConfigError, match="pass the same modules"):
        load(tmp_path / "b")
    assert isinstance(load(tmp_path / "b", encoders=encoders, decoders=decoders), MVAE)


def test_wrong_shape_is_reported_with_the_modality():
    model = make_model()
    batch = make_batch()
    batch.data["T1"] = torch.randn(6, 1, 9, 8)
    with pytest.raises(ValueError, match="'T1'.*\\(1, 9, 8\\)"):
        model(batch)


def test_batched_objective_is_the_sum_of_subset_elbos_computed_one_at_a_time(under_seed):
    """One stacked product of experts and one decoder call per modality give the paper's sum of ELBO_S."""
    from core.models._shared.gaussian import kl_standard_normal

    model = make_model(warmup=0)
    model.eval()  # no random subsets: the noise below is the only draw
    batch = make_batch(6, incomplete=True)
    subsets = model.subsets_for_step()
    torch.manual_seed(5)
    noise = torch.randn(len(subsets), batch.batch_size, model.latent_dim)
    expected = torch.zeros(())
    for eps, subset in zip(noise, subsets, strict=True):
        mu, logvar = model.compute_mu_log_var_subset(batch, subset)
        z = mu + (0.5 * logvar).exp() * eps
        recon = sum(model.reconstruction_log_likelihood(batch, m, model.decoder_output(m, z)) for m in subset)
        covered = torch.stack([batch.masks[m] for m in subset]).any(0).float()
        expected = expected + ((-recon + kl_standard_normal(mu, logvar)) * covered).sum() / covered.sum()
    loss = under_seed(5, model, batch, TrainingProgress(3)).loss
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_each_decoder_runs_once_per_step_unless_it_normalises_over_the_batch():
    def count_calls(model: MVAE) -> dict[str, int]:
        calls = dict.fromkeys(model.decoders, 0)
        for m, decoder in model.decoders.items():
            decoder.register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
        model.train()
        model(make_batch(), TrainingProgress(1))
        return calls

    assert count_calls(make_model()) == {"T1": 1, "T2": 1, "age": 1}
    with_batch_norm = make_model()
    with_batch_norm.decoders["age"] = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    # Joint set and the singleton: age's decoder sees each subset's batch on its own.
    assert count_calls(with_batch_norm) == {"T1": 2, "T2": 2, "age": 2}
