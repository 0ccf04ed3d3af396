"""The metric tests use tiny models: one intra-op thread is faster than two, and much faster when the
machine is busy (two threads spinning on two shared cores made these tests ~10x slower)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
