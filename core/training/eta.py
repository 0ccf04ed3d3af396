"""The time left in a run, from the wall clock between progress reports.

An earlier estimate timed only each step's forward/backward and mixed training and validation steps in one
average, so it missed data loading, callbacks, the epoch's end (metrics, previews, checkpoints) and
weighted the cheap validation steps like training ones: it was always too low. Here every second of wall
time is attributed to something that will happen again:

* the interval between two reports of the same phase and epoch is one step of that phase;
* the interval into the first step of a phase (training after the previous epoch's end, validation after
  the last training step) is that step plus the boundary's overhead, kept per boundary.

The interval from a fit's start (or a resume's) to its first step carries one-off costs: moving the model to
the device, building the optimizer, the first step's warm-up and allocations. It is never a basis (it made
the first estimate of a run far too high while later ones were close): there is no estimate
("estimating…") until a step after it is timed. An epoch of a single training step has no second step to
time; its first boundary (the next epoch's step, with the epoch-end work) is the basis then.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["EtaEstimator"]

_WINDOW = 64  # recent steps per phase: follows a change of speed, smooths the noise


class EtaEstimator:
    """Seconds left in a run of ``num_epochs`` epochs of ``n_train`` training and ``n_eval`` validation steps."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._steps: dict[str, deque[float]] = {"train": deque(maxlen=_WINDOW), "validation": deque(maxlen=_WINDOW)}
        self._first: dict[str, float] = {}  # a phase's first boundary interval, used only until a step is timed
        self._overhead: dict[str, float] = {}  # boundary overhead before a phase's first step in an epoch
        self._unsplit: dict[str, float] = {}  # a boundary seen before any step of its phase was timed
        self._last: tuple[float, int, str] | None = None  # (time, epoch, phase) of the previous report
        self._started: float | None = None

    def step_time(self, phase: str) -> float | None:
        """Mean wall seconds per step of ``phase``, or None before any was timed (the interval from the fit's
        start to its first step does not count: its one-off costs do not come again)."""
        steps = self._steps[phase]
        if steps:
            return sum(steps) / len(steps)
        return self._first.get(phase)

    def report(self, epoch: int, phase: str, batch: int, started: float) -> None:
        """Step ``batch`` (1-based) of ``phase`` in ``epoch`` has just ended; the first report measures from
        ``started`` (the run's or the resume's start, on the same clock)."""
        now = self.clock()
        if self._last is None or started != self._started:  # a new fit (or resume) measures from its start
            self._last, self._started = (started, 0, ""), started
        last_time, last_epoch, last_phase = self._last
        interval = max(0.0, now - last_time)
        self._last = (now, epoch, phase)
        if (last_epoch, last_phase) == (epoch, phase) and batch > 1:
            self._steps[phase].append(interval)
            if phase in self._unsplit:  # the phase's first boundary, split now that its step time is known
                self._overhead.setdefault(phase, max(0.0, self._unsplit.pop(phase) - interval))
            return
        if not last_phase:  # the fit's start to its first step: one-off costs, not a basis for anything
            return
        known = self.step_time(phase)
        if known is None:
            self._first[phase] = interval  # nothing to split it against yet: all of it is the first step
            self._unsplit[phase] = interval
            return
        overhead = max(0.0, interval - known)
        previous = self._overhead.get(phase)
        self._overhead[phase] = overhead if previous is None else 0.5 * previous + 0.5 * overhead

    def seconds_left(self, epoch: int, phase: str, batch: int, num_epochs: int, n_train: int, n_eval: int) -> float | None:
        """Seconds until the last step of the run, after step ``batch`` of ``phase`` in ``epoch``; None until a
        training step after the fit's first one was timed. An untimed validation step is assumed to cost a
        training step."""
        train = self.step_time("train")
        if train is None:
            return None
        evaluate = self.step_time("validation") or train
        later_epochs = num_epochs - epoch
        if phase == "train":
            train_left = n_train - batch + later_epochs * n_train
            eval_left = (later_epochs + 1) * n_eval
            eval_starts = later_epochs + 1 if n_eval else 0
        else:
            train_left = later_epochs * n_train
            eval_left = n_eval - batch + later_epochs * n_eval
            eval_starts = later_epochs if n_eval else 0
        return (train_left * train + eval_left * evaluate + later_epochs * self._overhead.get("train", 0.0)
                + eval_starts * self._overhead.get("validation", 0.0))
