"""Cooperative control of a running training: pause, resume, stop-and-keep, cancel.

The GUI (another thread) or a signal handler sets flags; the trainer reads them between batches, so
a step is never interrupted half-way and nothing is ever killed.
"""

from __future__ import annotations

import threading

__all__ = ["TrainingControl"]


class TrainingControl:
    """Thread-safe flags the trainer checks at step boundaries."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._cancel = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint, and end the run as 'stopped' (resumable)."""
        self._stop.set()
        self._running.set()

    def request_cancel(self) -> None:
        """End as soon as the current step is done, keeping the run folder and its last checkpoint."""
        self._cancel.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait_while_paused(self, poll_seconds: float = 0.2) -> None:
        """Block the training thread while paused; returns at once otherwise."""
        while not self._running.wait(timeout=poll_seconds):
            pass
