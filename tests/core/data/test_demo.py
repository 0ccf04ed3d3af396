import json

import nibabel as nib
import numpy as np
import pytest
import torch

from core.data import DatasetError, missingness_summary
from core.data.demo import (
    DemoSpec,
    MissingSpec,
    generate_subject,
    make_demo_cohort,
    make_demo_dataset,
    spec_from_dict,
    template_path,
    write_demo_cohort,
)

SMALL = DemoSpec(n_subjects=6, shape=(24, 28, 24), seed=3)


@pytest.fixture(scope="module")
def cohort():
    return make_demo_dataset(SMALL, normalize=False)


def test_the_real_icbm_template_ships_with_the_package():
    for kind in ("t1", "gm", "wm"):
        path = template_path(kind)
        assert path is not None and path.is_file()
        assert nib.load(str(path)).shape == (197, 233, 189)


def test_shapes_dtypes_ids_labels(cohort):
    incomplete, complete = cohort
    assert incomplete.modalities == ["T1", "T2", "FLAIR", "US"]
    assert complete.data["T1"].shape == (6, 1, 24, 28, 24) and complete.data["T1"].dtype == torch.float32
    assert incomplete.ids == [f"sub-{i:03d}" for i in range(1, 7)]
    assert set(incomplete.labels) == {"lesion_present", "lesion_volume_ml"}
    no_lesion = incomplete.labels["lesion_present"] == 0
    assert torch.all(incomplete.labels["lesion_volume_ml"][no_lesion] == 0)
    assert torch.all(incomplete.labels["lesion_volume_ml"][~no_lesion] > 1)


def test_any_subject_regenerates_alone_and_seeds_matter(cohort):
    _, complete = cohort
    alone = generate_subject(4, SMALL)
    assert np.array_equal(alone.volumes["T2"], complete.data["T2"][4, 0].numpy())
    assert np.array_equal(alone.volumes["US"], complete.data["US"][4, 0].numpy())
    other = generate_subject(4, DemoSpec(n_subjects=6, shape=(24, 28, 24), seed=4))
    assert not np.array_equal(alone.volumes["T1"], other.volumes["T1"])


def test_mr_contrasts_follow_the_tissue_table():
    spec = DemoSpec(n_subjects=2, shape=(48, 56, 48), seed=1, lesion_probability=0.0)
    subject = generate_subject(0, spec)
    from core.data import demo

    fractions = demo._warped_tissues(spec, demo._draw_factors(spec, 0), demo._grid_affine(spec.grid_shape))
    csf, wm = fractions["CSF"] > 0.8, fractions["WM"] > 0.8
    assert csf.sum() > 20 and wm.sum() > 100
    t1, t2, flair = (subject.volumes[m] for m in ("T1", "T2", "FLAIR"))
    assert t1[csf].mean() < t1[wm].mean()  # CSF dark on T1
    assert t2[csf].mean() > t2[wm].mean()  # and bright on T2
    assert flair[csf].mean() < flair[wm].mean()  # suppressed on FLAIR


def test_ultrasound_lives_in_its_sector(cohort):
    _, complete = cohort
    fov = complete.observation_masks["US"]
    brain = complete.data["T1"] > 0
    fraction = (fov & brain).flatten(1).sum(1).float() / brain.flatten(1).sum(1)
    assert torch.all((fraction > 0.3) & (fraction < 0.9))
    assert torch.all(complete.data["US"][~fov] == 0)
    assert 0 <= complete.data["US"].min() and complete.data["US"].max() <= 1


def test_missingness_keeps_one_modality_and_follows_the_spec():
    spec = DemoSpec(n_subjects=40, shape=(16, 16, 16), template="procedural", missing=MissingSpec(kind="mnar_label"))
    incomplete, _ = make_demo_dataset(spec)
    masks = torch.stack([incomplete.masks[m] for m in incomplete.modalities])
    assert masks.any(0).all()
    lesion = incomplete.labels["lesion_present"] == 1
    assert incomplete.masks["US"][lesion].float().mean() > incomplete.masks["US"][~lesion].float().mean()
    assert missingness_summary(incomplete).n_subjects == 40


