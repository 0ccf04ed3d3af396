"""Imputation: fill in each subject's missing modalities from the ones it has, with uncertainty.

For a subject with observed modalities S and missing ones T, the model encodes q(z | x_S) and decodes
every m in T. With N = 1 it decodes the posterior mean (the best single guess; the uncertainty map is
zero). With N > 1 it draws N latent samples: the synthesized volume is the mean of the N decodings and
the uncertainty map their voxel-wise standard deviation. Subjects are grouped by
missingness pattern so each group is one batched ``predict`` call.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data.sources import DataConfig, load_data
from core.models.base import MultimodalVAE, load_bundle
from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress
from core.runs import load_run_config
from core.training.trainer import select_device

__all__ = ["Imputation", "predict_with_uncertainty", "impute_subjects", "to_grid", "impute_run"]


@dataclass
class Imputation:
    """Synthesized volumes in model space: ``mean[subject][modality]`` and ``std[subject][modality]``."""

    mean: dict[str, dict[str, np.ndarray]]
    std: dict[str, dict[str, np.ndarray]]
    conditioning: dict[str, list[str]]


@torch.no_grad()
def predict_with_uncertainty(
    model: MultimodalVAE, batch: Any, conditioning: list[str], targets: list[str], n_samples: int = 1
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{m: (mean, std)}``, each ``(B, *shape)`` float32, for a batch whose subjects all have ``conditioning``.

    The rule of the module docstring: N = 1 decodes the posterior mean (std zero), N > 1 draws samples.
    """
    if n_samples < 1:
        raise ValueError(f"The number of samples must be at least 1, got {n_samples}.")
    out = model.predict(batch, cond_mod=list(conditioning), gen_mod=list(targets), N=n_samples, return_mean=n_samples == 1)
    result = {}
    for m in targets:
        samples = (out[m] if n_samples > 1 else out[m].unsqueeze(0)).float()  # (N, B, *shape)
        result[m] = (samples.mean(0).cpu().numpy(), samples.std(0, unbiased=False).cpu().numpy())
    return result


@torch.no_grad()
def impute_subjects(
    model: MultimodalVAE,
    dataset: Any,
    n_samples: int = 1,
    subjects: list[str] | None = None,
    targets: list[str] | None = None,
    batch_size: int = 4,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Imputation:
    """Synthesize the missing modalities (or ``targets``, hiding them) of ``subjects`` (default: all).

    ``targets`` given: those modalities are generated for every chosen subject from its *other*
    observed modalities, even where they exist (leave-one-out checks).
    """
    if n_samples < 1:
        raise ValueError(f"The number of samples must be at least 1, got {n_samples}.")
    index = {s: i for i, s in enumerate(dataset.ids)}
    chosen = subjects if subjects is not None else list(dataset.ids)
    unknown = [s for s in chosen if s not in index]
    if unknown:
        raise KeyError(f"Subjects {unknown[:5]} are not in the dataset.")
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = defaultdict(list)
    for subject in chosen:
        i = index[subject]
        observed = [m for m in model.modalities if bool(dataset.masks[m][i])]
        wanted = targets if targets is not None else [m for m in model.modalities if m not in observed]
        condition = tuple(m for m in observed if m not in wanted)
        if not wanted:
            continue
        if not condition:
            raise ValueError(f"Subject {subject} has no observed modality left to condition on for {wanted}.")
        groups[(condition, tuple(wanted))].append(i)
    result = Imputation(mean={}, std={}, conditioning={})
    total = sum(len(v) for v in groups.values())
    done = 0
    for (condition, wanted), members in groups.items():
        for start in range(0, len(members), batch_size):
            raise_if_cancelled(cancel, "imputation")
            chunk = members[start : start + batch_size]
            batch = _collate(dataset, chunk)
            predicted = predict_with_uncertainty(model, batch, list(condition), list(wanted), n_samples)
            for m, (mean, std) in predicted.items():
                for j, i in enumerate(chunk):
                    subject = dataset.ids[i]
                    result.mean.setdefault(subject, {})[m] = mean[j].astype(np.float32)
                    result.std.setdefault(subject, {})[m] = std[j].astype(np.float32)
                    result.conditioning[subject] = list(condition)
            done += len(chunk)
            report_progress(progress, done, total, f"{len(chunk)} subjects from {'+'.join(condition)}")
    return result


def _collate(dataset: Any, indices: list[int]) -> Any:
    from core.data.dataset import collate_multimodal

    return collate_multimodal([dataset[i] for i in indices])


def to_grid(volume: np.ndarray, record: Any) -> np.ndarray:
    """A model-space array ``(C, *spatial)`` on the subject's model grid ``(X, Y, Z)`` (2D slices regain their axis)."""
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim >= 3 and array.shape[0] == 1:
        array = array[0]
    return array.reshape(record.grid.shape)


def impute_run(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_samples: int = 1,
    uncertainty: bool = False,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[Any]:
    """Fill every subject's missing modalities in ``data`` with a run's final model; write NIfTI + sidecars.

    ``data`` is prepared exactly as the run's training data was (same preprocessing settings), and each
    volume is written on that subject's original grid (see :mod:`core.export`).
    """
    from core.export import Provenance, export_cohort

    run_dir = Path(run_dir)
    config = load_run_config(run_dir / "config.yaml")
    model = load_bundle(run_dir / "final_model", map_location=select_device(device))
    # The run pinned its preprocessing (grid, modalities, normalisation) when it trained: reuse it, so a
    # modality the new cohort lacks entirely is kept as all-missing and gets imputed.
    preprocessing = {**config.data.preprocessing, "modalities": list(model.modalities)}
    data_config = DataConfig(source=str(data), preprocessing=preprocessing)
    loaded = load_data(data_config, cancel=cancel)
    lacking = [m for m in model.modalities if m not in loaded.dataset.modalities]
    if lacking:
        raise ValueError(f"The run's model needs modalities {lacking}, which {data} does not have.")
    imputation = impute_subjects(model, loaded.dataset, n_samples=n_samples, progress=progress, cancel=cancel)
    for maps in (imputation.mean, imputation.std):
        for subject, volumes in maps.items():
            for m, volume in volumes.items():
                volumes[m] = to_grid(volume, loaded.records[subject])
    provenance = Provenance(model=model.name, run=str(run_dir.resolve()), n_samples=n_samples, checkpoint="final_model")
    return export_cohort(
        imputation.mean,
        loaded.records,
        out_dir,
        provenance=provenance,
        uncertainty=imputation.std if uncertainty else None,
        progress=progress,
        cancel=cancel,
    )
