"""Progress reporting and cancellation for long-running ``core`` functions.

Every long function in ``core`` takes two optional plain callables:

* ``progress(done, total, message)``: called after each unit of work (a subject, a file);
* ``cancel() -> bool``: polled between units; when it returns True the function stops, cleans up what
  it started (temporary files) and raises :class:`Cancelled`.

:class:`ProgressReporter` is a ready-made ``progress`` callable that draws a tqdm bar in a terminal and keeps
the events it saw (the workbench passes its own callable, which emits a Qt signal). :class:`CancelToken` is a
ready-made ``cancel`` callable with a thread-safe ``cancel()`` method.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Cancelled",
    "CancelToken",
    "ProgressEvent",
    "ProgressFn",
    "CancelFn",
    "ProgressReporter",
    "report_progress",
    "raise_if_cancelled",
    "Steps",
]

ProgressFn = Callable[[int, int, str], None]
CancelFn = Callable[[], bool]


class Cancelled(Exception):
    """Raised by a long ``core`` function when its ``cancel()`` callable returned True.

    Whatever the function was writing has been removed; files that existed before it started are untouched.
    """


class CancelToken:
    """A ``cancel`` callable: ``token.cancel()`` from any thread, the worker polls ``token()``."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def is_cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class ProgressEvent:
    done: int
    total: int
    message: str

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class ProgressReporter:
    """A ``progress(done, total, message)`` callable with a terminal bar; ``events`` holds every call.

    Args:
        description: label shown left of the bar.
        bar: draw a tqdm bar (stderr). Use False in the GUI and in tests.
    """

    def __init__(self, description: str = "", *, bar: bool = True) -> None:
        self.description = description
        self.bar = bar
        self.events: list[ProgressEvent] = []
        self._tqdm: Any = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        event = ProgressEvent(int(done), int(total), str(message))
        self.events.append(event)
        if self.bar:
            if self._tqdm is None:
                from tqdm.auto import tqdm

                self._tqdm = tqdm(total=event.total, desc=self.description, unit="item", leave=True)
            if self._tqdm.total != event.total:
                self._tqdm.total = event.total
            self._tqdm.n = event.done
            self._tqdm.set_postfix_str(event.message[-60:], refresh=False)
            self._tqdm.refresh()
            if event.done >= event.total:
                self.close()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def report_progress(progress: ProgressFn | None, done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total, message)


def raise_if_cancelled(cancel: CancelFn | None, what: str = "operation") -> None:
    """Raise :class:`Cancelled` if ``cancel()`` says so."""
    if cancel is not None and cancel():
        raise Cancelled(f"{what} was cancelled.")


class Steps:
    """Counts units of work, polls ``cancel`` before each and reports ``progress`` after each."""

    def __init__(self, total: int, progress: ProgressFn | None, cancel: CancelFn | None, what: str) -> None:
        self.total = max(int(total), 1)
        self.done = 0
        self.progress = progress
        self.cancel = cancel
        self.what = what

    def check(self) -> None:
        raise_if_cancelled(self.cancel, self.what)

    def advance(self, message: str = "") -> None:
        self.done = min(self.done + 1, self.total)
        report_progress(self.progress, self.done, self.total, message)
