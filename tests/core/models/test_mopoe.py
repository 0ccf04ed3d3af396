import pytest
import torch

from core.models import MoPoE, MoPoEConfig
from core.models._shared.poe import product_of_experts

# Tiny models: one intra-op thread is much faster on a busy machine (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRIVATE = {"a": 2, "b": 3, "c": 2}


@pytest.fixture
def make_model(model_factory):
    return model_factory(MoPoE)


def test_config_defaults_follow_the_seed(assert_plain_decoders):
    config = MoPoEConfig(n_modalities=2)
    assert (config.subsets, config.beta, config.beta_style, config.modalities_specific_dim) == (None, 1.0, 1.0, None)
    assert_plain_decoders(config)


def test_config_refuses_unknown_modalities_and_empty_subsets(assert_config_errors, vectors):
    base = {"n_modalities": 3, "input_dims": vectors}
    assert_config_errors(
        MoPoEConfig,
        [
            ({**base, "subsets": [["a", "x"]]}, "unknown modalities \\['x'\\]"),
            ({**base, "subsets": [[]]}, "empty subset"),
            ({**base, "modalities_specific_dim": {"a": 0}}, "at least 1"),
        ],
    )


def test_custom_subsets_make_the_mixture(make_model, make_batch):
    model = make_model(subsets={"pair": ["b", "a"], "single": ["c"]})
    assert model.mixture_subsets == [("a", "b"), ("c",)]
    terms = model(make_batch(n=4)).terms
    assert {k for k in terms if k.startswith("kl[")} == {"kl[a+b]", "kl[c]"}
    assert len(make_model().mixture_subsets) == 7


def test_the_prior_expert_enters_the_full_subset_only(make_model, make_batch):
    model = make_model()
    batch = make_batch(n=4)
    experts = {m: model.encoder_gaussian(m, batch.data[m]) for m in "abc"}

    def poe(subset, with_prior):
        return product_of_experts(
            torch.stack([experts[m][0] for m in subset]), torch.stack([experts[m][1] for m in subset]), with_prior=with_prior
        )[0]

    assert torch.allclose(model.encode(batch, "all", return_mean=True).z, poe("abc", True), atol=1e-6)
    assert torch.allclose(model.encode(batch, ["a", "b"], return_mean=True).z, poe("ab", False), atol=1e-6)


def test_a_subset_is_available_only_where_all_its_modalities_are(make_model, make_batch):
    model = make_model(subsets=[["a"], ["a", "b"], ["b", "c"]])
    batch = model.prepare_batch(make_batch(n=3, missing={"b": [0], "c": [1]}))
    assert model.available_subsets(batch).tolist() == [[True, True, True], [False, True, True], [False, False, True]]


def test_private_latents_train_encode_decode_and_generate(make_model, make_batch, assert_predictions, under_seed):
    model = make_model(modalities_specific_dim=PRIVATE)
    model.train()
    batch = make_batch(n=5, missing={"b": [0, 3], "c": [1]})
    output = model(batch)
    assert set(output.terms) >= {"kl_private[a]", "kl_private[b]", "kl_private[c]"}
    output.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    embedding = model.encode(batch, ["a"], N=3)
    assert embedding.z.shape == (3, 5, 4) and {m: w.shape for m, w in embedding.modalities_z.items()} == {
        m: (3, 5, d) for m, d in PRIVATE.items()
    }
    dims = {"a": (8,), "b": (8,), "c": (5,)}
    assert_predictions(model.predict(batch, cond_mod=["a"], gen_mod="all", N=2), dims, (2, 5))
    assert_predictions(model.decode(model.generate_from_prior(6)), dims, (6,))
    model.eval()
    changed = dict(batch)
    changed["data"] = {**batch.data, "b": torch.where(batch.masks["b"].unsqueeze(-1), batch.data["b"], 50.0)}
    assert torch.allclose(under_seed(4, model, batch).loss, under_seed(4, model, changed).loss)


def test_the_private_code_of_an_unobserved_conditioning_modality_is_the_prior(make_model, make_batch):
    model = make_model(modalities_specific_dim=PRIVATE)
    batch = make_batch(n=4, missing={"b": [2]})
    w = model.encode(batch, ["a", "b"], return_mean=True, ignore_incomplete=True).modalities_z
    assert torch.all(w["b"][2] == 0) and torch.all(w["c"] == 0) and not torch.all(w["b"][0] == 0)


@pytest.mark.parametrize("private", [None, PRIVATE])
def test_joint_nll_is_finite_on_incomplete_data_and_tightens_with_k(make_model, make_batch, private):
    model = make_model(modalities_specific_dim=private)
    complete = make_batch(n=4)
    torch.manual_seed(0)
    few = torch.stack([model.compute_joint_nll(complete, K=2, batch_size_K=2) for _ in range(10)]).mean()
    many = torch.stack([model.compute_joint_nll(complete, K=100, batch_size_K=50) for _ in range(2)]).mean()
    assert many < few
    assert torch.isfinite(model.compute_joint_nll(make_batch(n=4, missing={"b": [0, 2], "c": [1]}), K=20, batch_size_K=10))


def test_short_training_lowers_the_loss_and_beats_the_mean_baseline(toy):
    encoders, decoders = toy.small_vaes()
    model = MoPoE(toy.config(MoPoEConfig), encoders, decoders)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before, after = toy.fit(model, optimizer, epochs=10)
    assert after < before
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline


def test_the_loss_is_the_generalized_elbo_computed_by_hand(make_model, make_batch, under_seed):
    model = make_model(subsets=[["a"], ["b"], ["a", "b"], ["a", "b", "c"]])
    batch = make_batch(n=4, missing={"b": [1], "c": [2, 3]})
    loss = under_seed(3, model, batch).loss
    # By hand: per sample, one subset drawn among those it has, the mean KL over them, masked recon.
    experts = {m: model.encoder_gaussian(m, batch.data[m]) for m in "abc"}
    masks = torch.stack([batch.masks[m] for m in "abc"])
    subsets = [("a",), ("b",), ("a", "b"), ("a", "b", "c")]
    available = torch.stack([masks[["abc".index(m) for m in s]].all(0) for s in subsets])
    products = [
        product_of_experts(
            torch.stack([experts[m][0] for m in s]), torch.stack([experts[m][1] for m in s]), with_prior=len(s) == 3
        )
        for s in subsets
    ]
    torch.manual_seed(3)
    scores = torch.where(available, torch.rand(available.shape), torch.full((), -1.0))
    choice = scores.argmax(0)
    mu = torch.stack([products[c][0][i] for i, c in enumerate(choice.tolist())])
    logvar = torch.stack([products[c][1][i] for i, c in enumerate(choice.tolist())])
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    recon = sum(
        torch.distributions.Normal(model.decoders[m](z).reconstruction, 1.0).log_prob(batch.data[m]).sum(-1) * batch.masks[m]
        for m in "abc"
    )
    kls = torch.stack([-0.5 * (1 + lv - mu_s.pow(2) - lv.exp()).sum(-1) for mu_s, lv in products])
    kl = (kls * available).sum(0) / available.sum(0)
    assert torch.allclose(loss, (-recon + kl).mean(), atol=1e-4)
