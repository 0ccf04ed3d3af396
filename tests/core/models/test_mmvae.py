import pytest
import torch
from torch.distributions import Normal

from core.models import MMVAE, MMVAEConfig
from core.models.mmvae import pick_expert_samples

# Tiny models: one intra-op thread is much faster on a busy machine (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def make_model(model_factory):
    return model_factory(MMVAE, K=3)


def test_config_defaults_follow_the_seed(assert_plain_decoders):
    config = MMVAEConfig(n_modalities=2)
    assert (config.K, config.prior_and_posterior_dist, config.learn_prior, config.beta, config.loss) == (
        10,
        "laplace_with_softmax",
        True,
        1.0,
        "dreg_looser",
    )
    assert_plain_decoders(config)


def test_dreg_and_iwae_report_the_same_bound_and_share_the_decoder_gradient(make_model, make_batch, under_seed):
    batch = make_batch(n=6)
    dreg = make_model(loss="dreg_looser")
    iwae = make_model(loss="iwae_looser")
    iwae.load_state_dict(dreg.state_dict())
    grads = {}
    for model in (dreg, iwae):
        output = under_seed(3, model, batch)
        output.loss.backward()
        grads[model.model_config.loss] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert torch.allclose(under_seed(3, dreg, batch).loss, under_seed(3, iwae, batch).loss)
    decoder = [n for n in grads["dreg_looser"] if n.startswith("decoders.")]
    encoder = [n for n in grads["dreg_looser"] if n.startswith("encoders.")]
    assert decoder and encoder
    for name in decoder:
        assert torch.allclose(grads["dreg_looser"][name], grads["iwae_looser"][name], atol=1e-6), name
    assert any(not torch.allclose(grads["dreg_looser"][n], grads["iwae_looser"][n]) for n in encoder)


def test_the_bound_tightens_with_more_importance_samples(make_model, make_batch):
    model = make_model(K=1)
    batch = make_batch(n=8)
    torch.manual_seed(0)
    with torch.no_grad():
        one = torch.stack([-model(batch).loss for _ in range(10)]).mean()
        model.model_config.K = 10
        ten = torch.stack([-model(batch).loss for _ in range(10)]).mean()
    assert ten > one


def test_encode_mean_is_the_mean_of_the_observed_conditioning_experts(make_model, make_batch):
    model = make_model()
    batch = make_batch(n=4, missing={"b": [1]})
    mean_a = model.unimodal_posterior("a", batch.data["a"]).mean
    mean_b = model.unimodal_posterior("b", batch.data["b"]).mean
    z = model.encode(batch, cond_mod=["a", "b"], return_mean=True, ignore_incomplete=True).z
    assert torch.allclose(z[0], (mean_a[0] + mean_b[0]) / 2) and torch.allclose(z[1], mean_a[1])
    assert model.encode(batch, cond_mod=["a", "b"], N=3, return_mean=True, ignore_incomplete=True).z.shape == (3, 4, 4)


def test_mixture_draws_take_each_sample_expert_from_those_it_has():
    torch.manual_seed(0)
    samples = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 400, 2, 5)  # expert e always draws e
    available = torch.tensor([[True, False], [True, True], [False, True]])
    picked = pick_expert_samples(samples, available)[..., 0]  # (N, B)
    assert set(picked[:, 0].tolist()) == {0.0, 1.0} and set(picked[:, 1].tolist()) == {1.0, 2.0}


def test_a_modality_missing_for_the_whole_batch_takes_no_part(make_model, make_batch, assert_finite_gradients):
    model = make_model()
    model.train()
    output = model(make_batch(n=5, missing={"c": [0, 1, 2, 3, 4], "b": [0]}, allow_unobserved_modalities=True))
    assert "bound[c]" not in output.terms and torch.isfinite(output.loss)
    output.loss.backward()
    for name, p in model.named_parameters():
        if not name.startswith(("encoders.c.", "decoders.c.")) and p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_generation_follows_the_learnt_prior(make_model):
    model = make_model(prior_and_posterior_dist="normal")
    with torch.no_grad():
        model.prior_log_scale.fill_(2 * torch.log(torch.tensor(3.0)))
    torch.manual_seed(0)
    z = model.generate_from_prior(4000).z
    assert z.shape == (4000, 4) and z.std().item() == pytest.approx(3.0, rel=0.05)
    assert not model.prior_mean.requires_grad and MMVAE(model.model_config).prior_log_scale.requires_grad
    assert not make_model(learn_prior=False).prior_log_scale.requires_grad


def test_joint_nll_is_finite_on_incomplete_data_and_tightens_with_k(make_model, make_batch):
    model = make_model()
    complete = make_batch(n=4)
    torch.manual_seed(0)
    few = torch.stack([model.compute_joint_nll(complete, K=3, batch_size_K=3) for _ in range(20)]).mean()
    many = torch.stack([model.compute_joint_nll(complete, K=300, batch_size_K=50) for _ in range(3)]).mean()
    assert many < few
    incomplete = make_batch(n=4, missing={"b": [0, 2], "c": [1]})
    assert torch.isfinite(model.compute_joint_nll(incomplete, K=30, batch_size_K=10))


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    encoders, decoders = toy.small_vaes()
    model = MMVAE(toy.config(MMVAEConfig, K=2), encoders, decoders)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=10)
    assert after < before
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline


def test_the_loss_is_the_stratified_bound_computed_by_hand(make_model, make_batch, under_seed):
    model = make_model(K=1, loss="iwae_looser", prior_and_posterior_dist="normal")
    batch = make_batch(n=3, missing={"b": [1]})
    loss = under_seed(7, model, batch).loss
    # By hand with torch.distributions: one draw per expert, so the bound of expert m is its log-weight.
    torch.manual_seed(7)
    gaussians = {m: model.encoder_gaussian(m, batch.data[m]) for m in "abc"}
    q = {m: Normal(mu, (0.5 * logvar).exp()) for m, (mu, logvar) in gaussians.items()}
    observed = {m: batch.masks[m] for m in "abc"}
    total = torch.zeros(3)
    for m in "abc":
        z = q[m].rsample()
        log_px = sum(
            Normal(model.decoders[n](z).reconstruction, 1.0).log_prob(batch.data[n]).flatten(1).sum(-1) * observed[n] for n in "abc"
        )
        densities = torch.stack([q[e].log_prob(z).sum(-1).exp() * observed[e] for e in "abc"])
        log_q = (densities.sum(0) / torch.stack(list(observed.values())).sum(0)).log()
        log_w = log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - log_q
        total = total + log_w * observed[m]
    bound = (total / torch.stack(list(observed.values())).sum(0)).mean()
    assert torch.allclose(loss, -bound, atol=1e-4)