def test_normalized_intensities_match_the_pipeline_defaults():
    _, complete = make_demo_dataset(DemoSpec(n_subjects=2, shape=(24, 28, 24), seed=1))
    brain = complete.data["T1"][0] != 0
    t2 = complete.data["T2"][0][brain]
    assert abs(t2.mean().item()) < 0.1 and 0.8 < t2.std().item() < 1.2
    us = complete.data["US"][0][complete.observation_masks["US"][0]]
    assert us.min().item() >= 0 and us.max().item() <= 1


def test_two_dimensional_variant():
    incomplete, complete = make_demo_dataset(DemoSpec(n_subjects=3, shape=(32, 32), dims=2, template="procedural"))
    assert complete.data["FLAIR"].shape == (3, 1, 32, 32)
    assert complete.observation_masks["US"].shape == (3, 1, 32, 32)


def test_cohort_masks_mark_the_lesion_and_the_skull_stripped_brain():
    spec = DemoSpec(n_subjects=4, shape=(24, 28, 24), seed=3, lesion_probability=0.5)
    cohort = make_demo_cohort(spec, normalize=False)
    truth = cohort.ground_truth
    assert cohort.lesion.shape == cohort.brain.shape == (4, 1, 24, 28, 24) and cohort.lesion.dtype == torch.bool
    assert cohort.dataset.ids == truth.ids
    for i, has_lesion in enumerate(truth.labels["lesion_present"].bool().tolist()):
        lesion, brain, flair = cohort.lesion[i], cohort.brain[i], truth.data["FLAIR"][i]
        assert bool(torch.all(flair[~brain] == 0)) and bool(torch.all(flair[brain] > 0))  # MR is skull-stripped to it
        assert bool(lesion.any()) == has_lesion and not bool((lesion & ~brain).any())
        if has_lesion:  # the lesion is bright on FLAIR against the rest of the brain
            assert flair[lesion].mean() > 1.3 * flair[brain & ~lesion].mean()
    sliced = generate_subject(1, DemoSpec(n_subjects=2, shape=(24, 24), dims=2, template="procedural"))
    assert sliced.lesion.shape == sliced.brain.shape == sliced.fov.shape == (24, 24)


def test_procedural_fallback_needs_no_template():
    subject = generate_subject(0, DemoSpec(n_subjects=1, shape=(16, 16, 16), template="procedural"))
    assert subject.volumes["T1"].max() > 0.3


def test_written_cohort_has_correct_geometry_and_manifest(tmp_path):
    spec = DemoSpec(n_subjects=4, shape=(16, 20, 16), seed=2, missing=MissingSpec(kind="mcar", rates={"T2": 0.5, "US": 0.5}))
    manifest = write_demo_cohort(tmp_path / "cohort", spec)
    root = manifest.parent
    import csv

    rows = list(csv.DictReader(open(manifest, encoding="utf-8")))
    incomplete, _ = make_demo_dataset(spec)
    expected = {(s, m) for i, s in enumerate(incomplete.ids) for m in incomplete.modalities if incomplete.masks[m][i]}
    assert {(r["subject"], r["modality"]) for r in rows} == expected
    written = {p.relative_to(root).as_posix() for p in root.rglob("*.nii.gz") if not p.name.endswith("_fov.nii.gz")}
    assert written == {r["path"] for r in rows}
    subject = generate_subject(0, spec)
    for row in rows[:3]:
        image = nib.load(str(root / row["path"]))
        assert image.get_data_dtype() == np.float32
        assert np.allclose(image.affine, subject.affine)
        assert np.allclose(image.get_qform(), image.get_sform())
        assert int(image.header["qform_code"]) > 0 and int(image.header["sform_code"]) > 0
    truth = json.loads((root / "ground_truth.json").read_text(encoding="utf-8"))
    assert set(truth["subjects"]) == set(incomplete.ids)
    assert (root / "participants.tsv").read_text(encoding="utf-8").startswith("participant_id")
    with pytest.raises(FileExistsError):
        write_demo_cohort(root, spec)


def test_bad_specs_are_named():
    with pytest.raises(DatasetError, match="dims"):
        DemoSpec(shape=(32, 32), dims=3)
    with pytest.raises(DatasetError, match="Unknown demo settings"):
        spec_from_dict({"n_subject": 4})
    with pytest.raises(DatasetError, match="'PET'"):
        MissingSpec(rates={"PET": 0.2})
