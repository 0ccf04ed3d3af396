r"""Normalizing flows on the latent space, for the flow posteriors of JNF.

JNF models a unimodal posterior as a Gaussian "base" encoder followed by a bijection ``f_m`` that maps
a latent code to the base space, ``z -> u = f_m(z)``. By the change of variables

    log q_m(z | x_m) = log N(f_m(z); mu_m(x_m), sigma_m(x_m)^2) + log |det df_m(z)/dz|

and a sample is ``z = f_m^{-1}(u)`` with ``u ~ N(mu_m, sigma_m^2)``.

The interface a flow must follow is :class:`LatentFlow`:

* ``forward(z)`` with ``z`` of shape ``(*, D)`` returns ``(u, ladj)``: ``u`` of shape ``(*, D)`` and
  ``ladj = log |det df/dz|`` of shape ``(*,)``;
* ``inverse(u)`` returns ``z = f^{-1}(u)`` of shape ``(*, D)``.

:func:`as_latent_flow` also accepts a zuko flow (``zuko.flows.MAF(D)``, any ``zuko.lazy.Flow``: only its
transform is used, its base distribution is replaced by the encoder's Gaussian) or a zuko lazy
transform, and wraps them in :class:`ZukoFlow`; and a flow in the documented style (pythae's ``BaseNF``),
whose ``forward`` and ``inverse`` return an output with ``out`` and ``log_abs_det_jac``, wrapped in
:class:`OutputFlow`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import zuko
from torch import nn

from core.nn.base import evaluation_mode

__all__ = ["LatentFlow", "ZukoFlow", "OutputFlow", "default_flow", "as_latent_flow"]

SAMPLE_FIELD, LOG_DET_FIELD = "out", "log_abs_det_jac"  # the documented flows' output fields


class LatentFlow(nn.Module):
    """A bijection ``f: z -> u`` of the latent space with a tractable log-Jacobian determinant."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        """``(u, log|det df/dz|)`` for ``z`` of shape ``(*, D)``; shapes ``(*, D)`` and ``(*,)``."""
        raise NotImplementedError

    def inverse(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """``f^{-1}(u)`` for ``u`` of shape ``(*, D)``."""
        raise NotImplementedError


class ZukoFlow(LatentFlow):
    """A zuko (unconditional) lazy transform used as a :class:`LatentFlow`.

    Args:
        transform: a ``zuko.lazy.LazyTransform`` mapping data to base space (for a ``zuko.lazy.Flow``,
            its ``.transform``). Its MADE masks are converted in place to the weights' dtype (same 0/1
            values, a faster product; see ``_float_masks``), so the caller's transform changes too.
    """

    def __init__(self, transform: zuko.lazy.LazyTransform) -> None:
        super().__init__()
        self.transform = transform
        _float_masks(transform)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform().call_and_ladj(z)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        return self.transform().inv(u)


def _float_masks(transform: nn.Module) -> None:
    """Store zuko's autoregressive masks in the weights' dtype instead of bool (the same 0/1 values).

    Every ``MaskedLinear`` call multiplies its weight by the mask; a bool mask takes torch's
    type-promoting path, about six times slower than a float product on a 128x128 weight, and a flow
    is called a dozen times a training step and hundreds of times during MCMC imputation.
    """
    for module in transform.modules():
        if isinstance(module, zuko.nn.MaskedLinear) and not module.mask.is_floating_point():
            module.mask = module.mask.to(module.weight.dtype)


def _field(output: Any, name: str) -> Any:
    return output[name] if isinstance(output, Mapping) else getattr(output, name)


def returns_output_object(output: Any) -> bool:
    """Whether a flow's output is the documented object (``out`` and ``log_abs_det_jac``) rather than a tuple."""
    if isinstance(output, Mapping):
        return LOG_DET_FIELD in output
    return hasattr(output, LOG_DET_FIELD)


