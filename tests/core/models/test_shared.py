"""The shared machinery against closed forms and torch.distributions."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from core.models._shared.annealing import TrainingProgress, linear_warmup_per_epoch, linear_warmup_per_step
from core.models._shared.gaussian import kl_normal, kl_standard_normal, log_normal, rsample
from core.models._shared.likelihoods import reconstruction_log_likelihood
from core.models._shared.poe import product_of_experts
from core.models._shared.subsets import all_subsets, experts_of_subsets, random_subsets


def closed_form_poe(mus, variances):
    precision = sum(1 / v for v in variances)
    mean = sum(m / v for m, v in zip(mus, variances, strict=True)) / precision
    return mean, 1 / precision


def test_poe_matches_closed_form_with_prior():
    mus = torch.tensor([[[1.0, -2.0]], [[3.0, 0.5]]], dtype=torch.float64)
    logvars = torch.tensor([[[0.0, 1.0]], [[-1.0, 0.2]]], dtype=torch.float64)
    mu, logvar = product_of_experts(mus, logvars, with_prior=True)
    for d in range(2):
        ms = [mus[0, 0, d].item(), mus[1, 0, d].item(), 0.0]
        vs = [math.exp(logvars[0, 0, d]), math.exp(logvars[1, 0, d]), 1.0]
        mean, var = closed_form_poe(ms, vs)
        assert mu[0, d].item() == pytest.approx(mean, rel=1e-10)
        assert logvar[0, d].exp().item() == pytest.approx(var, rel=1e-10)


def test_poe_excludes_missing_experts_and_keeps_gradients_finite():
    mus = torch.randn(3, 4, 5, requires_grad=True)
    logvars = torch.randn(3, 4, 5, requires_grad=True)
    present = torch.tensor([[True, False, True, False], [True, True, False, False], [False, True, True, False]])
    mu, logvar = product_of_experts(mus, logvars, present, with_prior=True)
    # sample 3 has no expert: the prior alone
    assert torch.allclose(mu[3], torch.zeros(5), atol=1e-7) and torch.allclose(logvar[3], torch.zeros(5), atol=1e-6)
    # sample 0 uses experts 0 and 1 and the prior only
    ref_mu, ref_lv = product_of_experts(mus[:2, :1], logvars[:2, :1], with_prior=True)
    assert torch.allclose(mu[0], ref_mu[0]) and torch.allclose(logvar[0], ref_lv[0])
    (mu.sum() + logvar.sum()).backward()
    assert torch.isfinite(mus.grad).all() and torch.isfinite(logvars.grad).all()
    # the missing expert of sample 1 (expert 0) receives no gradient
    assert torch.all(mus.grad[0, 1] == 0)


def test_poe_is_stable_for_tiny_and_huge_variances_and_garbage_in_missing():
    mus = torch.tensor([[[1e4]], [[2.0]]])
    logvars = torch.tensor([[[-60.0]], [[60.0]]])
    mu, logvar = product_of_experts(mus, logvars, with_prior=False)
    assert torch.isfinite(mu).all() and mu.item() == pytest.approx(1e4)
    garbage = torch.tensor([[[float("inf")]], [[2.0]]])
    mu, _ = product_of_experts(garbage, torch.zeros(2, 1, 1), torch.tensor([[False], [True]]), with_prior=True)
    assert mu.item() == pytest.approx(1.0)


def test_poe_without_prior_refuses_rows_with_no_expert():
    with pytest.raises(ValueError, match="no observed expert"):
        product_of_experts(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.tensor([[True, False, True], [True, False, False]]),
                           with_prior=False)


@pytest.mark.parametrize("dist", ["normal", "laplace", "bernoulli"])
def test_likelihoods_match_torch_distributions(dist):
    x = torch.rand(4, 3, 5)
    x_hat = torch.randn(4, 3, 5)
    scale = 0.7
    if dist == "bernoulli":  # torch's Bernoulli only accepts {0, 1}: compare on binary data
        x = (x > 0.5).float()
        ours = reconstruction_log_likelihood(dist, x, x_hat)
        expected = D.Bernoulli(logits=x_hat).log_prob(x).flatten(1).sum(1)
    else:
        ours = reconstruction_log_likelihood(dist, x, x_hat, {"scale": scale})
        reference = D.Normal(x_hat, scale) if dist == "normal" else D.Laplace(x_hat, scale)
        expected = reference.log_prob(x).flatten(1).sum(1)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_likelihood_rescale_and_observed_voxels():
    x = torch.randn(2, 6)
    x_hat = torch.randn(3, 2, 6)  # N=3 latent samples
    observed = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    out = reconstruction_log_likelihood("normal", x, x_hat, rescale=2.0, observed_voxels=observed)
    assert out.shape == (3, 2)
    manual = 2.0 * D.Normal(x_hat[:, 0, :3], 1.0).log_prob(x[0, :3]).sum(-1)
    assert torch.allclose(out[:, 0], manual, atol=1e-5)
    x_changed = x.clone()
    x_changed[0, 3:] = 1e6  # unobserved voxels cannot change the value
    assert torch.allclose(reconstruction_log_likelihood("normal", x_changed, x_hat, rescale=2.0, observed_voxels=observed), out)


def test_kl_and_log_density_match_torch():
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    mu2, logvar2 = torch.randn(5, 4), torch.randn(5, 4)
    q = D.Normal(mu, (0.5 * logvar).exp())
    p = D.Normal(mu2, (0.5 * logvar2).exp())
    assert torch.allclose(kl_standard_normal(mu, logvar), D.kl_divergence(q, D.Normal(0.0, 1.0)).sum(-1), atol=1e-5)
    assert torch.allclose(kl_normal(mu, logvar, mu2, logvar2), D.kl_divergence(q, p).sum(-1), atol=1e-5)
    z = torch.randn(5, 4)
    assert torch.allclose(log_normal(z, mu, logvar), q.log_prob(z).sum(-1), atol=1e-5)


def test_rsample_shapes_and_moments():
    mu, logvar = torch.full((2, 3), 1.5), torch.full((2, 3), math.log(0.25))
    assert rsample(mu, logvar).shape == (2, 3)
    many = rsample(mu, logvar, n=20000)
    assert many.shape == (20000, 2, 3)
    assert many.mean().item() == pytest.approx(1.5, abs=0.01)
    assert many.std().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(rsample(mu, logvar, n=4, return_mean=True)[2], mu)


def test_subsets_and_annealing():
    assert len(all_subsets(["a", "b", "c"])) == 7
    picks = random_subsets(["a", "b", "c", "d"], 3, np.random.default_rng(0))
    assert len(set(picks)) == 3 and all(2 <= len(s) <= 3 for s in picks)
    with pytest.raises(ValueError):
        random_subsets(["a", "b", "c"], 4, np.random.default_rng(0))
    assert linear_warmup_per_step(TrainingProgress(1, 0.0), 10, 2.0) == 0.0
    assert linear_warmup_per_step(TrainingProgress(6, 0.5), 10, 2.0) == pytest.approx(1.1)
    assert linear_warmup_per_step(TrainingProgress(11), 10, 2.0) == 2.0
    assert linear_warmup_per_step(None, 10, 2.0) == 2.0
    assert linear_warmup_per_epoch(TrainingProgress(1), 20) == pytest.approx(0.05)


def test_analytic_scale_is_the_elbo_optimum_over_observed_voxels_only():
    from core.models._shared.likelihoods import analytic_log_scale

    x = torch.zeros(3, 1, 4)
    x_hat = torch.tensor([[[1.0, -1.0, 1.0, -1.0]], [[2.0, 2.0, 2.0, 2.0]], [[50.0, 50.0, 50.0, 50.0]]])
    observed_samples = torch.tensor([True, True, False])  # the third sample is missing: ignored
    voxels = torch.ones(3, 1, 4, dtype=torch.bool)
    voxels[1, 0, 2:] = False  # and half of the second sample lies outside its field of view
    # normal: sigma^2 = mean squared error over the 6 kept voxels = (4 * 1 + 2 * 4) / 6 = 2. The soft
    # floor at -6 moves a log-scale near 0 by log(1 + e^-6) = 0.0025 at most.
    log_sigma = analytic_log_scale("normal", x, x_hat, observed_samples, voxels)
    assert log_sigma.item() == pytest.approx(0.5 * math.log(2.0), abs=2.5e-3)
    # laplace: b = mean |error| = (4 * 1 + 2 * 2) / 6
    log_b = analytic_log_scale("laplace", x, x_hat, observed_samples, voxels)
    assert log_b.item() == pytest.approx(math.log(8 / 6), abs=2.5e-3)
    # The optimum maximises the Gaussian likelihood over a shared scale.
    def summed(log_s: float) -> float:
        log_p = reconstruction_log_likelihood("normal", x, x_hat, {"scale": torch.tensor(log_s).exp()},
                                              observed_voxels=voxels)
        return float((log_p * observed_samples).sum())
    best = summed(log_sigma.item())
    assert best > summed(log_sigma.item() + 0.05) and best > summed(log_sigma.item() - 0.05)
    # A perfect fit is floored rather than infinite, and nothing observed gives scale 1.
    assert analytic_log_scale("normal", x, x, observed_samples).item() == pytest.approx(-6.0, abs=1e-3)
    assert analytic_log_scale("normal", x, x_hat, torch.zeros(3, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("mode", ["learned", "analytic"])
def test_calibrated_decoder_scale_trains_and_evaluates_deterministically(mode):
    from core.models import MVAE, MVAEConfig

    torch.manual_seed(0)
    dims = {"a": (6,), "b": (4,)}
    model = MVAE(MVAEConfig(n_modalities=2, input_dims=dims, latent_dim=2, decoder_scale=mode))
    assert model.decoder_log_scales is not None and set(model.decoder_log_scales) == {"a", "b"}
    batch = {"data": {"a": torch.randn(8, 6) * 0.1, "b": torch.randn(8, 4) * 0.1}}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    # On data of std 0.1 the calibrated scale falls well below the fixed default of 1.
    assert model.decoder_log_scale("a").item() < -0.5
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(batch).loss
        torch.manual_seed(1)
        second = model(batch).loss
    assert first.item() == second.item()
    fixed = MVAE(MVAEConfig(n_modalities=2, input_dims=dims, latent_dim=2))
    assert fixed.decoder_log_scales is None and "decoder_log_scales.a" not in fixed.state_dict()


def test_experts_of_subsets_keeps_the_observed_members_of_each_subset():
    masks = {"a": torch.tensor([True, False]), "b": torch.tensor([True, True])}
    keep = experts_of_subsets(["a", "b"], [("a", "b"), ("a",), ("b",)], masks)
    assert keep.shape == (2, 3, 2)
    assert keep[0].tolist() == [[True, False], [True, False], [False, False]]  # a: observed for sample 0 only
    assert keep[1].tolist() == [[True, True], [False, False], [True, True]]
