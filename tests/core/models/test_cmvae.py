import pytest
import torch

from core.models import CMVAE, CMVAEConfig

# Tiny models: one intra-op thread is much faster on a busy machine (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def make_model(model_factory):
    return model_factory(CMVAE, K=2, modalities_specific_dim=3, number_of_clusters=4)


def test_config_defaults_follow_the_seed(assert_plain_decoders):
    config = CMVAEConfig(n_modalities=2, latent_dim=5)
    assert (config.K, config.prior_and_posterior_dist, config.learn_modality_prior, config.beta) == (
        10,
        "laplace_with_softmax",
        True,
        1.0,
    )
    assert (config.reconstruction_option, config.loss, config.number_of_clusters) == ("joint_prior", "dreg_looser", 10)
    assert config.private_dim == 5
    assert_plain_decoders(config)


@pytest.mark.parametrize("kind", ["laplace_with_softmax", "normal"])
def test_the_mixture_prior_is_the_papers_expectation_over_clusters(make_model, kind):
    model = make_model(prior_and_posterior_dist=kind)
    with torch.no_grad():
        model.cluster_logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    u = 2 * torch.randn(7, 3, 4)
    joint = model.log_joint_clusters(u)  # log pi_c + log p(u | c), (C, 7, 3)
    q_c = torch.softmax(joint, dim=0)
    papers = (q_c * (joint - q_c.log())).sum(0)
    assert torch.allclose(model.log_prior_shared(u), papers, atol=1e-5)


def test_generation_draws_a_cluster_then_the_shared_code(make_model):
    model = make_model(prior_and_posterior_dist="normal")
    with torch.no_grad():
        model.cluster_means.zero_()
        model.cluster_means[2, 0] = 30.0
        model.cluster_logits.copy_(torch.tensor([-20.0, -20.0, 20.0, -20.0]))
    out = model.generate_from_prior(500)
    assert out.z[:, 0].mean().item() == pytest.approx(30.0, abs=0.3) and out.z[:, 1:].abs().mean() < 1.5
    assert set(out.modalities_z) == {"a", "b", "c"} and not torch.allclose(out.modalities_z["a"], out.modalities_z["b"])
    assert model.decode(out)["b"].shape == (500, 8)


def test_predict_clusters_votes_with_the_observed_modalities(make_model, make_batch):
    model = make_model()
    batch = make_batch(n=4, missing={"b": [0, 1, 2, 3], "c": [0, 1, 2, 3]}, allow_unobserved_modalities=True)
    with torch.no_grad():
        means_a = model.unimodal_posteriors("a", batch.data["a"])[0].mean
        model.cluster_means.copy_(means_a)  # each sample sits on its own cluster
    out = model.predict_clusters(batch)
    assert out.clusters.tolist() == [0, 1, 2, 3]
    assert torch.allclose(out.probabilities["a"].sum(-1), torch.ones(4)) and torch.all(out.probabilities["b"] == 0)


def test_training_moves_the_clusters_and_lowers_the_loss(make_model, make_batch, assert_finite_gradients):
    model = make_model()
    batch = make_batch(n=16, missing={"c": [0, 5]})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    first = model(batch).loss
    first.backward()
    assert model.cluster_means.grad.abs().sum() > 0 and model.cluster_logits.grad.abs().sum() > 0
    for _ in range(12):
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    model.eval()
    assert model(batch).loss < first


def test_joint_nll_is_finite_on_incomplete_data(make_model, make_batch):
    model = make_model()
    assert torch.isfinite(model.compute_joint_nll(make_batch(n=4, missing={"b": [0, 2], "c": [1]}), K=30, batch_size_K=10))
