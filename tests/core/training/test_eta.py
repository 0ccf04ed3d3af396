"""The ETA counts every second of wall time: slow first step, cheaper validation, epoch-end work; the fit's
start and first step (one-off costs) are no basis, so the first estimate is not inflated by them.

A deterministic step-time sequence drives a fake clock; the estimate is compared with the time that
really remained at every report.
"""

from __future__ import annotations

import pytest

from core.training.eta import EtaEstimator

EPOCHS, N_TRAIN, N_EVAL = 5, 6, 3
TRAIN_STEP, FIRST_STEP, EVAL_STEP = 1.0, 4.0, 0.25  # the first step warms up; validation has no backward
INTO_VALIDATION, EPOCH_END = 0.5, 3.0  # the end of the training pass; metrics, previews, checkpoint


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _schedule(n_train: int = N_TRAIN, first_step: float = FIRST_STEP) -> list[tuple[float, int, str, int]]:
    """(time the step ends, epoch, phase, batch) for the whole run."""
    now, events = 100.0, []
    for epoch in range(1, EPOCHS + 1):
        if epoch > 1:
            now += EPOCH_END
        for batch in range(1, n_train + 1):
            now += first_step if (epoch, batch) == (1, 1) else TRAIN_STEP
            events.append((now, epoch, "train", batch))
        now += INTO_VALIDATION
        for batch in range(1, N_EVAL + 1):
            now += EVAL_STEP
            events.append((now, epoch, "validation", batch))
    return events


def _estimates(events: list[tuple[float, int, str, int]], n_train: int = N_TRAIN) -> list[tuple[float, float | None]]:
    """(true seconds left, estimate) at every report."""
    clock = FakeClock()
    eta = EtaEstimator(clock)
    end, out = events[-1][0], []
    for when, epoch, phase, batch in events:
        clock.now = when
        eta.report(epoch, phase, batch, started=100.0)
        out.append((end - when, eta.seconds_left(epoch, phase, batch, EPOCHS, n_train, N_EVAL)))
    return out


def test_eta_matches_the_time_that_remained_from_the_second_epoch() -> None:
    clock = FakeClock()
    eta = EtaEstimator(clock)
    events = _schedule()
    end = events[-1][0]
    estimates = []
    for when, epoch, phase, batch in events:
        clock.now = when
        eta.report(epoch, phase, batch, started=100.0)
        estimates.append((when, epoch, eta.seconds_left(epoch, phase, batch, EPOCHS, N_TRAIN, N_EVAL)))
    # Once one epoch with its boundaries was seen, the estimate is the time that remained.
    for when, epoch, left in estimates:
        if epoch >= 2:
            assert left is not None and abs(left - (end - when)) < 1e-6, (epoch, left, end - when)
    # In the first epoch the slow first step does not inflate the estimate: none until a second step ...
    assert estimates[0][2] is None
    second_step = estimates[1]
    assert eta.step_time("train") == TRAIN_STEP
    assert second_step[2] is not None and second_step[2] <= end - second_step[0]
    # ... and validation steps are counted at their own (lower) cost, not a training step's.
    assert eta.step_time("validation") == EVAL_STEP


@pytest.mark.parametrize("warm_up", [1.5, 2.5, 10.0])
def test_the_first_estimate_waits_for_a_step_after_the_warm_up_and_is_then_close(warm_up: float) -> None:
    """A first step 1.5 to 10 times a later one (the start's one-off costs, as on a GPU): the first estimate used to
    be that much too high. Now there is none after the first step; from the second on, no estimate of the first
    epoch is too high, and each is short only by the epoch-end work not yet seen (here 30 % of an epoch)."""
    estimates = _estimates(_schedule(first_step=warm_up * TRAIN_STEP))
    assert estimates[0][1] is None
    for true, estimate in estimates[1 : N_TRAIN + N_EVAL]:
        assert estimate is not None and 0.7 * true <= estimate <= true + 1e-6, (estimate, true)


def test_one_training_step_per_epoch_takes_its_basis_from_the_next_epoch() -> None:
    """With a single training step an epoch has no second step to time: the next epoch's step (with the epoch-end
    work before it) is the basis, never the first step's warm-up."""
    estimates = _estimates(_schedule(n_train=1, first_step=10 * TRAIN_STEP), n_train=1)
    first_epoch = 1 + N_EVAL
    assert all(estimate is None for _, estimate in estimates[:first_epoch])
    for true, estimate in estimates[first_epoch:]:
        assert estimate is not None and abs(estimate - true) <= 1e-6, (estimate, true)


def test_no_estimate_before_a_step_and_a_new_fit_measures_from_its_start() -> None:
    clock = FakeClock()
    eta = EtaEstimator(clock)
    assert eta.seconds_left(1, "train", 0, EPOCHS, N_TRAIN, N_EVAL) is None
    clock.now = 102.0
    eta.report(1, "train", 1, started=100.0)
    assert eta.step_time("train") is None  # the start's one-off costs are not a step time
    clock.now = 103.0
    eta.report(1, "train", 2, started=100.0)
    assert eta.step_time("train") == 1.0
    # A resume an hour later: its first step is measured from its own start, not from the last report, and is no
    # basis either (the step time stays the one timed before).
    clock.now = 3700.0 + 1.5
    eta.report(3, "train", 4, started=3700.0)
    assert eta.step_time("train") == 1.0
    assert eta.seconds_left(3, "train", 4, EPOCHS, N_TRAIN, 0) < 100
