"""The model-specific modules of the documented API, written as the documentation writes them: MHVAE's
blocks (first-layer encoders returning an embedding alone, ``nn.ModuleDict`` containers, the block types
its checks refuse), JNF's flows returning output objects, and Nexus's joint encoder reading (B, msg_dim)."""

from __future__ import annotations

import math

import pytest
import torch
from documented import INPUT_DIMS, LATENT_DIM, DocumentedDecoder, DocumentedEncoder, config_of, dataset
from torch import nn

from core.models import JNF, MHVAE, ConfigError, ModelOutput, Nexus
from core.models._shared.gaussian import log_normal
from core.nn import BaseEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N_SAMPLES = 10
FEATURES, Z_LEVEL = 8, 4  # MHVAE: width of the bottom-up features d^(l) and size of z_1, z_2


class FeatureEncoder(BaseEncoder):
    """MHVAE's documented first layer: returns ModelOutput(embedding=...) and nothing else."""

    def __init__(self, input_dim: tuple[int, ...]) -> None:
        super().__init__()
        self.input_size = math.prod(input_dim)
        self.layer = nn.Linear(self.input_size, FEATURES)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(embedding=torch.relu(self.layer(x.reshape(-1, self.input_size))))


class GaussianBlock(BaseEncoder):
    """A block returning the mean and log-variance (the documented BaseEncoder contract)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        mean, log_var = self.layer(x).chunk(2, dim=-1)
        return ModelOutput(embedding=mean, log_covariance=log_var)


def mhvae_blocks(per_modality_posteriors: bool = False) -> dict:
    """Every block of a 3-level MHVAE on INPUT_DIMS, in plain dicts and lists."""
    posterior = [GaussianBlock(2 * FEATURES, Z_LEVEL) for _ in range(2)]
    return {
        "encoders": {m: FeatureEncoder(s) for m, s in INPUT_DIMS.items()},
        "decoders": {m: DocumentedDecoder(Z_LEVEL, s) for m, s in INPUT_DIMS.items()},
        "bottom_up_blocks": {
            m: [nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.ReLU()), GaussianBlock(FEATURES, LATENT_DIM)] for m in INPUT_DIMS
        },
        "top_down_blocks": [nn.Linear(Z_LEVEL, FEATURES), nn.Linear(LATENT_DIM, FEATURES)],
        "posterior_blocks": {m: [GaussianBlock(2 * FEATURES, Z_LEVEL) for _ in range(2)] for m in INPUT_DIMS}
        if per_modality_posteriors
        else posterior,
        "prior_blocks": [GaussianBlock(FEATURES, Z_LEVEL) for _ in range(2)],
    }


def test_mhvae_first_layer_encoders_may_return_the_embedding_alone():
    model = MHVAE(config_of("MHVAE"), **mhvae_blocks())
    batch = dataset(5)
    assert torch.isfinite(model(batch, epoch=1).loss)
    model.eval()
    assert model.encode(batch, N=N_SAMPLES).z.shape == (N_SAMPLES, 5, Z_LEVEL)
    assert model.predict(batch, cond_mod="a", gen_mod="b", N=N_SAMPLES)["b"].shape == (N_SAMPLES, 5, *INPUT_DIMS["b"])


def test_mhvae_takes_module_dicts_everywhere_including_its_own():
    blocks = mhvae_blocks(per_modality_posteriors=True)
    blocks["bottom_up_blocks"] = nn.ModuleDict({m: nn.ModuleList(b) for m, b in blocks["bottom_up_blocks"].items()})
    blocks["posterior_blocks"] = nn.ModuleDict({m: nn.ModuleList(b) for m, b in blocks["posterior_blocks"].items()})
    model = MHVAE(config_of("MHVAE"), **blocks)
    assert not model.share_posterior_blocks
    model.sanity_check_bottom_up(model.encoders, model.bottom_up_blocks)
    model.set_bottom_up_blocks(model.bottom_up_blocks)
    model.check_and_set_posterior_blocks(model.posterior_blocks)
    assert torch.isfinite(model(dataset(), epoch=1).loss)


def test_mhvae_refuses_plain_layers_where_an_encoder_of_mean_and_log_variance_is_required():
    model = MHVAE(config_of("MHVAE"), **mhvae_blocks())
    with pytest.raises(ConfigError, match=r"prior_blocks\[0\] is a torch.nn.Linear.*mean and log-variance"):
        model.sanity_check_prior_blocks([nn.Linear(FEATURES, Z_LEVEL), GaussianBlock(FEATURES, Z_LEVEL)])
    with pytest.raises(ConfigError, match=r"posterior_blocks\[1\] is a torch.nn.Sequential"):
        model.check_and_set_posterior_blocks([GaussianBlock(2 * FEATURES, Z_LEVEL), nn.Sequential(nn.Linear(16, 4))])
    with pytest.raises(ConfigError, match=r"posterior_blocks\['b'\]\[0\]"):
        model.check_and_set_posterior_blocks({"a": [GaussianBlock(16, 4)] * 2, "b": [nn.Linear(16, 4)] * 2})
    blocks = mhvae_blocks()
    blocks["bottom_up_blocks"]["a"][-1] = nn.Linear(FEATURES, LATENT_DIM)
    with pytest.raises(ConfigError, match=r"bottom_up_blocks\['a'\]\[-1\]"):
        MHVAE(config_of("MHVAE"), **blocks)


class DocumentedFlow(nn.Module):
    """A flow in the documented style (pythae's BaseNF): an element-wise affine map whose forward and
    inverse return ModelOutput(out=..., log_abs_det_jac=...) for a (B, D) batch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(0.3 * torch.randn(dim))
        self.shift = nn.Parameter(0.3 * torch.randn(dim))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        x = x.reshape(x.shape[0], -1)
        return ModelOutput(out=x * self.log_scale.exp() + self.shift, log_abs_det_jac=self.log_scale.sum().expand(x.shape[0]))

    def inverse(self, y: torch.Tensor) -> ModelOutput:
        y = y.reshape(y.shape[0], -1)
        return ModelOutput(out=(y - self.shift) * (-self.log_scale).exp(), log_abs_det_jac=-self.log_scale.sum().expand(y.shape[0]))


def test_jnf_takes_flows_returning_output_objects():
    flows = nn.ModuleDict({m: DocumentedFlow(LATENT_DIM) for m in INPUT_DIMS})
    model = JNF(config_of("JNF", warmup=1), flows=flows)
    z = torch.randn(N_SAMPLES, 4, LATENT_DIM)
    mu, logvar = torch.randn(4, LATENT_DIM), torch.randn(4, LATENT_DIM)
    flow = flows["a"]
    expected = log_normal(z * flow.log_scale.exp() + flow.shift, mu, logvar) + flow.log_scale.sum()
    assert torch.allclose(model.unimodal_log_prob("a", z, (mu, logvar)), expected, atol=1e-5)
    model.train()
    output = model(dataset(), epoch=2)  # the unimodal stage fits the flows
    output.loss.backward()
    assert flow.log_scale.grad is not None and torch.isfinite(flow.log_scale.grad).all()
    model.eval()
    assert model.encode(dataset(5), cond_mod="a", N=N_SAMPLES).z.shape == (N_SAMPLES, 5, LATENT_DIM)
    u = model.sample_unimodal("a", (mu, torch.full_like(mu, -30.0)), return_mean=True)
    assert torch.allclose(u * flow.log_scale.exp() + flow.shift, mu, atol=1e-4)  # z = f^-1(mu)


class TupleFlow(DocumentedFlow):
    """The same flow in the project's style: forward returns (u, log_det), inverse a tensor."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(x)
        return out.out, out.log_abs_det_jac

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return super().inverse(y).out


def test_jnf_still_takes_tuple_flows():
    model = JNF(config_of("JNF", warmup=1), flows={m: TupleFlow(LATENT_DIM) for m in INPUT_DIMS})
    assert torch.isfinite(model(dataset(), epoch=2).loss)


class DocumentedJointEncoder(BaseEncoder):
    """Nexus's joint encoder as documented code writes it: it reads a (B, msg_dim) batch."""

    def __init__(self, msg_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.msg_dim = msg_dim
        self.layer = nn.Linear(msg_dim, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        mean, log_var = self.layer(x.reshape(-1, self.msg_dim)).chunk(2, dim=-1)
        return ModelOutput(embedding=mean, log_covariance=log_var)


class MessageEncoder(BaseEncoder):
    """A top encoder returning the message as an embedding alone."""

    def __init__(self, in_features: int, msg_dim: int) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, msg_dim)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(embedding=self.layer(x))


def test_nexus_encodes_many_samples_through_a_documented_joint_encoder():
    config = config_of("Nexus", msg_dim=5)
    modules = {
        "encoders": {m: DocumentedEncoder(s, LATENT_DIM) for m, s in INPUT_DIMS.items()},
        "decoders": {m: DocumentedDecoder(LATENT_DIM, s) for m, s in INPUT_DIMS.items()},
        "top_encoders": {m: MessageEncoder(LATENT_DIM, 5) for m in INPUT_DIMS},
        "joint_encoder": DocumentedJointEncoder(5, LATENT_DIM),
    }
    model = Nexus(config, **modules)
    batch = dataset(6)
    assert torch.isfinite(model(batch, epoch=1).loss)
    model.eval()
    encoded = model.encode(batch, N=N_SAMPLES)
    assert encoded.z.shape == (N_SAMPLES, 6, LATENT_DIM)
    assert encoded.modalities_z["a"].shape == (N_SAMPLES, 6, LATENT_DIM)
    assert model.encode(batch, N=N_SAMPLES, flatten=True).z.shape == (N_SAMPLES * 6, LATENT_DIM)
    predicted = model.predict(batch, cond_mod="a", gen_mod="all", N=N_SAMPLES)
    assert {m: tuple(x.shape) for m, x in predicted.items()} == {m: (N_SAMPLES, 6, *s) for m, s in INPUT_DIMS.items()}
    mean = model.encode(batch, cond_mod="a", N=N_SAMPLES, return_mean=True).z
    assert torch.allclose(mean[0], model.encode(batch, cond_mod="a", return_mean=True).z, atol=1e-6)
