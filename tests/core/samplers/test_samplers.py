"""Latent samplers: fit, save (no pickle), load, sample, and decode with every registered model."""

from __future__ import annotations

import math

import pytest
import torch

from core.data import IncompleteDataset
from core.models import MVAE, MVAEConfig, available, build_model
from core.samplers import (
    GaussianMixtureSampler,
    MAFSampler,
    SamplerError,
    encode_training_latents,
    load_sampler,
    sampler_folder,
)

DIMS = {"a": (5,), "b": (4,)}


def two_clusters(n: int = 200) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-3.0, 0.0, 1.0], [3.0, 1.0, -1.0]])
    return centres[torch.arange(n) % 2] + 0.3 * torch.randn(n, 3, generator=g)


def toy_data(n: int = 40) -> IncompleteDataset:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, 2, generator=g)
    data = {m: z @ torch.randn(2, s[0], generator=g) for m, s in DIMS.items()}
    masks = {"a": torch.rand(n, generator=g) > 0.3, "b": torch.ones(n, dtype=torch.bool)}
    return IncompleteDataset(data, masks)


def test_gmm_finds_the_clusters_and_clips_components():
    z = two_clusters()
    sampler = GaussianMixtureSampler(n_components=2).fit_latents(z)
    found = sorted(sampler.means[:, 0].tolist())
    assert found == pytest.approx([-3.0, 3.0], abs=0.1)
    samples = sampler.sample(2000, seed=0).z
    assert samples.shape == (2000, 3) and samples.dtype == torch.float32
    assert ((samples[:, 0] > 0).float().mean() - 0.5).abs() < 0.05
    assert GaussianMixtureSampler(n_components=10).fit_latents(z[:4]).fitted_components == 4


def test_maf_learns_a_shifted_correlated_gaussian():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(512, 2, generator=g) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]]) + torch.tensor([5.0, -2.0])
    sampler = MAFSampler(hidden_features=[32, 32], epochs=25, batch_size=128, seed=0).fit_latents(z)
    assert sampler.losses[-1] < sampler.losses[0]
    samples = sampler.sample(4000, seed=1).z
    assert samples.mean(0).tolist() == pytest.approx(z.mean(0).tolist(), abs=0.15)
    assert torch.corrcoef(samples.T)[0, 1].item() == pytest.approx(torch.corrcoef(z.T)[0, 1].item(), abs=0.1)
    # log q of the training data is close to that of the true Gaussian (entropy of the data distribution).
    true_entropy = 0.5 * math.log(torch.linalg.det(torch.cov(z.T)).item()) + math.log(2 * math.pi * math.e)
    assert -sampler.log_prob(z).mean().item() == pytest.approx(true_entropy, abs=0.2)


@pytest.mark.parametrize("kind", ["gmm", "maf"])
def test_fit_save_load_sample_round_trip_without_pickle(tmp_path, kind):
    torch.manual_seed(0)
    model = MVAE(MVAEConfig(n_modalities=2, latent_dim=3, input_dims=DIMS))
    sampler = GaussianMixtureSampler(n_components=3) if kind == "gmm" else MAFSampler(hidden_features=[16], epochs=3)
    sampler.fit(model, toy_data())
    folder = sampler_folder(tmp_path / "run", kind)
    sampler.save(folder, {"note": "test"})
    assert sorted(p.name for p in folder.iterdir()) == ["sampler.json", "sampler.safetensors"]
    loaded = load_sampler(folder)
    assert type(loaded) is type(sampler) and loaded.latent_shape == (3,)
    assert torch.equal(loaded.sample(7, seed=3).z, sampler.sample(7, seed=3).z)
    decoded = model.decode(loaded.sample(7, seed=3))
    assert decoded["a"].shape == (7, 5) and decoded["b"].shape == (7, 4)
    with pytest.raises(SamplerError, match="not a"):
        (MAFSampler if kind == "gmm" else GaussianMixtureSampler).load(folder)


def test_errors_are_clear():
    with pytest.raises(SamplerError, match="not fitted"):
        GaussianMixtureSampler().sample(3)
    with pytest.raises(FileNotFoundError, match="sampler.json"):
        load_sampler("/nonexistent/folder")


@pytest.mark.parametrize("name", available())
def test_every_registered_model_decodes_sampler_output(name):
    torch.manual_seed(0)
    model = build_model(name, {"n_modalities": 2, "latent_dim": 2, "input_dims": DIMS})
    complete = IncompleteDataset(toy_data().data, {m: torch.ones(40, dtype=torch.bool) for m in DIMS})
    if getattr(model, "conditions_on_fixed_modalities", False):  # p(z | c): no latent density to sample alone
        with pytest.raises(SamplerError, match="no unconditional latent space"):
            GaussianMixtureSampler(n_components=2).fit(model, complete)
        return
    z = encode_training_latents(model, complete)
    assert len(z) == 40
    sampler = GaussianMixtureSampler(n_components=2).fit(model, complete)
    sample = sampler.sample(5, seed=0)
    assert sample.z.shape == (5, *model.generate_from_prior(5).z.shape[1:])
    decoded = model.decode(sample)
    assert decoded["a"].shape == (5, 5) and torch.isfinite(decoded["b"]).all()
