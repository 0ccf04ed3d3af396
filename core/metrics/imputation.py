"""Reconstruction and cross-modal imputation error, beside the mean and k-NN baselines.

For every conditioning subset S and target modality m, the test subjects that observe all of S and m
are encoded from S (posterior mean by default), m is decoded, and the error against the real m is
measured over its observed voxels. The same subjects get the training-mean and k-NN predictions, so
each row compares the three methods on exactly the same voxels. ``kind`` is ``reconstruction`` when
m is in S and ``imputation`` (cross-modal) when it is not.

Errors are computed per subject and averaged over subjects: MSE and MAE for every modality, plus
PSNR and SSIM (2D or 3D) for images and volumes, with the data range L = max - min of the observed
training voxels of m.

With simulated missingness (the demo cohort) a ``ground_truth`` dataset holding the complete data
can be given: the targets then come from it, so the modalities that were hidden from the model are
scored too (still only where the ground truth observes them, e.g. inside the ultrasound sector).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.data.dataset import DatasetOutput, MultimodalBaseDataset, batches_of, spatial_dims
from core.metrics._common import MetricError, resolve_subsets
from core.metrics.baselines import KNNImputer, MeanImputer
from core.metrics.errors import mae, mse, psnr
from core.metrics.ssim import ssim
from core.models import subset_name
from core.nn.base import evaluation_mode
from core.progress import CancelFn, ProgressFn, Steps
from core.seeding import seeded

__all__ = ["imputation_metrics", "data_ranges", "METHODS"]

METHODS = ("model", "train_mean", "knn")


def data_ranges(train: MultimodalBaseDataset) -> dict[str, float]:
    """max - min over the observed training voxels of each modality (1.0 when constant or unobserved)."""
    ranges = {}
    for m in train.modalities:
        x = train.data[m][train.masks[m]]
        observed = train.observation_masks.get(m)
        if observed is not None:
            x = x[observed[train.masks[m]]]
        span = float(x.max() - x.min()) if x.numel() else 0.0
        ranges[m] = span if span > 0 else 1.0
    return ranges


def _aligned(ground_truth: MultimodalBaseDataset, test: MultimodalBaseDataset) -> MultimodalBaseDataset:
    """The ground-truth subjects in the order of ``test``."""
    position = {subject: i for i, subject in enumerate(ground_truth.ids)}
    missing = [s for s in test.ids if s not in position]
    if missing:
        raise MetricError(f"The ground truth lacks test subjects {missing[:5]}; it must hold every subject of the split.")
    absent = [m for m in test.modalities if m not in ground_truth.modalities]
    if absent:
        raise MetricError(f"The ground truth lacks modalities {absent}.")
    return ground_truth.subset([position[s] for s in test.ids])


def _errors(x: torch.Tensor, x_hat: torch.Tensor, observed: torch.Tensor | None, data_range: float) -> dict[str, torch.Tensor]:
    out = {"mse": mse(x, x_hat, observed), "mae": mae(x, x_hat, observed)}
    if spatial_dims(x.shape[1:]):
        out["psnr"] = psnr(x, x_hat, data_range, observed)
        out["ssim"] = ssim(x, x_hat, data_range, observed)
    return out


def imputation_metrics(
    model: Any,
    train: MultimodalBaseDataset,
    test: MultimodalBaseDataset,
    *,
    subsets: Sequence[Sequence[str]] | None = None,
    include_reconstruction: bool = True,
    use_mean: bool = True,
    n_neighbors: int = 5,
    feature_size: int = 8,
    batch_size: int = 32,
    seed: int = 0,
    ground_truth: MultimodalBaseDataset | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[dict[str, Any]]:
    """One row per (subset, target, metric) with the model's and both baselines' mean error.

    Args:
        model: a trained :class:`~core.models.MultimodalVAE` (on the device it should run on).
        train: the training split (baselines and data ranges are fitted on it, never on ``test``).
        test: the split to evaluate.
        subsets: conditioning subsets (default :func:`default_subsets`).
        include_reconstruction: also report targets inside the subset (self-reconstruction).
        use_mean: decode the posterior mean rather than one posterior sample.
        n_neighbors, feature_size: k-NN baseline settings.
        batch_size: subjects per model call.
        seed: seeds the posterior samples (only used when ``use_mean`` is False).
        ground_truth: optional complete data holding every test subject (matched by id); targets are
            read from it instead of ``test``, so hidden modalities are scored as well.
        progress, cancel: see :mod:`core.progress`.

    Returns:
        Rows ``{"subset", "target", "kind", "metric", "n_samples", "model", "train_mean", "knn"}``;
        a baseline that cannot be computed (no training subject with S and m) is None.
    """
    modalities = list(model.modalities)
    subsets = resolve_subsets(subsets, modalities)
    ranges = data_ranges(train)
    mean_imputer = MeanImputer().fit(train)
    knn = KNNImputer(n_neighbors, feature_size).fit(train)
    device = model.device
    reference = _aligned(ground_truth, test) if ground_truth is not None else test

    plan = []
    for s in subsets:
        targets = [m for m in modalities if (m not in s) or include_reconstruction]
        observes_s = torch.stack([test.masks[m] for m in s]).all(0)
        index = torch.nonzero(observes_s).flatten().tolist()
        if targets and index:
            plan.append((s, targets, index))
    steps = Steps(sum((len(idx) + batch_size - 1) // batch_size for _, _, idx in plan), progress, cancel, "imputation metrics")
    # per (subset, target, metric, method): list of per-sample values
    values: dict[tuple[tuple[str, ...], str], dict[str, dict[str, list[torch.Tensor]]]] = {}
    knn_missing: set[tuple[tuple[str, ...], str]] = set()
    with evaluation_mode(model):
        with seeded(seed, device), torch.no_grad():
            for s, targets, index in plan:
                for chunk, batch in batches_of(test, index, batch_size):
                    steps.check()
                    predicted = model.predict(batch, cond_mod=list(s), gen_mod=targets, N=1, return_mean=use_mean)
                    truth = batch if reference is test else next(batches_of(reference, chunk, len(chunk)))[1]
                    for m in targets:
                        keep = truth.masks[m]
                        if not bool(keep.any()):
                            continue
                        x = truth.data[m][keep]
                        observed = (truth.get("observation_masks") or {}).get(m)
                        observed = observed[keep] if observed is not None else None
                        conditioning = DatasetOutput(
                            data={k: batch.data[k][keep] for k in s},
                            observation_masks={k: v[keep] for k, v in (batch.get("observation_masks") or {}).items() if k in s},
                        )
                        predictions = {
                            "model": predicted[m][keep.to(predicted[m].device)].detach().cpu(),
                            "train_mean": mean_imputer.predict(m, int(keep.sum())),
                            "knn": knn.predict(conditioning, s, m),
                        }
                        cell = values.setdefault((s, m), {})
                        for method, x_hat in predictions.items():
                            if x_hat is None:
                                knn_missing.add((s, m))
                                continue
                            for metric, per_sample in _errors(x, x_hat, observed, ranges[m]).items():
                                cell.setdefault(metric, {}).setdefault(method, []).append(per_sample)
                    steps.advance(f"{subset_name(s)} -> {', '.join(targets)}")

    rows = []
    for (s, m), metrics in values.items():
        for metric, methods in metrics.items():
            row: dict[str, Any] = {
                "subset": subset_name(s),
                "target": m,
                "kind": "reconstruction" if m in s else "imputation",
                "metric": metric,
                "n_samples": 0,
            }
            for method in METHODS:
                if method not in methods:
                    row[method] = None
                    continue
                per_sample = torch.cat(methods[method])
                per_sample = per_sample[~torch.isnan(per_sample)]
                row[method] = float(per_sample.mean()) if per_sample.numel() else None
                if method == "model":
                    row["n_samples"] = int(per_sample.numel())
            rows.append(row)
    return rows
