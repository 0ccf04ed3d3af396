"""The Train page's preview shows synthesized ultrasound only inside a field of view, as synthesis writes it."""

from __future__ import annotations

import numpy as np
import torch

from core.data.dataset import IncompleteDataset
from core.models import build_model
from core.workflows.impute import FieldsOfView
from workbench.workers import SynthesisPreview, synthesis_preview

SHAPE = (1, 8, 8, 8)


def _cohort() -> IncompleteDataset:
    torch.manual_seed(0)
    data = {"MR": torch.randn(2, *SHAPE), "US": torch.randn(2, *SHAPE)}
    masks = {"MR": torch.tensor([True, True]), "US": torch.tensor([True, False])}  # subject 1 lacks US
    sector = torch.zeros(2, *SHAPE, dtype=torch.bool)
    sector[0, :, :4] = True  # subject 0's probe saw half the grid
    return IncompleteDataset(data, masks, ids=["with-us", "without-us"], observation_masks={"US": sector})


def _generated(preview: SynthesisPreview, modality: str) -> np.ndarray:
    return next(row[2] for row in preview.rows if row[0] == modality)


def test_a_subject_with_ultrasound_sees_it_synthesized_inside_its_own_field_of_view_only() -> None:
    cohort = _cohort()
    model = build_model("MVAE", {"n_modalities": 2, "input_dims": {"MR": SHAPE, "US": SHAPE}, "latent_dim": 4}).eval()
    asked = []
    preview = synthesis_preview(model, cohort[0], 1, lambda: asked.append(1) or FieldsOfView.fit(cohort))
    us = _generated(preview, "US")
    assert us.shape == SHAPE[1:]
    assert np.all(us[4:] == 0) and np.any(us[:4] != 0)
    assert asked == []  # its own field of view was enough
    assert np.any(_generated(preview, "MR")[4:] != 0)  # MR has no field of view: written whole


def test_a_subject_without_ultrasound_sees_it_inside_the_cohorts_field_of_view() -> None:
    cohort = _cohort()
    model = build_model("MVAE", {"n_modalities": 2, "input_dims": {"MR": SHAPE, "US": SHAPE}, "latent_dim": 4}).eval()
    us = _generated(synthesis_preview(model, cohort[1], 1, lambda: FieldsOfView.fit(cohort)), "US")
    assert np.all(us[4:] == 0) and np.any(us[:4] != 0)
