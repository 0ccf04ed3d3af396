"""Every test here uses tiny models: see the ``one_torch_thread`` fixture in tests/conftest.py."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _tiny_models(one_torch_thread) -> None:
    """Apply ``one_torch_thread`` to every test of this folder."""
