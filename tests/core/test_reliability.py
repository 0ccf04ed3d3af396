"""Nothing lost, nothing silent: hostile and broken inputs through the command line, the writers' path
rules, weights that are not safetensors, crafted HDF5 caches and config errors."""

from __future__ import annotations

import pickle
import shutil

import pytest
import yaml
from bad_inputs import CASES, HEALTHY, digest, unmet, write_bad_cohort

from core.atomic import UnsafePathError, check_safe_name, ensure_inside, load_tensors
from core.data.quality import check_cohort
from core.data.sources import DataConfig, load_data
from core.workflows.cli import main


@pytest.fixture(scope="module")
def bad_cohort(tmp_path_factory):
    return write_bad_cohort(tmp_path_factory.mktemp("bad"))


def test_info_names_every_broken_file_once_from_the_cohort_report(bad_cohort, capsys):
    before = digest(bad_cohort.parent)
    assert main(["info", str(bad_cohort)]) == 1  # errors: the named files are treated as missing
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    _, report = check_cohort(bad_cohort)
    assert unmet(report.issues) == []
    for issue in report.issues:  # the CLI prints the report itself, every issue with its fix
        assert str(issue) in out
    assert "error(s)" in err
    assert digest(bad_cohort.parent) == before, "checking a cohort never writes"


def test_strict_turns_warnings_into_errors(tmp_path, capsys):
    cohort = write_bad_cohort(tmp_path)
    rows = (cohort / "manifest.csv").read_text(encoding="utf-8").splitlines()
    keep = {"good-1", "good-2", "xform"}  # only a qform/sform warning is left
    (cohort / "manifest.csv").write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[0] in keep
                                                                 and ",FLAIR," not in r]) + "\n")
    assert main(["info", str(cohort)]) == 0
    assert "1 warning(s)" in capsys.readouterr().err
    assert main(["info", str(cohort), "--strict"]) == 1
    out, err = capsys.readouterr()
    assert "ERROR: [xform] T2: qform" in out and "--strict" in err


def test_the_rest_of_the_cohort_loads_and_preparing_names_the_same_cases(bad_cohort):
    loaded = load_data(DataConfig(source=str(bad_cohort)))
    dataset = loaded.dataset
    assert unmet(loaded.records.issues) == []
    assert dataset.modalities == ["T1", "T2"]
    for subject in HEALTHY:
        i = dataset.ids.index(subject)
        assert bool(dataset.masks["T1"][i]) and bool(dataset.masks["T2"][i])
    for case in CASES:
        if case.level == "error" and case.subject is not None and case.modality in dataset.modalities:
            i = dataset.ids.index(case.subject)
            assert not bool(dataset.masks[case.modality][i]), case.name  # unusable -> missing, never zeros
    assert "../../outside/pwn" not in dataset.ids


def test_one_safe_name_rule_and_writers_stay_inside(tmp_path):
    for good in ("sub-01", "BraTS2021_00001", "T1ce", "sub-01_ses-pre"):
        assert check_safe_name("subject id", good) == good
    for bad in ("../../outside/pwn", "/etc/passwd", "a/b", "..", ".hidden", "", "x\\y", "a..b"):
        with pytest.raises(UnsafePathError, match="not a safe name"):
            check_safe_name("subject id", bad)
    out = tmp_path / "out"
    out.mkdir()
    assert ensure_inside(out / "a.nii.gz", out) == out / "a.nii.gz"
    with pytest.raises(UnsafePathError, match="outside the output folder"):
        ensure_inside(out / ".." / "a.nii.gz", out)
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):
        ensure_inside(out / "link" / "a.nii.gz", out)


def test_folder_layouts_apply_the_rule_to_subject_folders(tmp_path):
    import nibabel as nib
    import numpy as np

    for name in ("good", "bad;name"):
        (tmp_path / name).mkdir()
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / name / "x_t1.nii.gz")
    cohort, report = check_cohort(tmp_path, check_voxels=False)
    assert cohort.subjects == ["good"]
    assert any("'bad;name' is not a safe name" in i.message and i.fix for i in report.errors)


