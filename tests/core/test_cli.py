"""The command line end to end, in a temporary folder: demo data, train, resume, impute, errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import yaml

from core.workflows.cli import main

#: The monitoring extra is optional; without it the run trains without its TensorBoard mirror.
HAS_TENSORBOARD = importlib.util.find_spec("tensorboardX") is not None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cohort = root / "cohort"
    assert main(["demo-data", str(cohort), "--n", "10", "--shape", "16", "16", "16", "--seed", "1", "--missing", "mcar"]) == 0
    config = {
        "name": "cli-test",
        "data": {"source": str(cohort), "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0}},
        "model": {"name": "MVAE", "latent_dim": 4, "warmup": 1},
        "training": {"num_epochs": 2, "batch_size": 4, "seed": 0},
        "monitoring": {"tensorboard": HAS_TENSORBOARD},
    }
    config_path = root / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return root, cohort, config_path


def test_demo_data_writes_a_cohort(workspace):
    _, cohort, _ = workspace
    assert (cohort / "manifest.csv").is_file() and (cohort / "participants.tsv").is_file()
    assert len(list(cohort.glob("sub-*/anat/*_T1w.nii.gz"))) == 10


def test_train_resume_and_impute(workspace, capsys):
    root, cohort, config_path = workspace
    run = root / "run"
    assert main(["train", str(config_path), "--out", str(run), "--quiet"]) == 0
    for name in ("config.yaml", "command.txt", "metrics.csv", "status.json", "split.json", "final_model/model.safetensors"):
        assert (run / name).exists(), name
    assert "mmvae train" in (run / "command.txt").read_text(encoding="utf-8")
    if HAS_TENSORBOARD:
        assert list((run / "tensorboard").iterdir()), "the monitoring section switches TensorBoard on"
    assert json.loads((run / "status.json").read_text(encoding="utf-8"))["status"] == "completed"
    # training again into the same folder is refused: resume instead
    assert main(["train", str(config_path), "--out", str(run), "--quiet"]) == 1
    assert "resume" in capsys.readouterr().err

    assert main(["resume", str(run), "--epochs", "3", "--quiet"]) == 0
    status = json.loads((run / "status.json").read_text(encoding="utf-8"))
    assert status["epochs_completed"] == 3 and status["status"] == "completed"
    assert len((run / "metrics.csv").read_text(encoding="utf-8").strip().splitlines()) == 4  # header + 3 epochs, same curve continued

    out = root / "synth"
    assert main(["impute", str(run), str(cohort), "--out", str(out), "--samples", "3", "--uncertainty", "--quiet"]) == 0
    import csv

    present = {(r["subject"], r["modality"]): r["path"] for r in csv.DictReader(open(cohort / "manifest.csv", encoding="utf-8"))}
    subjects = sorted({s for s, _ in present})
    expected = {(s, m) for s in subjects for m in ("T1", "T2", "FLAIR", "US") if (s, m) not in present}
    written = {tuple(p.name.split("_")[:2]) for p in out.glob("*_synth.nii.gz")}
    assert written == expected and expected
    subject, modality = sorted(expected)[0]
    image = nib.load(str(out / f"{subject}_{modality}_synth.nii.gz"))
    source = nib.load(str(cohort / present[(subject, "T1")]))
    assert image.shape == source.shape
    assert np.allclose(image.affine, source.affine)
    assert image.get_data_dtype() == np.float32
    sidecar = json.loads((out / f"{subject}_{modality}_synth.json").read_text(encoding="utf-8"))
    assert sidecar["synthetic"] is True and sidecar["model"] == "MVAE" and sidecar["n_samples"] == 3
    std = nib.load(str(out / f"{subject}_{modality}_synth_std.nii.gz")).get_fdata()
    assert std.max() > 0
    # Ultrasound is written inside the training subjects' most common field of view; the run was never checked.
    us = [json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*_US_synth.json")]
    assert us and all(s["field_of_view"].startswith("cohort majority of ") for s in us)
    assert all(s["verdict"]["passed"] is None and "mmvae report" in s["verdict"]["text"] for s in us)


def test_config_typo_names_the_key(workspace, tmp_path, capsys):
    _, cohort, _ = workspace
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"source": str(cohort)}, "model": {"name": "MVAE", "warmpu": 3}}))
    assert main(["train", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "warmpu" in err and "warmup" in err
    bad.write_text(yaml.safe_dump({"data": {"source": str(cohort)}, "model": {"name": "MVAE"}, "training": {"num_epoch": 3}}))
    assert main(["train", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "num_epoch" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"data": {"source": str(cohort)}, "model": {"name": "NoSuchModel"}}))
    assert main(["train", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "MVAE" in capsys.readouterr().err  # the error lists the available models


def test_likelihood_rescaling_is_accepted_and_trains(workspace, tmp_path, capsys):
    """Regression: the model section was checked against a fake (input_dims=None), so this valid setting was
    refused ("needs input_dims"); its default factors come from the data's shapes."""
    _, cohort, _ = workspace
    config = tmp_path / "rescaled.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": str(cohort)}, "training": {"num_epochs": 1, "batch_size": 4},
                                      "model": {"name": "MVAE", "latent_dim": 4, "uses_likelihood_rescaling": True}}))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0, capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))["model"]["uses_likelihood_rescaling"]


