"""Seeded blocks: the same seed gives the same draws, and the caller's random state is left as it was.

Metrics, samplers and synthesis draw posterior samples; seeding them this way makes a result repeatable
without changing what the training loop (or the GUI) draws next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["seeded"]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with torch's RNG seeded to ``seed``; the caller's RNG state is restored afterwards."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
