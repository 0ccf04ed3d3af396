"""JNF: seed defaults, the two training stages and what they freeze, flow posteriors, HMC subset inference."""

from __future__ import annotations

import pytest
import torch
import zuko
from torch import nn

from core.data import DatasetOutput, IncompleteDataset, MultimodalBaseDataset
from core.models import (
    JNF,
    ConfigError,
    IncompleteDataError,
    JNFConfig,
    TrainingProgress,
    config_from_dict,
    load,
)
from core.models._shared.subsets import all_subsets
from core.nn import EncoderOutput, MLPDecoder, MLPEncoder
from core.nn.flows import LatentFlow, ZukoFlow
from core.nn.joint import MultipleHeadJointEncoder

SHAPES = {
    "vector": {"a": (8,), "b": (8,), "c": (5,)},
    "image": {"a": (1, 16, 16), "b": (1, 16, 16)},
    "volume": {"a": (1, 16, 16, 16), "b": (1, 16, 16, 16)},
}
VECTORS = SHAPES["vector"]
FAST_HMC = {"mcmc_steps": 3, "n_lf": 2}


def make_model(input_dims=VECTORS, **overrides) -> JNF:
    overrides.setdefault("warmup", 2)
    return JNF(JNFConfig(n_modalities=len(input_dims), latent_dim=4, input_dims=input_dims, **overrides))


def make_batch(input_dims=VECTORS, n: int = 5, missing: dict[str, list[int]] | None = None) -> DatasetOutput:
    data = {m: torch.randn(n, *shape) for m, shape in input_dims.items()}
    if not missing:
        return MultimodalBaseDataset(data).as_batch()
    masks = {m: torch.ones(n, dtype=torch.bool) for m in input_dims}
    for m, rows in missing.items():
        masks[m][rows] = False
    return IncompleteDataset(data, masks).as_batch()


