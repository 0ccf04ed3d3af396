r"""Joint negative log-likelihood by importance sampling, for the models that implement it.

    -\log p(X) \approx -\log \frac{1}{K} \sum_{k=1}^K \frac{p(z_k) \prod_m p(x_m | z_k)}{q(z_k | X)},
    \quad z_k \sim q(z | X)

The estimate is a stochastic upper bound on the true NLL that tightens (decreases in expectation)
as K grows (Burda et al. 2016). Each model computes it in ``compute_joint_nll``; this module batches
the data, seeds the draws and reports the mean per subject. For an incomplete subject a model that
supports missing modalities estimates the marginal likelihood of its observed modalities; a model
that does not is evaluated on the complete subjects only.

References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    https://arxiv.org/abs/1509.00519
"""

from __future__ import annotations

from typing import Any

import torch

from core.data.dataset import MultimodalBaseDataset, batches_of
from core.nn.base import evaluation_mode
from core.progress import CancelFn, ProgressFn, Steps
from core.seeding import seeded

__all__ = ["joint_nll", "supports_joint_nll"]


def supports_joint_nll(model: Any) -> bool:
    """True when the model's class overrides ``compute_joint_nll``."""
    from core.models.base import MultimodalVAE

    method = getattr(type(model), "compute_joint_nll", None)
    return method is not None and method is not MultimodalVAE.compute_joint_nll


def joint_nll(
    model: Any,
    dataset: MultimodalBaseDataset,
    *,
    K: int = 1000,
    batch_size_K: int = 100,
    batch_size: int = 32,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """``{"available", "nll", "n_samples", "K", "reason"}``; ``nll`` is the mean over subjects (nats)."""
    if K < 1:
        raise ValueError(f"K must be at least 1, got {K}.")
    if not supports_joint_nll(model):
        return {"available": False, "reason": f"{type(model).__name__} does not implement compute_joint_nll.", "K": K}
    complete = torch.stack([dataset.masks[m] for m in model.modalities]).all(0)
    if getattr(model, "supports_incomplete_data", True):
        index = list(range(len(dataset)))
        note = ""
    else:
        index = torch.nonzero(complete).flatten().tolist()
        note = f"{type(model).__name__} needs every modality: {len(index)} complete subjects of {len(dataset)} used."
    if not index:
        return {"available": False, "reason": "No subject to evaluate (the model needs complete subjects).", "K": K}
    steps = Steps((len(index) + batch_size - 1) // batch_size, progress, cancel, "likelihood")
    total = 0.0
    with evaluation_mode(model):
        with seeded(seed, model.device), torch.no_grad():
            for _, batch in batches_of(dataset, index, batch_size):
                steps.check()
                total += float(model.compute_joint_nll(batch, K=K, batch_size_K=min(batch_size_K, K)))
                steps.advance("importance-sampled NLL")
    return {"available": True, "nll": total / len(index), "n_samples": len(index), "K": K, "reason": note}
