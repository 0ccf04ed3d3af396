"""JNF: seed defaults, the two training stages and what they freeze, flow posteriors, HMC subset inference."""

from __future__ import annotations

import pytest
import torch
import zuko
from torch import nn

from core.data import DatasetOutput
from core.models import (
    JNF,
    TELBO,
    ConfigError,
    IncompleteDataError,
    JNFConfig,
    TELBOConfig,
    TrainingProgress,
)
from core.nn import EncoderOutput
from core.nn.flows import LatentFlow, ZukoFlow
from core.nn.joint import MultipleHeadJointEncoder

FAST_HMC = {"mcmc_steps": 3, "n_lf": 2}


@pytest.fixture
def make_model(model_factory):
    return model_factory(JNF, warmup=2)


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


def test_config_defaults_follow_the_seed(assert_plain_decoders):
    config = JNFConfig(n_modalities=2)
    assert (config.latent_dim, config.warmup, config.beta) == (10, 10, 1.0)
    assert_plain_decoders(config)
    assert JNF.supports_incomplete_data is False and JNF.summary


def test_config_errors_name_the_key(assert_config_errors):
    assert_config_errors(JNFConfig, [
        ({"n_modalities": 2, "warmpu": 3}, "'warmpu'.*Did you mean 'warmup'"),
        ({"n_modalities": 2, "warmup": 0}, "warmup"),
        ({"n_modalities": 2, "alpha": 1.0}, "'alpha' is not a parameter"),
    ])


@pytest.mark.parametrize("n_samples", [1, 3])
def test_encode_and_predict_shapes_for_every_subset(input_dims, n_samples, make_model, every_subset, assert_predictions):
    model = make_model(input_dims)
    for batch, subset, lead in every_subset(input_dims, n_samples):
        z = model.encode(batch, cond_mod=subset, N=n_samples, **FAST_HMC).z
        assert z.shape == (*lead, 4) and torch.isfinite(z).all()
        flat = model.encode(batch, cond_mod=subset, N=n_samples, flatten=True, **FAST_HMC).z
        assert flat.shape == (n_samples * 4, 4)
        assert_predictions(model.predict(batch, cond_mod=subset, gen_mod="all", N=n_samples, **FAST_HMC), input_dims, lead)


def test_generation_from_the_prior_decodes(shapes, make_model):
    model = make_model(shapes["volume"])
    out = model.decode(model.generate_from_prior(2))
    assert out["b"].shape == (2, 1, 16, 16, 16) and torch.isfinite(out["b"]).all()


def test_stages_partition_the_parameters(make_model):
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
def test_finite_gradients_reach_every_parameter_of_each_stage_and_only_those(stage_index, make_model, make_batch):
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


def test_stage_two_freezes_the_joint_vae_in_eval_mode(make_batch):
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


def test_forward_enters_the_stage_of_the_epoch(make_model, make_batch):
    model = make_model(warmup=3)
    model(make_batch(), TrainingProgress(4))
    assert model.current_stage.name == "unimodal" and model.joint_frozen
    out = model(make_batch(), TrainingProgress(2))
    assert model.current_stage.name == "joint" and set(out.terms) == {"recon", "kl_prior", "kl_per_dim[z]"}


def test_stage_two_training_steps_skip_the_frozen_decoders_and_validation_reports_their_reconstruction(make_model, make_batch):
    model = make_model(warmup=1)
    calls = []
    for decoder in model.decoders.values():
        decoder.register_forward_hook(lambda *_: calls.append(1))
    batch = make_batch()
    train_terms = model(batch, TrainingProgress(2)).terms
    assert calls == [] and "recon" not in train_terms
    model.eval()
    eval_terms = model(batch, TrainingProgress(2)).terms
    assert len(calls) == len(model.modalities) and torch.isfinite(eval_terms["recon"])
    assert set(eval_terms) == set(train_terms) | {"recon"}


def test_zuko_masks_are_stored_as_floats_with_the_same_outputs():
    maf = zuko.flows.MAF(4, transforms=2, hidden_features=(8,))
    flow = ZukoFlow(maf.transform)  # converts the bool masks in place
    masks = [m.mask for m in flow.modules() if isinstance(m, zuko.nn.MaskedLinear)]
    assert masks and all(mask.dtype == torch.float32 for mask in masks)
    z = torch.randn(5, 4)
    u, ladj = flow(z)
    for module in flow.modules():
        if isinstance(module, zuko.nn.MaskedLinear):
            module.mask = module.mask.bool()
    u_bool, ladj_bool = flow(z)
    assert torch.equal(u, u_bool) and torch.equal(ladj, ladj_bool)
    assert torch.allclose(flow.inverse(u), z, atol=1e-5)


def test_two_stage_training_keeps_the_joint_encoder_fixed_in_stage_two(make_batch):
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
            batch = DatasetOutput(data={m: x[idx] for m, x in data.data.items()}, masks={m: k[idx] for m, k in data.masks.items()},
                                  ids=None)
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


