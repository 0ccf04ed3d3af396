"""No registered model collapses to its prior with the settings the workbench offers for synthesis.

Each model trains its "Synthesis" preset (its KL warm-up, where it has one, shortened to fit the test's
few epochs) on the three kinds of data the workbench handles: vectors, the 2D demo and the 3D demo. A latent level whose KL per
dimension stays near zero carries nothing about the input, so the trainer's collapse check must stay
silent and every level must keep a KL above the check's threshold. The last test shows the check does
fire on a model pushed into collapse. A conditional model (CVAE) has no such level: its z holds only
what its conditioning modalities leave unsaid, so it reports none and must raise no false alarm.
"""

from __future__ import annotations

import pytest
import torch

from core.data import MultimodalBaseDataset, split_by_subject
from core.data.demo import DemoSpec, make_demo_dataset
from core.models import available, get_model_class
from core.models.config import config_from_dict, config_schema
from core.presets import synthesis_preset
from core.training import Trainer, TrainerConfig
from core.training.health import CollapseCheck, latent_kl_per_dimension

EPOCHS = 6


def vector_data() -> MultimodalBaseDataset:
    """Three views (6, 8 and 5 features) of a shared 3-d factor through fixed non-linear maps."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(192, 3, generator=g)
    sizes = {"a": 6, "b": 8, "c": 5}
    data = {m: torch.tanh(z @ torch.randn(3, d, generator=g)) + 0.05 * torch.randn(192, d, generator=g) for m, d in sizes.items()}
    return MultimodalBaseDataset({m: (x - x.mean(0)) / x.std(0) for m, x in data.items()})


@pytest.fixture(scope="module")
def datasets() -> dict[str, tuple[MultimodalBaseDataset, MultimodalBaseDataset]]:
    """Per variant: (incomplete data, the same subjects complete) for models that need every modality."""
    vectors = vector_data()
    image = make_demo_dataset(DemoSpec(n_subjects=24, shape=(24, 24), dims=2, seed=0))
    volume = make_demo_dataset(DemoSpec(n_subjects=16, shape=(16, 16, 16), seed=0))
    return {"vector": (vectors, vectors), "2D demo": image, "3D demo": volume}


def build(model_name: str, data: MultimodalBaseDataset, **overrides):
    cls = get_model_class(model_name)
    preset = synthesis_preset(model_name)
    assert preset is not None, f"{model_name} has no Synthesis preset in resources/presets/{model_name}.yaml"
    shortened = {"warmup": 2} if "warmup" in config_schema(cls.config_class)["properties"] else {}
    values = {**preset["model"], **shortened, **overrides}
    config = config_from_dict(cls.config_class, {**values, "n_modalities": len(data.modalities), "input_dims": data.input_dims})
    return cls(config), preset


@pytest.mark.parametrize("variant", ["vector", "2D demo", "3D demo"])
@pytest.mark.parametrize("model_name", available())
def test_synthesis_preset_keeps_every_latent_in_use(model_name, variant, datasets, one_torch_thread):
    incomplete, complete = datasets[variant]
    data = incomplete if get_model_class(model_name).supports_incomplete_data else complete
    train, val = split_by_subject(data, fractions=(0.75, 0.25), seed=0)
    model, preset = build(model_name, train)
    training = {**preset["training"], "num_epochs": EPOCHS, "batch_size": 8 if variant != "vector" else 32}
    trainer = Trainer(model, train, val, TrainerConfig(**training, seed=0))
    trainer.train()
    levels = latent_kl_per_dimension(trainer.history[-1].validation)
    if getattr(type(model), "conditions_on_fixed_modalities", False):
        # A conditional model (CVAE): z holds only what the conditioning modalities do not say about the
        # main one, so a KL near 0 is a right answer, not a collapse. No level is watched, no false alarm.
        assert levels == {} and [w for w in trainer.warnings if w.kind == "posterior_collapse"] == []
        assert trainer.history[-1].validation["kl_prior"] >= 0
        return
    assert levels, f"{model_name} reports no kl_per_dim terms"
    assert [w.message for w in trainer.warnings if w.kind == "posterior_collapse"] == []
    threshold = CollapseCheck().threshold
    assert min(levels.values()) > threshold, f"{model_name} on {variant}: KL per dimension {levels}"


def test_the_collapse_check_fires_on_a_model_forced_to_its_prior(datasets, one_torch_thread):
    data, _ = datasets["vector"]
    train, val = split_by_subject(data, fractions=(0.75, 0.25), seed=0)
    # A KL weight of 500 with the seed's fixed unit decoder scale: nothing is worth encoding.
    model, _ = build("MHVAE", train, beta=500.0, warmup=0, decoder_scale="fixed", free_bits=0.0)
    trainer = Trainer(model, train, val, TrainerConfig(num_epochs=EPOCHS, batch_size=32, learning_rate=0.002, seed=0))
    trainer.train()
    collapsed = {w.details["level"] for w in trainer.warnings if w.kind == "posterior_collapse"}
    assert collapsed, latent_kl_per_dimension(trainer.history[-1].validation)