def test_a_misspelt_data_filled_key_is_refused_before_the_data_load(tmp_path, capsys):
    """Regression: ``n_modalitiez`` passed the check (its message mentions "modalities") and failed only after
    loading. The source does not exist, so a failure after loading would be exit 1 naming the source."""
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": str(tmp_path / "nowhere")},
                                      "model": {"name": "MVAE", "n_modalitiez": 2}}))
    assert main(["train", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "model.n_modalitiez: is not a parameter of MVAEConfig. Did you mean 'n_modalities'?" in err
    assert "nowhere" not in err and not (tmp_path / "r").exists()


def test_missing_data_source_is_reported(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": str(tmp_path / "nowhere")}, "model": {"name": "MVAE"}}))
    assert main(["train", str(config), "--out", str(tmp_path / "r")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_module_entry_point_lists_models():
    result = subprocess.run([sys.executable, "-m", "core.workflows.cli", "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for name in ("MVAE", "JMVAE", "JNF", "Nexus", "MHVAE"):
        assert name in result.stdout


def test_help_imports_neither_torch_nor_scikit_learn():
    """``mmvae --help`` printed after 2.8 s (torch, scikit-learn through core.workflows.evaluate); a command's heavy
    arguments are added only when it runs (benchmarks/cli_import_time.py measures the seconds)."""
    code = ("import json, sys\nfrom core.workflows.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as done:\n"
            "    assert done.code == 0\nprint(json.dumps(sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "evaluate" in result.stdout and json.loads(result.stdout.strip().splitlines()[-1]) == []
    evaluate_help = subprocess.run([sys.executable, "-m", "core.workflows.cli", "evaluate", "--help"], capture_output=True,
                                   text=True, timeout=120)
    assert evaluate_help.returncode == 0 and "--sections" in evaluate_help.stdout  # its own arguments are there


def test_impute_with_a_cvae_makes_what_it_can_and_says_what_it_cannot(workspace, capsys, tmp_path):
    import csv

    root, cohort, config_path = workspace
    complete = tmp_path / "complete"  # a CVAE trains on subjects that have all its modalities
    assert main(["demo-data", str(complete), "--n", "6", "--shape", "16", "16", "16", "--seed", "2", "--missing", "none"]) == 0
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["data"]["source"] = str(complete)
    config["model"] = {"name": "CVAE", "latent_dim": 4}  # generates US from T1+T2+FLAIR, nothing else
    config["training"]["num_epochs"] = 1
    cvae_config = tmp_path / "cvae.yaml"
    cvae_config.write_text(yaml.safe_dump(config))
    run, out = tmp_path / "run", tmp_path / "synth"
    assert main(["train", str(cvae_config), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["impute", str(run), str(cohort), "--out", str(out), "--quiet"]) == 0
    present = {(r["subject"], r["modality"]) for r in csv.DictReader(open(cohort / "manifest.csv", encoding="utf-8"))}
    subjects = sorted({s for s, _ in present})
    missing = {(s, m) for s in subjects for m in ("T1", "T2", "FLAIR", "US") if (s, m) not in present}
    servable = {(s, "US") for s in subjects if (s, "US") in missing and all((s, m) in present for m in ("T1", "T2", "FLAIR"))}
    written = {tuple(p.name.split("_")[:2]) for p in out.glob("*_synth.nii.gz")}
    assert written == servable and servable
    reasons = json.loads((out / "not_generated.json").read_text(encoding="utf-8"))
    assert {(s, m) for s, volumes in reasons.items() for m in volumes} == missing - servable
    assert all("CVAE" in why for volumes in reasons.values() for why in volumes.values())
    assert f"not generated: {len(missing - servable)} volumes" in capsys.readouterr().out