@pytest.mark.parametrize("decoder_scale", ["learned", "analytic"])
@pytest.mark.parametrize(("model_cls", "config_cls"), [(JNF, JNFConfig), (TELBO, TELBOConfig)])
def test_a_calibrated_decoder_scale_trains_with_the_joint_vae_and_is_frozen_with_it(model_cls, config_cls, decoder_scale,
                                                                                  make_batch):
    """JNF as TELBO: stage ``joint`` trains the scales (a learned one by gradient, an analytic one's running mean),
    stage ``unimodal`` freezes them with the decoders (the trainer's optimizer takes the stage's parameters that
    require a gradient; an analytic scale then keeps its running value)."""
    dims = {"a": (8,), "b": (8,)}
    model = model_cls(config_cls(n_modalities=2, latent_dim=4, input_dims=dims, warmup=2, decoder_scale=decoder_scale))
    joint, unimodal = ({id(p) for p in model.parameters_for_stage(s)} for s in model.stages)
    untrained = {id(p) for p in model.decoder_log_scales.parameters()} if decoder_scale == "analytic" else set()
    assert joint | unimodal == {id(p) for p in model.parameters()} - untrained  # an analytic scale is no trained parameter
    data = make_batch(dims, 16)
    scales = {"start": torch.stack(list(model.decoder_log_scales.values())).detach().clone()}
    for stage in model.stages:
        model.enter_stage(stage)
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters_for_stage(stage) if p.requires_grad], lr=1e-2)
        for _ in range(5):
            optimizer.zero_grad()
            model(data, TrainingProgress(stage.first_epoch)).loss.backward()
            optimizer.step()
        scales[stage.name] = torch.stack(list(model.decoder_log_scales.values())).detach().clone()
    assert not torch.equal(scales["start"], scales["joint"]), "stage joint did not train the learned scales"
    assert torch.equal(scales["joint"], scales["unimodal"]), "stage unimodal changed the frozen scales"
    assert not any(p.requires_grad for p in model.decoder_log_scales.parameters())


def test_unimodal_encoding_goes_through_the_flow(make_model, make_batch):
    model = make_model()
    model.eval()
    batch = make_batch()
    mu, logvar = model.encoder_gaussian("a", batch.data["a"])
    mean = model.encode(batch, "a", return_mean=True).z
    assert torch.allclose(mean, model.flows["a"].inverse(mu), atol=1e-6)
    z = model.encode(batch, "a", N=3).z
    u, ladj = model.flows["a"](z)
    assert torch.isfinite(model.unimodal_log_prob("a", z, (mu, logvar))).all() and u.shape == z.shape


def test_hmc_samples_are_finite_with_the_right_shape(make_model, make_batch):
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


def test_flows_accept_zuko_objects_and_reject_bad_ones(make_batch):
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


def test_training_on_incomplete_data_fails_with_a_reason(make_model, make_batch):
    model = make_model()
    with pytest.raises(IncompleteDataError, match="JNF cannot train on incomplete data.*'c' is missing"):
        model(make_batch(missing={"c": [0, 2]}), TrainingProgress(1))


def test_save_load_round_trip_gives_identical_outputs(make_model, make_batch, round_trip, under_seed):
    model = make_model()
    batch = make_batch()
    loaded = round_trip(model)
    for cond in (["a"], "all"):
        assert torch.equal(model.encode(batch, cond, return_mean=True).z, loaded.encode(batch, cond, return_mean=True).z)
    for epoch in (1, 5):
        first = under_seed(5, model, batch, TrainingProgress(epoch)).loss
        assert torch.equal(first, under_seed(5, loaded, batch, TrainingProgress(epoch)).loss)
    first = under_seed(6, model.encode, batch, ["a", "b"], **FAST_HMC).z
    assert torch.equal(first, under_seed(6, loaded.encode, batch, ["a", "b"], **FAST_HMC).z)


def test_short_two_stage_training_lowers_each_stage_loss_and_beats_the_mean_baseline(toy):
    encoders, decoders = toy.small_vaes()
    model = JNF(toy.config(JNFConfig, warmup=5), encoders, decoders, MultipleHeadJointEncoder(encoders, 4, hidden=(64,)))
    history: dict[str, list[float]] = {}
    optimizer, current = None, None
    for epoch in range(1, 21):
        stage = model.stage_at(epoch)
        if stage != current:
            model.enter_stage(stage)
            optimizer = torch.optim.Adam(model.parameters_for_stage(stage), lr=3e-3)
            current = stage
        history.setdefault(stage.name, []).append(toy.val_loss(model, TrainingProgress(epoch)))
        toy.train_epoch(model, optimizer, epoch)
    history["unimodal"].append(toy.val_loss(model, TrainingProgress(20)))
    assert history["joint"][-1] < history["joint"][0]
    assert history["unimodal"][-1] < history["unimodal"][0]
    mse, baseline = toy.b_from_a_errors(model)
    assert mse < 0.5 * baseline