class OutputFlow(LatentFlow):
    """A flow in the documented style (pythae's ``BaseNF``) used as a :class:`LatentFlow`.

    Its ``forward(z)`` returns an output with the transformed sample ``out`` and ``log_abs_det_jac``, and
    its ``inverse(u)`` an output whose ``out`` is z (or a tensor). Such flows read ``(B, D)`` batches,
    so leading dimensions are flattened for them and restored.
    """

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.flow(z.reshape(-1, z.shape[-1]))
        u, ladj = _field(output, SAMPLE_FIELD), _field(output, LOG_DET_FIELD)
        return u.reshape(z.shape), ladj.reshape(z.shape[:-1])

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        output = self.flow.inverse(u.reshape(-1, u.shape[-1]))
        z = output if isinstance(output, torch.Tensor) else _field(output, SAMPLE_FIELD)
        return z.reshape(u.shape)


def default_flow(
    latent_dim: int, transforms: int = 2, hidden_features: Sequence[int] = (128, 128, 128)
) -> ZukoFlow:
    r"""The default flow posterior: a masked autoregressive flow (zuko ``MAF``).

    Two autoregressive transforms with three hidden layers of 128 units and alternating feature
    orders, as pythae's MAF defaults that MultiVae uses (``n_made_blocks=2``, ``n_hidden_in_made=3``,
    ``hidden_size=128``). The inverse (sampling) direction is sequential over the D latent dimensions.

    References:
        Papamakarios et al., "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.
        https://arxiv.org/abs/1705.07057
    """
    maf = zuko.flows.MAF(latent_dim, transforms=transforms, hidden_features=tuple(hidden_features))
    return ZukoFlow(maf.transform)


def as_latent_flow(flow: Any, latent_dim: int, name: str = "flow") -> LatentFlow:
    """Wrap ``flow`` as a :class:`LatentFlow` and check it on a dummy batch.

    Accepts a :class:`LatentFlow`, any ``nn.Module`` with ``forward(z) -> (u, ladj)`` and ``inverse(u)``,
    one whose ``forward`` returns the documented output (``out``, ``log_abs_det_jac``), a ``zuko.lazy.Flow``
    (its transform is used) or a ``zuko.lazy.LazyTransform``. ``name`` is used in error messages (e.g.
    ``"flows['T1']"``).
    """
    if isinstance(flow, zuko.lazy.Flow):
        flow = ZukoFlow(flow.transform)
    elif isinstance(flow, zuko.lazy.LazyTransform):
        flow = ZukoFlow(flow)
    if not isinstance(flow, nn.Module) or not callable(getattr(flow, "inverse", None)):
        raise TypeError(
            f"{name} must be a zuko flow or transform, or an nn.Module with forward(z) -> (u, log_det) (or an output "
            f"with '{SAMPLE_FIELD}' and '{LOG_DET_FIELD}') and inverse(u) -> z; got {type(flow).__name__}."
        )
    if not isinstance(flow, LatentFlow) and returns_output_object(_dry_forward(flow, latent_dim, name)):
        flow = OutputFlow(flow)
    _check_flow(flow, latent_dim, name)
    return flow


def _dry_forward(flow: nn.Module, latent_dim: int, name: str) -> Any:
    """``flow`` on a zero latent of shape ``(2, latent_dim)``, in eval mode and without gradients."""
    with evaluation_mode(flow), torch.no_grad():
        param = next(flow.parameters(), None)
        z = torch.zeros(2, latent_dim, device=param.device if param is not None else None)
        try:
            return flow(z)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ValueError(f"{name} fails on a latent of shape (2, {latent_dim}): {exc}. "
                             f"Is it built for latent_dim={latent_dim}?") from exc


def _check_flow(flow: nn.Module, latent_dim: int, name: str) -> None:
    out = _dry_forward(flow, latent_dim, name)
    with evaluation_mode(flow):
        with torch.no_grad():
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise TypeError(f"{name}(z) must return (u, log_det); got {type(out).__name__}.")
            u, ladj = out
            if tuple(u.shape) != (2, latent_dim) or tuple(ladj.shape) != (2,):
                raise ValueError(
                    f"{name} maps z of shape (2, {latent_dim}) to u {tuple(u.shape)} and log_det {tuple(ladj.shape)}; "
                    f"expected (2, {latent_dim}) and (2,). Is the flow built for latent_dim={latent_dim}?"
                )
            back = flow.inverse(u)
            if tuple(back.shape) != (2, latent_dim):
                raise ValueError(f"{name}.inverse returns shape {tuple(back.shape)}; expected (2, {latent_dim}).")