class IdentityFlow(LatentFlow):
    """f(z) = z: the flow posterior is then the base Gaussian, so products have closed forms."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z, torch.zeros(z.shape[:-1])

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        return u


class NormedJointEncoder(nn.Module):
    """A joint encoder with BatchNorm and Dropout, whose state must not drift once frozen."""

    def __init__(self, dims: dict[str, tuple[int, ...]], latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(sum(s[0] for s in dims.values()), 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.SiLU())
        self.mean, self.logvar = nn.Linear(16, latent_dim), nn.Linear(16, latent_dim)

    def forward(self, data: dict[str, torch.Tensor]) -> EncoderOutput:
        h = self.net(torch.cat([data[m] for m in sorted(data)], dim=-1))
        return EncoderOutput(embedding=self.mean(h), log_covariance=self.logvar(h))


def test_config_defaults_follow_the_seed():
    config = JNFConfig(n_modalities=2)
    assert (config.latent_dim, config.warmup, config.beta) == (10, 10, 1.0)
    assert config.uses_likelihood_rescaling is False and config.rescale_factors is None
    assert config.decoders_dist is None and config.decoder_dist_params is None and config.custom_architectures == []
    assert JNF.supports_incomplete_data is False and JNF.summary


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'warmpu'.*Did you mean 'warmup'"):
        config_from_dict(JNFConfig, {"n_modalities": 2, "warmpu": 3})
    with pytest.raises(ConfigError, match="warmup"):
        config_from_dict(JNFConfig, {"n_modalities": 2, "warmup": 0})
    with pytest.raises(ConfigError, match="'alpha' is not a parameter"):
        config_from_dict(JNFConfig, {"n_modalities": 2, "alpha": 1.0})


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(kind, n_samples):
    dims = SHAPES[kind]
    model = make_model(dims)
    batch = make_batch(dims, 4)
    lead = (4,) if n_samples == 1 else (n_samples, 4)
    for subset in all_subsets(list(dims)):
        z = model.encode(batch, cond_mod=list(subset), N=n_samples, **FAST_HMC).z
        assert z.shape == (*lead, 4) and torch.isfinite(z).all()
        flat = model.encode(batch, cond_mod=list(subset), N=n_samples, flatten=True, **FAST_HMC).z
        assert flat.shape == (n_samples * 4, 4)
        out = model.predict(batch, cond_mod=list(subset), gen_mod="all", N=n_samples, **FAST_HMC)
        for m, shape in dims.items():
            assert out[m].shape == (*lead, *shape) and torch.isfinite(out[m]).all()


def test_generation_from_the_prior_decodes():
    model = make_model(SHAPES["volume"])
    out = model.decode(model.generate_from_prior(2))
    assert out["b"].shape == (2, 1, 16, 16, 16) and torch.isfinite(out["b"]).all()


def test_stages_partition_the_parameters():
    model = make_model(warmup=7)
    assert [(s.name, s.first_epoch) for s in model.stages] == [("joint", 1), ("unimodal", 8)]
    assert model.reset_optimizer_epochs == [8]
    assert model.stage_at(7).name == "joint" and model.stage_at(8).name == "unimodal"
    assert model.start_keep_best_epoch == 0
    joint, unimodal = ({id(p) for p in model.parameters_for_stage(s)} for s in model.stages)
    assert not joint & unimodal
    assert joint | unimodal == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.joint_encoder.parameters()} <= joint
    assert {id(p) for p in model.flows.parameters()} <= unimodal


@pytest.mark.parametrize("stage_index", [0, 1])
def test_finite_gradients_reach_every_parameter_of_each_stage_and_only_those(stage_index):
    model = make_model()
    stage = model.stages[stage_index]
    model.enter_stage(stage)
    model.train()
    model(make_batch(), TrainingProgress(stage.first_epoch)).loss.backward()
    trained = {id(p) for p in model.parameters_for_stage(stage)}
    for name, p in model.named_parameters():
        if id(p) in trained:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, f"{name} is not trained in stage {stage.name} but got a gradient"


def test_stage_two_freezes_the_joint_vae_in_eval_mode():
    dims = {"a": (8,), "b": (8,)}
    model = JNF(JNFConfig(n_modalities=2, latent_dim=4, input_dims=dims), joint_encoder=NormedJointEncoder(dims, 4))
    model.enter_stage(model.stages[1])
    model.train()
    assert not any(p.requires_grad for p in model.joint_encoder.parameters())
    assert not any(p.requires_grad for p in model.decoders.parameters())
    assert not model.joint_encoder.training and not model.decoders.training
    assert model.encoders.training and model.flows.training
    running_mean = model.joint_encoder.net[1].running_mean.clone()
    model(make_batch(dims, 6), TrainingProgress(11))
    assert torch.equal(running_mean, model.joint_encoder.net[1].running_mean)
    model.enter_stage(model.stages[0])
    assert model.joint_encoder.training and all(p.requires_grad for p in model.joint_encoder.parameters())


def test_forward_enters_the_stage_of_the_epoch():
    model = make_model(warmup=3)
    model(make_batch(), TrainingProgress(4))
    assert model.current_stage.name == "unimodal" and model.joint_frozen
    out = model(make_batch(), TrainingProgress(2))
    assert model.current_stage.name == "joint" and set(out.terms) == {"recon", "kl_prior"}


def test_two_stage_training_keeps_the_joint_encoder_fixed_in_stage_two():
    dims = {"a": (8,), "b": (8,)}
    model = JNF(JNFConfig(n_modalities=2, latent_dim=4, input_dims=dims, warmup=2))
    data = make_batch(dims, 32)
    snapshots = {}
    optimizer, current = None, None
    for epoch in range(1, 5):
        stage = model.stage_at(epoch)
        if stage != current:
            snapshots[stage.name] = {k: v.clone() for k, v in model.state_dict().items()}
            model.enter_stage(stage)
            optimizer = torch.optim.Adam(model.parameters_for_stage(stage), lr=1e-2)
            current = stage
        model.train()
        for idx in torch.arange(32).split(8):
            batch = DatasetOutput(data={m: x[idx] for m, x in data.data.items()}, masks={m: k[idx] for m, k in data.masks.items()}, ids=None)
            loss = model(batch, TrainingProgress(epoch)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    final = model.state_dict()
    start_of_stage_2 = snapshots["unimodal"]
    changed = {k for k in final if not torch.equal(final[k], start_of_stage_2[k])}
    assert changed, "stage 2 trained nothing"
    assert all(k.startswith(("encoders.", "flows.")) for k in changed), sorted(changed)
    stage_1 = {k for k in final if not torch.equal(start_of_stage_2[k], snapshots["joint"][k])}
    assert any(k.startswith("joint_encoder.") for k in stage_1) and not any(k.startswith("flows.") for k in stage_1)


def test_unimodal_encoding_goes_through_the_flow():
    model = make_model()
    model.eval()
    batch = make_batch()
    mu, logvar = model.encoder_gaussian("a", batch.data["a"])
    mean = model.encode(batch, "a", return_mean=True).z
    assert torch.allclose(mean, model.flows["a"].inverse(mu), atol=1e-6)
    z = model.encode(batch, "a", N=3).z
    u, ladj = model.flows["a"](z)
    assert torch.isfinite(model.unimodal_log_prob("a", z, (mu, logvar))).all() and u.shape == z.shape


def test_hmc_samples_are_finite_with_the_right_shape():
    model = make_model()
    batch = make_batch(n=6)
    z = model.encode(batch, ["a", "b"], N=4, mcmc_steps=5, n_lf=3, eps_lf=0.05).z
    assert z.shape == (4, 6, 4) and torch.isfinite(z).all()
    mean = model.encode(batch, ["a", "b"], N=2, return_mean=True, mcmc_steps=4, n_lf=2).z
    assert mean.shape == (2, 6, 4) and torch.equal(mean[0], mean[1])
    with pytest.raises(ValueError, match="n_lf"):
        model.encode(batch, ["a", "b"], n_lf=0)


def test_hmc_targets_the_product_of_posteriors_with_the_prior_divided_out_per_extra_modality():
    # With identity flows q_m(z|x_m) = N(mu_m, sigma_m^2), and prod_m q_m / p^(|S|-1) is the Gaussian
    # with precision sum_m 1/sigma_m^2 - (|S| - 1) and mean sum_m mu_m / sigma_m^2 / precision.
    dims = {m: (3,) for m in "abcd"}
    model = JNF(JNFConfig(n_modalities=4, latent_dim=2, input_dims=dims), flows={m: IdentityFlow() for m in dims})
    mus = torch.tensor([[[0.5, -1.0]], [[1.0, 0.0]], [[0.0, 0.5]]])
    variances = torch.tensor([[[0.3, 0.5]], [[0.2, 0.4]], [[0.25, 0.3]]])
    gaussians = {m: (mus[i], variances[i].log()) for i, m in enumerate("abc")}
    precision = (1 / variances).sum(0) - 2
    expected_mean = (mus / variances).sum(0) / precision
    z = model.sample_product_hmc(gaussians, N=3000, mcmc_steps=40, n_lf=10, eps_lf=0.1)
    assert torch.allclose(z.mean((0, 1)), expected_mean[0], atol=0.03)
    assert torch.allclose(z.var((0, 1)), 1 / precision[0], rtol=0.1)


def test_flows_accept_zuko_objects_and_reject_bad_ones():
    dims = {"a": (8,), "b": (8,)}
    config = JNFConfig(n_modalities=2, latent_dim=4, input_dims=dims)
    model = JNF(config, flows={"a": zuko.flows.MAF(4, transforms=1), "b": zuko.flows.NSF(4, transforms=1).transform})
    assert all(isinstance(f, ZukoFlow) for f in model.flows.values())
    assert model.model_config.custom_architectures == ["flows"]
    assert torch.isfinite(model(make_batch(dims), TrainingProgress(11)).loss)
    with pytest.raises(ValueError, match=r"flows\['a'\].*latent_dim=4"):
        JNF(config, flows={"a": zuko.flows.MAF(3), "b": zuko.flows.MAF(4)})
    with pytest.raises(TypeError, match=r"flows\['a'\] must be"):
        JNF(config, flows={"a": nn.Linear(4, 4), "b": zuko.flows.MAF(4)})
    with pytest.raises(ConfigError, match="flows are given for"):
        JNF(config, flows={"a": zuko.flows.MAF(4)})


def test_training_on_incomplete_data_fails_with_a_reason():
    model = make_model()
    with pytest.raises(IncompleteDataError, match="JNF cannot train on incomplete data.*'c' is missing"):
        model(make_batch(missing={"c": [0, 2]}), TrainingProgress(1))


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = make_model()
    model.eval()
    batch = make_batch()
    model.save(tmp_path / "bundle")
    loaded = load(tmp_path / "bundle")
    loaded.eval()
    for cond in (["a"], "all"):
        assert torch.equal(model.encode(batch, cond, return_mean=True).z, loaded.encode(batch, cond, return_mean=True).z)
    for epoch in (1, 5):
        torch.manual_seed(5)
        first = model(batch, TrainingProgress(epoch)).loss
        torch.manual_seed(5)
        assert torch.equal(first, loaded(batch, TrainingProgress(epoch)).loss)
    torch.manual_seed(6)
    first = model.encode(batch, ["a", "b"], **FAST_HMC).z
    torch.manual_seed(6)
    assert torch.equal(first, loaded.encode(batch, ["a", "b"], **FAST_HMC).z)


def _toy(n: int, seed: int) -> MultimodalBaseDataset:
    """Two 8-d views of a shared 2-d latent through fixed random non-linear maps."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(100))
    z = torch.randn(n, 2, generator=g)
    return MultimodalBaseDataset({m: torch.tanh(z @ maps[i]) + 0.05 * torch.randn(n, 8, generator=g) for i, m in enumerate("ab")})


