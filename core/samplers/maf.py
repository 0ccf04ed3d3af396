"""A masked autoregressive flow fitted on the training latents (``zuko.flows.MAF``).

The latents are standardised, then a MAF with a N(0, I) base is fitted by maximum likelihood with
Adam for a fixed number of epochs (seeded, mini-batched). Sampling inverts the flow (sequential
over the latent dimensions) and undoes the standardisation.

References:
    Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation", NeurIPS
    2017. https://arxiv.org/abs/1705.07057
"""

from __future__ import annotations

from typing import Any

import torch
import zuko

from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress
from core.samplers.base import LatentSampler, SamplerError, register_sampler
from core.seeding import seeded

__all__ = ["MAFSampler"]


@register_sampler
class MAFSampler(LatentSampler):
    """Masked autoregressive flow over the latent codes.

    Args:
        n_transforms: autoregressive transforms (MultiVae: 2 MADE blocks).
        hidden_features: hidden layer sizes of each MADE.
        epochs, learning_rate, batch_size: the Adam fitting loop.
        seed: seeds the flow's initial weights, the batch order and the training-latent draws.

    Example:
        >>> import torch
        >>> sampler = MAFSampler(epochs=2, hidden_features=[16]).fit_latents(torch.randn(64, 2))
        >>> tuple(sampler.sample(5, seed=0).z.shape)
        (5, 2)
    """

    name = "maf"

    def __init__(
        self,
        n_transforms: int = 2,
        hidden_features: list[int] | tuple[int, ...] = (128, 128),
        epochs: int = 200,
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_transforms, self.hidden_features = n_transforms, [int(h) for h in hidden_features]
        self.epochs, self.learning_rate, self.batch_size, self.seed = epochs, learning_rate, batch_size, seed
        self.flow: zuko.flows.MAF | None = None
        self.shift: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self.losses: list[float] = []

    def _build(self, dim: int) -> zuko.flows.MAF:
        return zuko.flows.MAF(features=dim, transforms=self.n_transforms, hidden_features=self.hidden_features)

    def fit_latents(self, z: torch.Tensor, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> MAFSampler:
        z = torch.as_tensor(z).float().reshape(len(z), -1)
        if len(z) < 2:
            raise SamplerError(f"A flow needs at least two latents to fit, got {len(z)}.")
        self.shift = z.mean(0)
        self.scale = z.std(0).clamp_min(1e-6)
        u = (z - self.shift) / self.scale
        threads = torch.get_num_threads()
        # The flow is tiny: intra-op threads only add synchronisation (10x slower on a busy 2-core machine).
        torch.set_num_threads(1)
        try:
            self._train(u, progress, cancel)
        finally:
            torch.set_num_threads(threads)
        self.latent_dim = z.shape[1]
        return self

    def _train(self, u: torch.Tensor, progress: ProgressFn | None, cancel: CancelFn | None) -> None:
        with seeded(self.seed):
            flow = self._build(u.shape[1])
            optimizer = torch.optim.Adam(flow.parameters(), lr=self.learning_rate)
            generator = torch.Generator().manual_seed(self.seed)
            self.losses = []
            for epoch in range(self.epochs):
                raise_if_cancelled(cancel, "fitting the flow")
                order = torch.randperm(len(u), generator=generator)
                total = 0.0
                for start in range(0, len(u), self.batch_size):
                    batch = u[order[start : start + self.batch_size]]
                    loss = -flow().log_prob(batch).mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(batch)
                self.losses.append(total / len(u))
                report_progress(progress, epoch + 1, self.epochs, f"flow NLL {self.losses[-1]:.4g}")
        self.flow = flow.eval()

    @torch.no_grad()
    def _sample(self, n: int) -> torch.Tensor:
        u = self.flow().sample((n,))
        return (u * self.scale + self.shift).double()

    @torch.no_grad()
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) of latents ``(n, D)`` under the fitted flow (including the standardisation)."""
        u = (torch.as_tensor(z).float() - self.shift) / self.scale
        return self.flow().log_prob(u) - self.scale.log().sum()

    def config(self) -> dict[str, Any]:
        return {"n_transforms": self.n_transforms, "hidden_features": self.hidden_features, "epochs": self.epochs,
                "learning_rate": self.learning_rate, "batch_size": self.batch_size, "seed": self.seed}

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {f"flow.{k}": v for k, v in self.flow.state_dict().items()}
        tensors.update(shift=self.shift, scale=self.scale)
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self.shift, self.scale = tensors["shift"], tensors["scale"]
        self.flow = self._build(int(info["latent_dim"]))
        weights = {k[len("flow."):]: v for k, v in tensors.items() if k.startswith("flow.")}
        missing, unexpected = self.flow.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise SamplerError(f"Saved flow weights do not match the flow: missing {missing[:3]}, unexpected {unexpected[:3]}.")
        self.flow.eval()
