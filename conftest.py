"""What the docstring examples of ``core`` share (``pytest --doctest-modules``): a writable ``folder``."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _doctest_folder(doctest_namespace: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    doctest_namespace["folder"] = tmp_path_factory.mktemp("doctest")
