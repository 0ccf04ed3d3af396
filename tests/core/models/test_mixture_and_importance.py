"""The mixture-of-experts helper and the IWAE / DReG estimators against closed forms and autograd."""

import math

import pytest
import torch
from torch.distributions import Laplace, Normal

from core.models._shared.importance import dreg_bound, importance_sampled_log_px, iwae_bound, log_mean_exp
from core.models._shared.latent_distributions import latent_distribution, latent_scale
from core.models._shared.mixture import draw_components, mixture_log_prob


def test_mixture_log_prob_is_the_log_mean_density_of_the_present_experts():
    experts = [Normal(torch.tensor(-1.0), 0.5), Normal(torch.tensor(0.0), 1.0), Normal(torch.tensor(2.0), 2.0)]
    z = torch.tensor([[0.3, -0.7]], dtype=torch.float64)  # (K=1, B=2)
    log_probs = torch.stack([q.log_prob(z) for q in experts])  # (3, 1, 2)
    present = torch.tensor([[True, False], [True, True], [False, True]])
    mixture = mixture_log_prob(log_probs, present)
    first = math.log((experts[0].log_prob(z[0, 0]).exp() + experts[1].log_prob(z[0, 0]).exp()) / 2)
    second = math.log((experts[1].log_prob(z[0, 1]).exp() + experts[2].log_prob(z[0, 1]).exp()) / 2)
    assert mixture.shape == (1, 2)
    assert mixture[0, 0].item() == pytest.approx(first) and mixture[0, 1].item() == pytest.approx(second)


def test_a_sample_without_experts_gives_zero_and_finite_gradients():
    log_probs = torch.randn(2, 3, 4, requires_grad=True)
    present = torch.tensor([[True, False, False, True], [False, True, False, True]])
    mixture = mixture_log_prob(log_probs, present)
    assert torch.all(mixture[:, 2] == 0)
    mixture.sum().backward()
    assert torch.isfinite(log_probs.grad).all()
    assert torch.all(log_probs.grad[:, :, 2] == 0) and torch.all(log_probs.grad[1, :, 0] == 0)


def test_draw_components_picks_only_available_ones_uniformly():
    torch.manual_seed(0)
    available = torch.tensor([[True, False, True], [True, True, False], [False, True, True]]).repeat(1, 2000)
    picks = draw_components(available)
    assert available[picks, torch.arange(available.shape[1])].all()
    share_of_first = (picks[0::3] == 0).float().mean().item()
    assert share_of_first == pytest.approx(0.5, abs=0.05)


def test_iwae_bound_is_a_log_mean_exp_and_tightens_jensen():
    log_w = torch.randn(10, 5)
    assert torch.allclose(iwae_bound(log_w), torch.log(log_w.exp().mean(0)))
    assert torch.all(iwae_bound(log_w) >= log_w.mean(0))
    assert torch.equal(iwae_bound(log_w[:1]), log_w[0])
    assert torch.allclose(log_mean_exp(torch.full((4, 2), 1000.0)), torch.full((2,), 1000.0))


def test_importance_sampled_log_px_draws_k_weights_in_chunks_and_averages_them_once():
    log_w = torch.randn(10, 5)
    sizes = []

    def log_weights(k):
        start = sum(sizes)
        sizes.append(k)
        return log_w[start : start + k]

    assert torch.equal(importance_sampled_log_px(log_weights, K=10, batch_size_K=4), log_mean_exp(log_w))
    assert sizes == [4, 4, 2]


def _toy_log_weights(mu: torch.Tensor, x: float, n_draws: int, rows: int, detach_proposal: bool):
    """p(z) = N(0, 1), p(x | z) = N(z, 1), q(z | x) = N(mu, 0.8^2); the draws and their log-weights."""
    eps = torch.randn(n_draws, rows, dtype=torch.float64)
    z = mu + 0.8 * eps
    q_mu = mu.detach() if detach_proposal else mu
    log_w = Normal(0.0, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.tensor(x)) - Normal(q_mu, 0.8).log_prob(z)
    return z, log_w


def test_dreg_value_is_the_iwae_bound_and_its_gradient_is_the_doubly_reparameterised_one():
    torch.manual_seed(1)
    mu = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    z, log_w = _toy_log_weights(mu, x=1.5, n_draws=5, rows=3, detach_proposal=True)
    value = dreg_bound(log_w, [z])
    assert torch.allclose(value, iwae_bound(log_w.detach()))
    (gradient,) = torch.autograd.grad(value.sum(), mu)
    # By hand: sum_k w_k^2 d lw_k / d z_k (d z_k / d mu = 1), with q's parameters held fixed.
    z_leaf = z.detach().requires_grad_()
    lw = Normal(0.0, 1.0).log_prob(z_leaf) + Normal(z_leaf, 1.0).log_prob(torch.tensor(1.5)) - Normal(mu.detach(), 0.8).log_prob(z_leaf)
    (dlw_dz,) = torch.autograd.grad(lw.sum(), z_leaf)
    weights = torch.softmax(log_w.detach(), dim=0)
    assert gradient.item() == pytest.approx((weights.pow(2) * dlw_dz).sum().item(), rel=1e-10)


def test_dreg_and_iwae_gradients_agree_in_expectation():
    torch.manual_seed(2)
    mu = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    z, log_w = _toy_log_weights(mu, x=1.0, n_draws=4, rows=40000, detach_proposal=True)
    (dreg,) = torch.autograd.grad(dreg_bound(log_w, [z]).mean(), mu)
    z, log_w = _toy_log_weights(mu, x=1.0, n_draws=4, rows=40000, detach_proposal=False)
    (iwae,) = torch.autograd.grad(iwae_bound(log_w).mean(), mu)
    assert dreg.item() == pytest.approx(iwae.item(), abs=0.02)


@pytest.mark.parametrize("kind", ["laplace_with_softmax", "normal", "normal_with_softplus"])
def test_latent_distributions_follow_their_scale_rule(kind):
    log_scale = torch.tensor([[0.0, 1.0, -1.0]])
    q = latent_distribution(kind, torch.zeros(1, 3), log_scale)
    assert isinstance(q, Laplace if kind.startswith("laplace") else Normal)
    if kind == "laplace_with_softmax":
        assert latent_scale(kind, log_scale).sum().item() == pytest.approx(3.0, abs=1e-5)
    assert torch.allclose(q.stddev / (math.sqrt(2) if kind.startswith("laplace") else 1), latent_scale(kind, log_scale))
