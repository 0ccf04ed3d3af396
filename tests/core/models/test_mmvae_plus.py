import math

import pytest
import torch

from core.models import MMVAEPlus, MMVAEPlusConfig
from core.nn import MLPDecoder, MLPEncoder
from core.nn.multilatent import SharedPrivateEncoder

# Tiny models: one intra-op thread is much faster on a busy machine (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def make_model(model_factory):
    return model_factory(MMVAEPlus, K=2, modalities_specific_dim=3)


def test_config_defaults_follow_the_seed(assert_plain_decoders):
    config = MMVAEPlusConfig(n_modalities=2, latent_dim=6)
    assert (config.K, config.prior_and_posterior_dist, config.learn_shared_prior, config.learn_modality_prior) == (
        10,
        "laplace_with_softmax",
        False,
        True,
    )
    assert (config.beta, config.reconstruction_option, config.loss) == (1.0, "joint_prior", "dreg_looser")
    assert config.modalities_specific_dim is None and config.private_dim == 6
    assert_plain_decoders(config)


def test_the_auxiliary_priors_learn_through_the_cross_reconstructions(make_model, make_batch):
    model = make_model()
    assert (not model.prior_log_scale.requires_grad
            and not make_model(learn_modality_prior=False).auxiliary_prior_log_scales["a"].requires_grad)
    assert make_model(learn_shared_prior=True).prior_log_scale.requires_grad
    model.train()
    model(make_batch(n=6)).loss.backward()
    for m in "abc":
        assert model.auxiliary_prior_log_scales[m].grad.abs().sum() > 0, m


def test_dreg_and_iwae_report_the_same_bound(make_model, make_batch, under_seed):
    batch = make_batch(n=5, missing={"b": [1]})
    dreg, iwae = make_model(loss="dreg_looser"), make_model(loss="iwae_looser")
    iwae.load_state_dict(dreg.state_dict())
    assert torch.allclose(under_seed(0, dreg, batch).loss, under_seed(0, iwae, batch).loss)


@pytest.mark.parametrize(("option", "expected_std"), [("joint_prior", 1.0), ("single_prior", 10.0)])
def test_translated_private_codes_come_from_the_chosen_prior(make_model, make_batch, option, expected_std):
    model = make_model(prior_and_posterior_dist="normal", reconstruction_option=option)
    with torch.no_grad():
        model.auxiliary_prior_log_scales["b"].fill_(math.log(100.0))
    batch = make_batch(n=4)
    torch.manual_seed(0)
    codes = model.encode(batch, cond_mod=["a"], N=500).modalities_z
    assert codes["a"].shape == (500, 4, 3) and codes["b"].std().item() == pytest.approx(expected_std, rel=0.1)
    mean = model.encode(batch, cond_mod=["a"], return_mean=True).modalities_z
    q_w_a = model.unimodal_posteriors("a", batch.data["a"])[1]
    assert torch.allclose(mean["a"], q_w_a.mean) and torch.all(mean["b"] == 0)


def test_an_unobserved_conditioning_modality_gets_a_prior_private_code(make_model, make_batch):
    model = make_model()
    batch = make_batch(n=4, missing={"b": [2]})
    codes = model.encode(batch, cond_mod=["a", "b"], return_mean=True, ignore_incomplete=True).modalities_z
    assert torch.all(codes["b"][2] == 0) and not torch.all(codes["b"][0] == 0)


def test_generation_draws_an_independent_private_code_per_modality(make_model):
    model = make_model()
    out = model.generate_from_prior(5)
    assert out.z.shape == (5, 4) and all(w.shape == (5, 3) for w in out.modalities_z.values())
    assert not torch.allclose(out.modalities_z["a"], out.modalities_z["b"])
    assert model.decode(out)["c"].shape == (5, 5)


def test_joint_nll_leaves_out_what_a_sample_lacks(make_model, make_batch):
    model = make_model()
    complete = make_batch(n=4)
    incomplete = {**complete, "masks": {**complete.masks, "b": torch.tensor([False, True, True, True])}}
    torch.manual_seed(0)
    nll = model.compute_joint_nll(complete, K=30, batch_size_K=10)
    without_b = model.compute_joint_nll(incomplete, K=30, batch_size_K=10)
    # 8 unit-scale Gaussian dims of x_b cost well over 8 nats: leaving them out must show.
    assert torch.isfinite(nll) and nll - without_b > 8


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    encoders = {m: SharedPrivateEncoder(MLPEncoder((8,), 4 + 2, hidden=(64,)), 4) for m in toy.dims}
    decoders = {m: MLPDecoder(4 + 2, (8,), hidden=(64,)) for m in toy.dims}
    model = MMVAEPlus(toy.config(MMVAEPlusConfig, K=2, modalities_specific_dim=2), encoders, decoders)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=10)
    assert after < before
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline


def test_the_loss_is_the_papers_bound_computed_by_hand(make_model, make_batch, under_seed):
    model = make_model(K=1, loss="iwae_looser", prior_and_posterior_dist="normal", beta=0.5)
    batch = make_batch(n=3, missing={"c": [0]})
    loss = under_seed(5, model, batch).loss
    # By hand: one draw per expert (so its bound is its log-weight), cross-reconstructions from r_n = N(0, I).
    Normal = torch.distributions.Normal
    observed = {m: batch.masks[m].float() for m in "abc"}
    q = {}
    for m in "abc":
        out = model.encoders[m](batch.data[m])
        q[m] = (Normal(out.embedding, (0.5 * out.log_covariance).exp()),
                Normal(out.style_embedding, (0.5 * out.style_log_covariance).exp()))
    n_observed = sum(observed.values())
    torch.manual_seed(5)
    total = torch.zeros(3)
    for m in "abc":
        u, w = q[m][0].rsample(), q[m][1].rsample()
        log_px = 0
        for n in "abc":
            w_n = w if n == m else torch.randn(3, 3)
            x_hat = model.decoders[n](torch.cat([u, w_n], -1)).reconstruction
            log_px = log_px + Normal(x_hat, 1.0).log_prob(batch.data[n]).sum(-1) * observed[n]
        log_q_u = (sum(q[e][0].log_prob(u).sum(-1).exp() * observed[e] for e in "abc") / n_observed).log()
        log_p = Normal(0.0, 1.0).log_prob(torch.cat([u, w], -1)).sum(-1)
        log_w = log_px + 0.5 * (log_p - log_q_u - q[m][1].log_prob(w).sum(-1))
        total = total + log_w * observed[m]
    assert torch.allclose(loss, -(total / n_observed).mean(), atol=1e-4)