def test_weights_that_are_not_safetensors_are_refused_in_one_line(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="is not a safetensors weights file") as error:
        load_tensors(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cohort = root / "cohort"
    assert main(["demo-data", str(cohort), "--n", "8", "--shape", "16", "16", "16", "--seed", "1"]) == 0
    config = {"name": "rel", "data": {"source": str(cohort), "split": {"fractions": [0.5, 0.25, 0.25], "seed": 0}},
              "model": {"name": "MVAE", "latent_dim": 2}, "training": {"num_epochs": 1, "batch_size": 4}}
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "run.yaml"), "--out", str(root / "run"), "--quiet"]) == 0
    return root, cohort


@pytest.mark.parametrize("command", ["impute", "evaluate", "resume"])
def test_cli_refuses_pickled_weights_in_one_line(trained_run, tmp_path, capsys, command):
    root, cohort = trained_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    for weights in run.rglob("model.safetensors"):
        weights.write_bytes(pickle.dumps({"weight": 1}))
    args = {"impute": ["impute", str(run), str(cohort), "--out", str(tmp_path / "synth"), "--quiet"],
            "evaluate": ["evaluate", str(run), "--out", str(tmp_path / "m.json")],
            "resume": ["resume", str(run), "--epochs", "2", "--quiet"]}[command]
    capsys.readouterr()
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "not a safetensors weights file" in line]
    assert len(lines) == 1 and "model.safetensors" in lines[0], err


# ---------------------------------------------------------------------------------------------------------
# Damaged or crafted HDF5 caches: one CacheError at open, before any model is built
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_cache(bad_cohort, tmp_path_factory):
    from core.data.loading import load_cohort_dataset
    from core.data.preprocessing.config import PreprocessingConfig

    path = tmp_path_factory.mktemp("cache") / "cohort.h5"
    dataset, _ = load_cohort_dataset(bad_cohort, PreprocessingConfig(), cache_path=path)
    dataset.close()
    return path


def _no_present(f):
    del f["modalities/T1/present"]


def _opaque_attribute(f):
    import numpy as np

    f.attrs["format"] = np.void(b"\x00\x01opaque")


def _vlen_labels(f):
    import h5py
    import numpy as np

    data = np.empty(len(f["ids"]), dtype=object)
    data[:] = [np.arange(k + 1, dtype="f4") for k in range(len(data))]
    f.create_dataset("labels/age", data=data, dtype=h5py.vlen_dtype(np.float32))


def _external_link(f):
    import h5py

    del f["modalities/T2/present"]
    f["modalities/T2/present"] = h5py.ExternalLink("/etc/elsewhere.h5", "/present")


def _huge_dataset(f):
    n = len(f["ids"])
    del f["modalities/T1/data"]
    f.create_dataset("modalities/T1/data", shape=(n, 1, 2000, 2000, 2000), dtype="f4", chunks=(1, 1, 64, 64, 64))


def _hostile_id(f):
    ids = f["ids"][()]
    ids[0] = b"../../outside/pwn"
    f["ids"][...] = ids


