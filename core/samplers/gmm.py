"""A Gaussian mixture fitted on the training latents (``sklearn.mixture.GaussianMixture``)."""

from __future__ import annotations

from typing import Any

import torch
from sklearn.mixture import GaussianMixture

from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress
from core.samplers.base import LatentSampler, SamplerError, register_sampler

__all__ = ["GaussianMixtureSampler"]


@register_sampler
class GaussianMixtureSampler(LatentSampler):
    """Full-covariance Gaussian mixture over the latent codes.

    Args:
        n_components: mixture components (clipped to the number of training latents).
        max_iter, tol: EM settings (MultiVae's defaults: 2000 and 1e-3).
        reg_covar: added to the covariance diagonals for stability.
        seed: EM initialisation seed, and the seed of the training-latent draws in ``fit``.

    Example:
        >>> import torch
        >>> sampler = GaussianMixtureSampler(n_components=2).fit_latents(torch.randn(50, 3))
        >>> tuple(sampler.sample(4, seed=0).z.shape)
        (4, 3)
    """

    name = "gmm"

    def __init__(self, n_components: int = 10, max_iter: int = 2000, tol: float = 1e-3, reg_covar: float = 1e-6, seed: int = 0) -> None:
        super().__init__()
        if n_components < 1:
            raise ValueError(f"n_components must be at least 1, got {n_components}.")
        self.n_components, self.max_iter, self.tol, self.reg_covar, self.seed = n_components, max_iter, tol, reg_covar, seed
        self.weights: torch.Tensor | None = None
        self.means: torch.Tensor | None = None
        self.covariances: torch.Tensor | None = None
        self.fitted_components: int | None = None

    def fit_latents(self, z: torch.Tensor, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> GaussianMixtureSampler:
        z = torch.as_tensor(z).double().reshape(len(z), -1)
        if len(z) == 0:
            raise SamplerError("Cannot fit a Gaussian mixture on zero latents.")
        raise_if_cancelled(cancel, "fitting the Gaussian mixture")
        k = min(self.n_components, len(z))
        gmm = GaussianMixture(k, covariance_type="full", max_iter=self.max_iter, tol=self.tol, reg_covar=self.reg_covar,
                              random_state=self.seed).fit(z.numpy())
        self.weights = torch.as_tensor(gmm.weights_)
        self.means = torch.as_tensor(gmm.means_)
        self.covariances = torch.as_tensor(gmm.covariances_)
        self.fitted_components = k
        self.latent_dim = z.shape[1]
        report_progress(progress, 1, 1, f"Gaussian mixture with {k} components")
        return self

    def _sample(self, n: int) -> torch.Tensor:
        component = torch.multinomial(self.weights, n, replacement=True)
        chol = torch.linalg.cholesky(self.covariances)
        eps = torch.randn(n, self.latent_dim, dtype=torch.float64)
        return self.means[component] + (chol[component] @ eps.unsqueeze(-1)).squeeze(-1)

    def config(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "max_iter": self.max_iter, "tol": self.tol, "reg_covar": self.reg_covar,
                "seed": self.seed}

    def state(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights, "means": self.means, "covariances": self.covariances}

    def load_state(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self.weights, self.means, self.covariances = tensors["weights"], tensors["means"], tensors["covariances"]
        self.fitted_components = len(self.weights)
