"""Optimizers built with their fast kernels, and without importing ``torch._dynamo``.

Two costs of a plain ``getattr(torch.optim, name)(params)`` that the trainer avoids:

* ``torch._dynamo`` (and sympy: 1.5-5 s and ~70 MB on a CPU) is imported the first time an optimizer is
  built (``add_param_group``, like ``zero_grad``, ``state_dict`` and ``load_state_dict``, is wrapped in
  ``torch._disable_dynamo``) and by every ``step`` (its graph-break wrapper), for switches that only
  matter while dynamo traces the call. The trainer never compiles an optimizer (only the model's
  networks, :func:`core.training.trainer.compile_submodules`), so while dynamo has not been imported the
  wrappers are resolved to the plain methods and :func:`optimizer_step` runs the update itself.
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
import torch.optim.optimizer as torch_optimizer

__all__ = ["build_optimizer", "optimizer_step", "FUSED_OPTIMIZERS"]

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


def _plain_update(cls: type[torch.optim.Optimizer]) -> Any:
    """The update function under torch's own step wrappers (profiling hooks, graph break), or None when the
    step is wrapped by anything else."""
    wrapper_file = torch_optimizer.__file__
    step, wrappers = cls.step, []
    while hasattr(step, "__wrapped__"):
        wrappers.append(step)
        step = step.__wrapped__
    names = [getattr(getattr(w, "__code__", None), "co_name", "") for w in wrappers]
    if "_use_grad" not in names or any(getattr(w, "__code__", None) is None or w.__code__.co_filename != wrapper_file
                                       for w in wrappers):
        return None
    return step


def _has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    module = torch_optimizer
    hooks = (getattr(optimizer, "_optimizer_step_pre_hooks", None), getattr(optimizer, "_optimizer_step_post_hooks", None),
             getattr(module, "_global_optimizer_pre_hooks", None), getattr(module, "_global_optimizer_post_hooks", None))
    return any(h is None or len(h) for h in hooks)


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``: the same update, bit for bit; while ``torch._dynamo`` is not imported, called
    without torch's graph-break wrapper, which would import it. With step hooks registered, a differentiable
    optimizer or a step wrapped by anything else, ``optimizer.step()`` itself."""
    update = _plain_update(type(optimizer))
    if update is None or "torch._dynamo" in sys.modules or optimizer.defaults.get("differentiable") or _has_step_hooks(optimizer):
        optimizer.step()
        return
    with torch.no_grad():  # what the wrapper sets for a non-differentiable optimizer
        update(optimizer)
    optimizer._opt_called = True  # what the LR schedulers' check that the optimizer stepped first reads
