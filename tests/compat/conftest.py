"""Fixtures of the compat tests: every registered model, and those that take plain modules."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from documented import PLAIN_MODELS

from core.models import available


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread) -> None:
    """Tiny models: one intra-op thread (see tests/conftest.py)."""


@pytest.fixture(params=available())
def model_name(request) -> str:
    return request.param


@pytest.fixture(params=PLAIN_MODELS)
def plain_model_name(request) -> str:
    return request.param


@pytest.fixture
def seeded() -> Callable[..., object]:
    """seeded(seed, fn, *args, **kwargs): fn(*args, **kwargs) right after torch.manual_seed(seed)."""

    def call(seed: int, fn: Callable[..., object], *args, **kwargs):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)

    return call
