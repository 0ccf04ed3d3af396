"""Sharing a run's model: the hub folder holds the bundle, a model card with the verdict, and loads back;
bundles from unknown versions or with unknown models are refused; nothing is overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from core.data.sources import DataConfig, load_data
from core.models import MVAE, MVAEConfig, load, save_bundle
from core.models.config import ConfigError
from core.workflows.cli import main
from core.workflows.sharing import SharingError, export_shared_model
from core.workflows.synthesis import SynthesisContext, modality_verdicts

DEMO = {"n_subjects": 10, "shape": [16, 16, 16], "seed": 3, "template": "procedural"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MVAE]:
    import os

    os.environ.setdefault("MMVAE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mmvae-cache"))
    loaded = load_data(DataConfig(source="demo", demo=DEMO))
    dataset = loaded.dataset
    torch.manual_seed(0)
    model = MVAE(MVAEConfig(n_modalities=len(dataset.modalities), latent_dim=3, input_dims=dataset.input_dims))
    folder = tmp_path_factory.mktemp("run")
    save_bundle(model, folder / "final_model")
    ids = list(dataset.ids)
    (folder / "split.json").write_text(json.dumps({"train": ids[:6], "validation": ids[6:8], "test": ids[8:]}))
    (folder / "status.json").write_text(json.dumps({"status": "completed", "epochs_completed": 3, "num_epochs": 3,
                                                    "best_validation_loss": 1.25}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"name": "mvae-demo", "data": {"source": "demo"},
                                                        "model": {"name": "MVAE", "latent_dim": 3}}))
    modality_verdicts(SynthesisContext.from_run(folder, loaded, model=model))  # caches synthesis_verdicts.json
    return folder, model


def test_the_shared_folder_has_a_model_card_and_loads_back(run, tmp_path):
    folder, model = run
    shared = export_shared_model(folder, tmp_path / "hub")
    assert sorted(p.name for p in shared.iterdir()) == [
        "README.md", "model.safetensors", "model_config.json", "run_config.yaml", "synthesis_verdicts.json"]
    card = (shared / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "mmvae-workbench" and "mvae" in front["tags"]
    assert "# mvae-demo: MVAE" in card and "T2: per-sample shape (1, 16, 16, 16)" in card
    assert "6 train, 2 validation, 2 test" in card and "3 of 3 epochs" in card
    verdicts = json.loads((shared / "synthesis_verdicts.json").read_text())
    assert set(verdicts) == set(model.modalities)
    assert all(f"**{m}**: {v['text']}" in card for m, v in verdicts.items())  # the verdict, in the workbench's words
    assert "mean image" in card
    loaded = load(shared)
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_card_without_verdicts_says_it_was_not_measured(tmp_path):
    model = MVAE(MVAEConfig(n_modalities=2, latent_dim=2, input_dims={"a": (4,), "b": (3,)}))
    save_bundle(model, tmp_path / "run" / "final_model")
    card = (export_shared_model(tmp_path / "run", tmp_path / "hub") / "README.md").read_text()
    assert "Not measured" in card and "a: per-sample shape (4,)" in card


def test_nothing_is_overwritten_and_a_run_without_a_model_is_refused(run, tmp_path):
    folder, _ = run
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(SharingError, match="already exists"):
        export_shared_model(folder, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    with pytest.raises(SharingError, match="no final model"):
        export_shared_model(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not any(p.name.startswith(".out.") for p in tmp_path.iterdir())


@pytest.mark.parametrize(("field", "value", "message"), [
    ("software_version", "99.0.0", "does not know; upgrade"),
    ("software_version", "banana", "does not know"),
    ("model", "FooVAE", "unknown model 'FooVAE'"),
    ("format", 7, "bundle format 7"),
])
def test_bundles_this_code_does_not_know_are_refused(run, tmp_path, field, value, message):
    folder, _ = run
    shared = export_shared_model(folder, tmp_path / "hub")
    config = json.loads((shared / "model_config.json").read_text())
    config[field] = value
    (shared / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        load(shared)


def test_command_line_share(run, tmp_path, capsys):
    folder, _ = run
    assert main(["share", str(folder), str(tmp_path / "hub")]) == 0
    assert "model card" in capsys.readouterr().out and (tmp_path / "hub" / "README.md").is_file()
    assert main(["share", str(folder), str(tmp_path / "hub")]) == 1
    assert "already exists" in capsys.readouterr().err
