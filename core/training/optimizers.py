"""Optimizers built with their fast kernels, and without importing ``torch._dynamo``.

Two costs of a plain ``getattr(torch.optim, name)(params)`` that the trainer avoids:

* ``torch.optim.Optimizer`` wraps ``add_param_group``, ``zero_grad``, ``state_dict`` and
  ``load_state_dict`` in ``torch._disable_dynamo``, which imports ``torch._dynamo`` (and sympy) the first
  time one of them runs, that is when the first optimizer is built: 1.5-5 s and ~60 MB on a CPU, for a
  switch that only matters while dynamo traces the call. The trainer never compiles an optimizer (only
  the model's networks, :func:`core.training.trainer.compile_submodules`), so while dynamo has not been
  imported those wrappers are resolved to the plain methods.
* On the CPU, torch's default is the per-tensor loop (one small kernel per parameter and operation).
  Adam, AdamW and SGD get the fused kernels (3-4x faster steps on the small MLPs), RMSprop the foreach
  ones, unless ``optimizer_params`` chooses. Fused and per-tensor updates agree to rounding, not bit for
  bit; a run and its resume use the same kernels, so resumes stay bit-exact.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["build_optimizer", "FUSED_OPTIMIZERS"]

FUSED_OPTIMIZERS = ("Adam", "AdamW", "SGD")
_DYNAMO_WRAPPED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def _resolve_dynamo_wrappers() -> None:
    """Point torch's lazy ``_disable_dynamo`` wrappers of the Optimizer methods at the plain methods.

    The wrapper looks up ``fn.__dynamo_disable`` before importing dynamo (``torch/_compile.py``); setting
    it to ``fn`` itself makes the call eager, which is what it is anyway when nothing is being traced.
    """
    if "torch._dynamo" in sys.modules:
        return
    for name in _DYNAMO_WRAPPED:
        wrapper = torch.optim.Optimizer.__dict__.get(name)
        code = getattr(wrapper, "__code__", None)
        plain = getattr(wrapper, "__wrapped__", None)
        if plain is not None and code is not None and code.co_filename.endswith("_compile.py"):
            setattr(plain, "__dynamo_disable", plain)


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], learning_rate: float, options: Mapping[str, Any] | None = None
) -> torch.optim.Optimizer:
    """``torch.optim.<name>`` over ``params`` with fused (or foreach) kernels unless ``options`` choose."""
    _resolve_dynamo_wrappers()
    params = list(params)
    options = dict(options or {})
    if "fused" not in options and "foreach" not in options:
        devices = {p.device.type for p in params}
        if name in FUSED_OPTIMIZERS and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params):
            options["fused"] = True
        else:
            options["foreach"] = True
    return getattr(torch.optim, name)(params, lr=learning_rate, **options)
