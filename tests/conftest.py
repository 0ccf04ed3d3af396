"""Suite-wide hygiene: no test reads or writes the user's cache or settings, and Qt runs offscreen."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Two intra-op threads at most, and the cores shared out between pytest-xdist's workers (two workers with two
# threads each on two cores spin against each other).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Demo cohorts and caches go to a per-session temporary folder, never to ~/.cache."""
    root = tmp_path_factory.getbasetemp() / "mmvae-cache"
    monkeypatch.setenv("MMVAE_CACHE_DIR", str(root))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tests of tiny models run faster with one intra-op thread than with two, and about 10x faster when
    the 2-core machine is busy (two threads spinning on shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
