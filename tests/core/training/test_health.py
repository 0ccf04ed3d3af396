"""The collapse check on hand-made epoch metrics: what it reports, when, and in which words."""

from __future__ import annotations

from core.models import COLLAPSE_TERM_PREFIX
from core.training.health import CollapseCheck


def _metrics(**kl_per_dim: float) -> dict[str, float]:
    return {"loss": 1.0, **{f"{COLLAPSE_TERM_PREFIX}[{level}]": kl for level, kl in kl_per_dim.items()}}


def test_a_single_latent_under_the_threshold_for_patience_epochs_is_a_collapse_reported_once() -> None:
    check = CollapseCheck(threshold=0.01, patience=2, first_epoch=3)
    assert check.update(2, _metrics(z=0.0)) == []  # still in the warm-up: not judged
    assert check.update(3, _metrics(z=0.001)) == []  # one epoch under: not yet
    [warning] = check.update(4, _metrics(z=0.002))
    assert warning.kind == "posterior_collapse" and warning.epoch == 4 and warning.details["level"] == "z"
    assert "average subject" in warning.message and "decoder_scale" in warning.message
    assert check.update(5, _metrics(z=0.0)) == []  # once


def test_an_epoch_above_the_threshold_restarts_the_count() -> None:
    check = CollapseCheck(threshold=0.01, patience=2)
    assert check.update(1, _metrics(z=0.0)) == []
    assert check.update(2, _metrics(z=0.5)) == []
    assert check.update(3, _metrics(z=0.0)) == []
    assert [w.kind for w in check.update(4, _metrics(z=0.0))] == ["posterior_collapse"]


def test_an_unused_middle_level_beside_active_ones_is_not_called_a_collapse_of_the_model() -> None:
    check = CollapseCheck(threshold=0.01, patience=2)
    check.update(1, _metrics(z_1=0.3, z_2=0.0001, z_3=0.2))
    [warning] = check.update(2, _metrics(z_1=0.3, z_2=0.0001, z_3=0.2))
    assert warning.kind == "unused_latent_level" and warning.details["level"] == "z_2"
    assert warning.details["active_levels"] == "z_1, z_3"
    assert "z_1, z_3 still carry the input" in warning.message and "not the average subject" in warning.message
    # The rest of the hierarchy going too is then the collapse of the model, for each level left.
    check.update(3, _metrics(z_1=0.0, z_2=0.0, z_3=0.0))
    warnings = check.update(4, _metrics(z_1=0.0, z_2=0.0, z_3=0.0))
    assert sorted((w.kind, w.details["level"]) for w in warnings) == [("posterior_collapse", "z_1"), ("posterior_collapse", "z_3")]


def test_the_state_survives_a_resume() -> None:
    check = CollapseCheck(threshold=0.01, patience=2)
    check.update(1, _metrics(z_1=0.0, z_2=0.5))
    resumed = CollapseCheck(threshold=0.01, patience=2)
    resumed.load_state_dict(check.state_dict())
    [warning] = resumed.update(2, _metrics(z_1=0.0, z_2=0.5))
    assert warning.kind == "unused_latent_level" and "z_2 still carries the input" in warning.message
