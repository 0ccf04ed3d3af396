"""Code written exactly as the documented API shows it runs unchanged, for every registered model: custom
encoders and decoders, config round trips, ``model(inputs, epoch=...)``, encode and predict shapes,
hyper-parameters as attributes, ``dataset[i]``, likelihoods and error types."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
import torch
from documented import (
    INPUT_DIMS,
    LATENT_DIM,
    PLAIN_MODELS,
    DocumentedDecoder,
    DocumentedEncoder,
    config_of,
    dataset,
    seeded,
    small_model,
)

from core.models import TrainingProgress, available, get_model_class
from core.models.base import IncompleteDataError, ModalityError, UnknownOptionError, UnsupportedOperationError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
every_model = pytest.mark.parametrize("model_name", available())
plain_models = pytest.mark.parametrize("model_name", PLAIN_MODELS)  # q(z | x_m) over latent_dim, decoders of z alone
N_SAMPLES = 10


@every_model
def test_forward_takes_the_documented_epoch_and_batch_ratio(model_name):
    model = small_model(model_name)
    batch = dataset()
    output = model(batch, epoch=3)
    assert torch.isfinite(output.loss)
    assert isinstance(output.metrics, Mapping)
    assert output.metrics["loss"] == pytest.approx(float(output.loss.detach()))
    model.eval()
    documented = seeded(1, model, batch, epoch=2, batch_ratio=0.25).loss
    assert torch.equal(documented, seeded(1, model, batch, TrainingProgress(2, 0.25)).loss)
    assert torch.equal(seeded(1, model.forward, batch, epoch=2, batch_ratio=0.25).loss, documented)


def test_epoch_and_batch_ratio_drive_the_annealing():
    model = small_model("MVAE")  # beta_t = beta * (epoch - 1 + batch_ratio) / warmup during the warm-up
    assert model(dataset(), epoch=3, batch_ratio=0.5).metrics["beta"] == pytest.approx(2.5 / model.warmup)
    assert model(dataset(), epoch=model.warmup + 1).metrics["beta"] == pytest.approx(model.beta)


@every_model
def test_forward_refuses_a_misspelt_or_misplaced_argument(model_name):
    model = small_model(model_name)
    with pytest.raises(UnknownOptionError, match="'epoc'.*Did you mean 'epoch'"):
        model(dataset(), epoc=3)
    with pytest.raises(TypeError, match="not both"):
        model(dataset(), TrainingProgress(2), epoch=2)
    with pytest.raises(ValueError, match="epoch must be a positive integer"):
        model(dataset(), epoch=0)


@every_model
def test_config_to_dict_and_from_dict_round_trip(model_name):
    config = config_of(model_name, decoder_dist_params={"a": {"scale": 0.5}})
    as_dict = config.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    cls = get_model_class(model_name).config_class
    assert cls.from_dict(as_dict) == config
    assert cls.from_dict(as_dict).to_dict() == as_dict
    model = get_model_class(model_name)(cls.from_dict(as_dict))
    assert model.model_config.to_dict()["decoder_dist_params"] == {"a": {"scale": 0.5}}


@every_model
@pytest.mark.parametrize("n", [1, N_SAMPLES])
def test_encode_and_predict_shapes(model_name, n):
    model = small_model(model_name)
    batch = dataset(5)
    z = model.encode(batch, N=n).z
    lead = (5,) if n == 1 else (n, 5)
    assert z.shape[: len(lead)] == lead
    assert model.encode(batch, N=n, flatten=True).z.shape[0] == n * 5
    for cond in ("a", ["a", "b"], "all"):
        assert model.predict(batch, cond_mod=cond, gen_mod="b", N=n)["b"].shape == (*lead, *INPUT_DIMS["b"])
        predicted = model.predict(batch, cond_mod=cond, gen_mod="all", N=n)  # a CVAE generates its main modality only
        assert predicted and {m: tuple(x.shape) for m, x in predicted.items()} == {m: (*lead, *INPUT_DIMS[m]) for m in predicted}


@every_model
def test_encode_and_predict_refuse_unknown_keywords_naming_the_nearest(model_name):
    model = small_model(model_name)
    with pytest.raises(UnknownOptionError, match="'retrun_mean'.*Did you mean 'return_mean'"):
        model.encode(dataset(), retrun_mean=True)
    with pytest.raises(UnknownOptionError, match="'gen_mods'.*Did you mean 'gen_mod'"):
        model.predict(dataset(), cond_mod="a", gen_mods="b")
    with pytest.raises(UnknownOptionError, match="'retrun_mean'.*Did you mean 'return_mean'"):
        model.predict(dataset(), cond_mod="a", retrun_mean=True)
    assert model.predict(dataset(), cond_mod="a", return_mean=True)["b"].shape == (4, *INPUT_DIMS["b"])


DOCUMENTED_ATTRIBUTES = {
    "MVAE": ["beta", "warmup", "k", "use_subsampling"],
    "JMVAE": ["alpha", "beta", "warmup"],
    "JNF": ["beta", "warmup"],
    "Nexus": ["gammas", "top_beta", "bottom_betas", "dropout_rate", "msg_dim", "warmup", "modalities_specific_dim"],
    "MHVAE": ["beta", "n_latent"],
}


@every_model
def test_hyperparameters_are_read_only_attributes(model_name):
    model = small_model(model_name)
    config = model.model_config
    for name in DOCUMENTED_ATTRIBUTES.get(model_name, []) + ["latent_dim", "n_modalities", "input_dims"]:
        assert getattr(model, name) == getattr(config, name), name
        with pytest.raises(AttributeError, match="read-only"):
            setattr(model, name, getattr(config, name))
    assert isinstance(model.encoders, torch.nn.ModuleDict)  # submodules still come first


@every_model
def test_a_dataset_item_is_a_batch_of_one(model_name):
    model = small_model(model_name)
    data = dataset(3)
    model.eval()
    assert model.encode(data[1]).z.shape[0] == 1
    assert model.predict(data[1], cond_mod="a", gen_mod="b")["b"].shape == (1, *INPUT_DIMS["b"])
    assert torch.isfinite(model(data[1]).loss)
    mean_one = model.encode(data[1], return_mean=True).z
    assert torch.allclose(mean_one, model.encode(data, return_mean=True).z[1:2], atol=1e-5)


@every_model
def test_a_wrong_modality_name_is_also_an_attribute_error(model_name):
    model = small_model(model_name)
    with pytest.raises(AttributeError, match="Unknown modalities"):
        model.encode(dataset(), cond_mod="T9")
    with pytest.raises(ModalityError):
        model.predict(dataset(), cond_mod="a", gen_mod=["b", "T9"])


@every_model
def test_conditional_likelihood_wherever_the_joint_one_exists(model_name):
    model = small_model(model_name)
    model.eval()
    data = dataset(3)
    if not model.has_likelihood:
        for method in (model.compute_joint_nll, lambda x: model.compute_cond_nll(x, "a", "b")):
            with pytest.raises(AttributeError):
                method(data)
            with pytest.raises(UnsupportedOperationError):
                method(data)
        return
    assert torch.isfinite(model.compute_joint_nll(data, K=4, batch_size_K=2))
    cond_nll = model.compute_cond_nll(data, subset=["a"], pred_mods=["b"], k_iwae=3)
    assert set(cond_nll) == {"b"} and cond_nll["b"].shape == () and torch.isfinite(cond_nll["b"])


def test_conditional_likelihood_is_the_monte_carlo_estimate():
    """-log p(x_b | x_a) ~ -log mean_k p(x_b | z_k), z_k ~ q(z | x_a), averaged over the samples."""
    model = small_model("MVAE")
    model.eval()
    data = dataset(3)
    k = 5
    estimate = seeded(3, model.compute_cond_nll, data, "a", "b", k_iwae=k)["b"]
    torch.manual_seed(3)
    batch = model.prepare_batch(data)
    log_p = torch.stack(
        [
            model.reconstruction_log_likelihood(batch, "b", model.decoder_output("b", model.encode(batch, "a").z), rescale=False)
            for _ in range(k)
        ]
    )
    expected = -(torch.logsumexp(log_p, 0) - torch.log(torch.tensor(float(k)))).mean()
    assert torch.allclose(estimate, expected)


def test_incomplete_data_refused_with_an_attribute_error_too():
    from core.data import IncompleteDataset

    data = dataset(4)
    masks = {m: torch.ones(4, dtype=torch.bool) for m in INPUT_DIMS}
    masks["b"][1] = False
    incomplete = IncompleteDataset(data.data, masks)
    model = small_model("JMVAE")
    with pytest.raises(AttributeError, match="missing"):
        model(incomplete)
    with pytest.raises(IncompleteDataError):
        small_model("MVAE").encode(incomplete, cond_mod="b")


@plain_models
def test_modules_for_other_modalities_are_also_an_attribute_error(model_name):
    encoders = {m: DocumentedEncoder(s, LATENT_DIM) for m, s in {"a": (6,), "z": (4,)}.items()}
    with pytest.raises(AttributeError, match="modalities"):
        small_model(model_name, encoders=encoders)


@plain_models
def test_documented_encoders_and_decoders(model_name):
    encoders = torch.nn.ModuleDict({m: DocumentedEncoder(s, LATENT_DIM) for m, s in INPUT_DIMS.items()})  # mapping-like
    decoders = {m: DocumentedDecoder(LATENT_DIM, s) for m, s in INPUT_DIMS.items()}
    model = small_model(model_name, encoders=encoders, decoders=decoders)
    assert model.encoders["a"] is encoders["a"] and model.decoders["b"] is decoders["b"]
    model.train()
    for stage in model.stages:  # JNF and TELBO train their unimodal encoders in a later stage
        model(dataset(), epoch=stage.first_epoch).loss.backward()
    assert encoders["a"].hidden.weight.grad is not None and decoders["b"].layers[0].weight.grad is not None
    model.eval()
    calls = []
    encoders["a"].register_forward_hook(lambda *_: calls.append(1))
    predicted = model.predict(dataset(5), cond_mod="a", gen_mod="b", N=N_SAMPLES)
    assert predicted["b"].shape == (N_SAMPLES, 5, *INPUT_DIMS["b"]) and calls