def test_short_two_stage_training_lowers_each_stage_loss_and_beats_the_mean_baseline():
    train, val = _toy(256, 0), _toy(128, 1)
    dims = {"a": (8,), "b": (8,)}
    config = JNFConfig(n_modalities=2, latent_dim=4, input_dims=dims, warmup=5, decoder_dist_params={m: {"scale": 0.1} for m in dims})
    encoders = {m: MLPEncoder((8,), 4, hidden=(64,)) for m in dims}  # small: the test is about the objective
    decoders = {m: MLPDecoder(4, (8,), hidden=(64,)) for m in dims}
    model = JNF(config, encoders, decoders, MultipleHeadJointEncoder(encoders, 4, hidden=(64,)))
    history: dict[str, list[float]] = {}
    optimizer, current = None, None
    for epoch in range(1, 21):
        stage = model.stage_at(epoch)
        if stage != current:
            model.enter_stage(stage)
            optimizer = torch.optim.Adam(model.parameters_for_stage(stage), lr=3e-3)
            current = stage
        model.eval()
        with torch.no_grad():
            history.setdefault(stage.name, []).append(float(model(val, TrainingProgress(epoch)).loss))
        model.train()
        for idx in torch.randperm(256).split(32):
            loss = model(train.subset(idx.tolist()).as_batch(), TrainingProgress(epoch)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        history["unimodal"].append(float(model(val, TrainingProgress(20)).loss))
    assert history["joint"][-1] < history["joint"][0]
    assert history["unimodal"][-1] < history["unimodal"][0]
    prediction = model.predict(val, cond_mod="a", gen_mod="b")["b"]
    mse = (prediction - val.data["b"]).pow(2).mean()
    baseline = (train.data["b"].mean(0) - val.data["b"]).pow(2).mean()
    assert mse < 0.5 * baseline