@pytest.mark.parametrize("damage, words", [
    (_no_present, "'modalities/T1/present' is missing"),
    (_opaque_attribute, "not a cohort cache"),
    (_vlen_labels, "'labels/age' has dtype"),
    (_external_link, "soft or external links"),
    (_huge_dataset, "voxels per subject"),
    (_hostile_id, "subject ids ['../../outside/pwn']"),
], ids=["missing-present", "opaque-attribute", "vlen", "external-link", "2000-cubed", "hostile-id"])
def test_crafted_caches_are_refused_at_open_in_one_line(good_cache, tmp_path, capsys, damage, words):
    import h5py

    from core.data.cache import CacheError, H5CohortDataset

    path = tmp_path / "cache.h5"
    shutil.copy(good_cache, path)
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(CacheError) as error:
        H5CohortDataset(path)
    assert words in str(error.value) and str(path) in str(error.value) and "rebuild" in str(error.value)
    config = {"name": "c", "data": {"source": str(path)}, "model": {"name": "MVAE", "latent_dim": 2},
              "training": {"num_epochs": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and words in err
    assert not (tmp_path / "run").exists(), "nothing is built or written for a refused cache"


def test_a_valid_cache_still_opens(good_cache):
    from core.data.cache import H5CohortDataset

    dataset = H5CohortDataset(good_cache)
    assert set(HEALTHY) <= set(dataset.ids) and dataset.modalities == ["T1", "T2"]
    dataset.close()


def test_config_errors_come_all_at_once_with_their_paths(tmp_path, capsys):
    from core.models.config import ConfigError
    from core.workflows.runs import parse_run_config

    values = {"data": {"source": "demo", "splt": 1, "preprocessing": {"target_shap": [8, 8, 8]}},
              "model": {"name": "MVAE", "latent_dimm": 3, "warmpu": 2}, "training": {"epochs": 3, "batch_size": -1},
              "extra": 1}
    with pytest.raises(ConfigError) as error:
        parse_run_config(values)
    keys = [problem.path for problem in error.value.problems]
    assert keys == ["extra", "data.splt", "data.preprocessing.target_shap", "model.latent_dimm", "model.warmpu",
                    "training.batch_size", "training.epochs"]
    text = str(error.value)
    assert "model.latent_dimm: is not a parameter of MVAEConfig. Did you mean 'latent_dim'?" in text
    assert "training.epochs: is not a parameter of TrainerConfig. Did you mean 'num_epochs'?" in text
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(values))
    assert main(["train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "7 problem(s)" in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_divergence_without_nan_is_a_warning_in_status_json(trained_run, tmp_path, caplog):
    import json

    from core.training.divergence import diverged

    assert diverged(1e10, 2e4) and not diverged(3e4, 2e4) and not diverged(-50.0, -900.0) and not diverged(0.5, 0.001)
    _, cohort = trained_run
    config = {"name": "lr10", "data": {"source": str(cohort), "split": {"fractions": [0.5, 0.25, 0.25], "seed": 0}},
              "model": {"name": "MVAE", "latent_dim": 2},
              "training": {"num_epochs": 3, "batch_size": 2, "learning_rate": 10.0}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    status = json.loads((tmp_path / "run" / "status.json").read_text(encoding="utf-8"))
    kinds = [w["kind"] for w in status["warnings"]]
    assert kinds.count("divergence") == 1, status
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("diverging" in m and "learning_rate" in m for m in logged), logged  # the terminal shows it too


def test_two_writers_kill_minus_9_and_resume(trained_run, tmp_path, capsys):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from core.workflows.runs import read_run_summary, run_owner

    _, cohort = trained_run
    config = {"name": "busy", "data": {"source": str(cohort), "split": {"fractions": [0.5, 0.25, 0.25], "seed": 0}},
              "model": {"name": "MVAE", "latent_dim": 2}, "training": {"num_epochs": 500, "batch_size": 2}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "core.workflows.cli", "train", str(tmp_path / "run.yaml"), "--out", str(run),
                              "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("epoch-*/trainer_state.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run_owner(run)["pid"] == first.pid
        # A second writer is refused, naming the owner; the first run's folder is untouched.
        assert main(["train", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "is in use" in err and f"pid {first.pid}" in err
        assert main(["resume", str(run), "--quiet"]) == 1
        assert "is in use" in capsys.readouterr().err
        assert read_run_summary(run).status == "running"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert json.loads((run / "status.json").read_text(encoding="utf-8"))["status"] == "running"
    assert read_run_summary(run).status == "interrupted", "a dead owner is seen through its lock"
    stale = run / "checkpoints" / ".epoch-9999.staging"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    done = json.loads((run / "status.json").read_text(encoding="utf-8")).get("epochs_completed", 0)
    assert main(["resume", str(run), "--epochs", str(done + 2), "--quiet"]) == 0
    assert not stale.exists(), "stale staging folders are cleaned when a writer starts"
    assert read_run_summary(run).status == "completed" and run_owner(run) is None


def test_impute_into_a_folder_another_writer_holds_is_refused_naming_it(trained_run, tmp_path, capsys):
    import os

    from core.workflows.runs import run_lock

    root, cohort = trained_run
    out = tmp_path / "synth"
    with run_lock(out, "train"):
        capsys.readouterr()
        assert main(["impute", str(root / "run"), str(cohort), "--out", str(out), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "is in use: train by pid" in err and f"pid {os.getpid()}" in err and "Traceback" not in err
        assert not list(out.rglob("*.nii.gz")), "the refused writer wrote nothing"
    assert main(["impute", str(root / "run"), str(cohort), "--out", str(out), "--quiet"]) == 0
    assert list(out.rglob("*.nii.gz"))
