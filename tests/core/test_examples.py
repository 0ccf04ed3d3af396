"""Every example config parses, names a registered model and builds it on data of the demo's shape."""

from pathlib import Path

import pytest
import torch

from core.data import IncompleteDataset
from core.models import available
from core.workflows.runs import build_model, load_run_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "configs").glob("*.yaml"))


def test_there_is_an_example_per_model():
    names = {load_run_config(p).model_name for p in EXAMPLES}
    assert set(available()) <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_builds_its_model(path):
    config = load_run_config(path)
    spec = config.data.demo  # typed: a DemoSpec
    n = 4
    data = {m: torch.randn(n, 1, *spec.shape) for m in spec.modalities}
    masks = {m: torch.ones(n, dtype=torch.bool) for m in spec.modalities}
    model = build_model(config, IncompleteDataset(data, masks))
    assert model.name == config.model_name
    assert model.modalities == list(spec.modalities)
