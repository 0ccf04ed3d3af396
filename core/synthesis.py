"""Synthesis for one subject at a time, leave-one-out checks, and exports, as the Synthesize page uses them.

For a subject, a set of conditioning modalities ``C`` (a subset of those it has) and ``N`` samples,
every other modality ``m`` of the model is generated from ``q(z | x_C)``:

* ``N = 1``: the decoded posterior mean, ``E[x_m | E[z | x_C]]`` (deterministic; the uncertainty map is 0);
* ``N > 1``: the mean over ``N`` posterior samples ``z_k ~ q(z | x_C)`` of their decodings, with the
  voxel-wise standard deviation over the ``N`` decodings as the uncertainty map.

Where the subject has ``m`` (always in a leave-one-out check: ``m`` hidden, ``C`` = the subject's other
modalities), the synthesized volume is scored against the real one over its observed voxels with the
metrics of :mod:`core.metrics` (MSE, PSNR, SSIM; PSNR and SSIM with the data range of ``m`` over the
run's training subjects), and so is the **mean-image baseline**: the voxel-wise mean of ``m`` over the
training subjects (:class:`core.metrics.MeanImputer`). A model that does not beat the mean image has
learned nothing about that subject that a population average does not know.

Everything here is in model space (the preprocessed grid); :func:`export_volume` and
:func:`export_missing` map volumes back onto the subject's source grid through :mod:`core.export`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data.dataset import IncompleteDataset, MultimodalBaseDataset
from core.impute import impute_subjects, predict_with_uncertainty, to_grid
from core.metrics._common import batches_of, seeded, spatial_dims
from core.metrics.baselines import MeanImputer
from core.metrics.errors import mse, psnr
from core.metrics.imputation import data_ranges
from core.metrics.ssim import ssim
from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress

__all__ = [
    "SynthesisError",
    "SynthesisContext",
    "ModalitySynthesis",
    "SubjectSynthesis",
    "compare",
    "synthesize_subject",
    "leave_one_out",
    "leave_one_out_table",
    "write_metrics_csv",
    "METRIC_COLUMNS",
    "impute_missing",
    "export_volume",
    "export_missing",
]

#: Columns of :func:`leave_one_out_table` rows and of the metrics CSV.
METRIC_COLUMNS = ["subject", "split", "modality", "conditioning", "n_samples", "mse", "psnr", "ssim",
                  "mean_image_mse", "mean_image_psnr", "mean_image_ssim", "beats_mean_image"]


class SynthesisError(ValueError):
    """A synthesis cannot be made as asked (unknown subject, conditioning on a modality it lacks...)."""


def _materialize(dataset: Any, indices: Sequence[int]) -> MultimodalBaseDataset:
    if isinstance(dataset, MultimodalBaseDataset):
        return dataset.subset(list(indices))
    _, batch = next(batches_of(dataset, list(indices), max(1, len(indices))))
    return IncompleteDataset(batch.data, batch.masks, ids=batch.ids, observation_masks=batch.get("observation_masks") or {},
                             allow_unobserved_modalities=True)


@dataclass
class SynthesisContext:
    """A model and its cohort, with the baseline and data ranges fitted on the run's training subjects.

    Args:
        model: a trained :class:`~core.models.MultimodalVAE`.
        dataset: the cohort, prepared as the run's training data was.
        train_ids: the run's training subjects (``split.json``); all subjects when None.
        records: the cohort's :class:`~core.data.preprocessing.CohortRecords` (for exports).
        run_dir: the run folder (written to export sidecars).
        split: subject -> "train"/"validation"/"test", for the metrics table.
    """

    model: Any
    dataset: Any
    train_ids: Sequence[str] | None = None
    records: Any = None
    run_dir: str | None = None
    split: dict[str, str] = field(default_factory=dict)
    mean_imputer: MeanImputer = field(init=False)
    ranges: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {str(s): i for i, s in enumerate(self.dataset.ids)}
        lacking = [m for m in self.model.modalities if m not in self.dataset.masks]
        if lacking:
            raise SynthesisError(f"The data lacks the model's modalities {lacking}.")
        wanted = [s for s in (self.train_ids or self.dataset.ids) if s in self.index]
        if not wanted:
            raise SynthesisError("None of the run's training subjects is in the data; the mean-image baseline needs them.")
        train = _materialize(self.dataset, [self.index[s] for s in wanted])
        self.mean_imputer = MeanImputer().fit(train)
        self.ranges = data_ranges(train)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, loaded: Any, model: Any = None, device: str = "cpu") -> SynthesisContext:
        """The context of a run folder and its prepared data (:class:`~core.data.sources.LoadedData`)."""
        run_dir = Path(run_dir)
        if model is None:
            from core.models.base import load_bundle

            bundle = run_dir / "final_model"
            if not (bundle / "model_config.json").is_file():
                raise FileNotFoundError(f"{bundle} does not exist: the run has no final model yet (train or resume it first).")
            model = load_bundle(bundle, map_location=device)
        model.eval()
        split: dict[str, str] = {}
        train_ids = None
        if (run_dir / "split.json").is_file():
            parts = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))
            split = {s: name for name in ("train", "validation", "test") for s in parts.get(name, [])}
            train_ids = parts.get("train")
        return cls(model, loaded.dataset, train_ids, getattr(loaded, "records", None), str(run_dir), split)

    @property
    def modalities(self) -> list[str]:
        return list(self.model.modalities)

    def observed(self, subject: str) -> list[str]:
        """The model's modalities ``subject`` has."""
        i = self._position(subject)
        return [m for m in self.modalities if bool(self.dataset.masks[m][i])]

    def missing(self, subject: str) -> list[str]:
        return [m for m in self.modalities if m not in self.observed(subject)]

    def _position(self, subject: str) -> int:
        if subject not in self.index:
            raise SynthesisError(f"Subject {subject} is not in the data.")
        return self.index[subject]

    def sample(self, subject: str) -> Any:
        return next(batches_of(self.dataset, [self._position(subject)], 1))[1]


@dataclass
class ModalitySynthesis:
    """One generated modality of one subject (model space, per-sample shape ``(C, *spatial)``).

    ``real`` and ``observed`` (its observed voxels) exist where the subject has the modality; then
    ``metrics`` and ``baseline`` hold MSE, PSNR and SSIM of the synthesis and of the mean image.
    """

    modality: str
    mean: np.ndarray
    std: np.ndarray
    real: np.ndarray | None = None
    observed: np.ndarray | None = None
    mean_image: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)

    @property
    def difference(self) -> np.ndarray | None:
        """Synthesized minus real (None without a real volume)."""
        return None if self.real is None else self.mean - self.real

    @property
    def beats_mean_image(self) -> bool | None:
        if not self.metrics or not self.baseline:
            return None
        return self.metrics["mse"] < self.baseline["mse"]


@dataclass
class SubjectSynthesis:
    """Every modality generated for one subject from ``conditioning`` with ``n_samples`` samples."""

    subject: str
    conditioning: list[str]
    n_samples: int
    results: dict[str, ModalitySynthesis]
    hidden: str | None = None  # the modality hidden in a leave-one-out check


def compare(real: np.ndarray | torch.Tensor, predicted: np.ndarray | torch.Tensor, data_range: float,
            observed: np.ndarray | torch.Tensor | None = None) -> dict[str, float]:
    """MSE, PSNR and SSIM (images and volumes) of one prediction, over the observed voxels (core metrics)."""
    x = torch.as_tensor(np.asarray(real), dtype=torch.float32)[None]
    x_hat = torch.as_tensor(np.asarray(predicted), dtype=torch.float32)[None]
    obs = None if observed is None else torch.as_tensor(np.asarray(observed), dtype=torch.bool)[None]
    out = {"mse": float(mse(x, x_hat, obs)[0])}
    if spatial_dims(x.shape[1:]):
        out["psnr"] = float(psnr(x, x_hat, data_range, obs)[0])
        out["ssim"] = float(ssim(x, x_hat, data_range, obs)[0])
    return out


def synthesize_subject(ctx: SynthesisContext, subject: str, conditioning: Sequence[str] | None = None,
                       n_samples: int = 1, seed: int = 0, hidden: str | None = None) -> SubjectSynthesis:
    """Generate every modality of ``subject`` outside ``conditioning`` (default: all it has) and score
    those it has against the real volumes and the mean image (see the module docstring)."""
    observed = ctx.observed(subject)
    conditioning = [m for m in ctx.modalities if m in (observed if conditioning is None else conditioning)]
    lacking = [m for m in conditioning if m not in observed]
    if lacking:
        raise SynthesisError(f"Subject {subject} has no {', '.join(lacking)} to condition on; it has {', '.join(observed) or 'nothing'}.")
    if not conditioning:
        raise SynthesisError(f"Choose at least one of the modalities subject {subject} has ({', '.join(observed)}) to condition on.")
    targets = [m for m in ctx.modalities if m not in conditioning]
    if not targets:
        raise SynthesisError("Every modality is a conditioning modality; leave at least one out to generate it.")
    batch = ctx.sample(subject)
    with seeded(seed, ctx.model.device):
        predicted = predict_with_uncertainty(ctx.model, batch, conditioning, targets, n_samples)
    results = {}
    for m in targets:
        mean, std = predicted[m][0][0], predicted[m][1][0]
        item = ModalitySynthesis(m, mean.astype(np.float32), std.astype(np.float32))
        if m in ctx.mean_imputer.means:
            item.mean_image = ctx.mean_imputer.predict(m, 1)[0].numpy()
        if m in observed:
            item.real = batch.data[m][0].float().numpy()
            obs = (batch.get("observation_masks") or {}).get(m)
            item.observed = obs[0].numpy() if obs is not None else None
            item.metrics = compare(item.real, item.mean, ctx.ranges[m], item.observed)
            if item.mean_image is not None:
                item.baseline = compare(item.real, item.mean_image, ctx.ranges[m], item.observed)
        results[m] = item
    return SubjectSynthesis(subject, conditioning, n_samples, results, hidden)


def leave_one_out(ctx: SynthesisContext, subject: str, modality: str, n_samples: int = 1, seed: int = 0) -> SubjectSynthesis:
    """Hide ``modality`` (which ``subject`` has), synthesize it from the subject's other modalities and score it."""
    observed = ctx.observed(subject)
    if modality not in observed:
        raise SynthesisError(f"Subject {subject} has no {modality} to hide; leave-one-out needs a modality it has ({', '.join(observed)}).")
    others = [m for m in observed if m != modality]
    if not others:
        raise SynthesisError(f"Subject {subject} has only {modality}; nothing is left to synthesize it from.")
    return synthesize_subject(ctx, subject, others, n_samples, seed, hidden=modality)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def leave_one_out_table(ctx: SynthesisContext, subjects: Sequence[str] | None = None, n_samples: int = 1, seed: int = 0,
                        batch_size: int = 8, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                        ) -> list[dict[str, Any]]:
    """One row per (subject, modality it has): the modality hidden and synthesized from the subject's
    other modalities, scored against the real volume beside the mean image (:data:`METRIC_COLUMNS`)."""
    chosen = list(subjects if subjects is not None else ctx.dataset.ids)
    plan: dict[tuple[tuple[str, ...], str], list[str]] = {}
    for s in chosen:
        observed = ctx.observed(s)
        if len(observed) < 2:
            continue
        for m in observed:
            plan.setdefault((tuple(x for x in observed if x != m), m), []).append(s)
    steps = [(cond, m, members[k : k + batch_size]) for (cond, m), members in plan.items()
             for k in range(0, len(members), batch_size)]
    rows: list[dict[str, Any]] = []
    with seeded(seed, ctx.model.device):
        for step, (cond, m, members) in enumerate(steps):
            raise_if_cancelled(cancel, "leave-one-out metrics")
            _, batch = next(batches_of(ctx.dataset, [ctx.index[s] for s in members], len(members)))
            mean, _ = predict_with_uncertainty(ctx.model, batch, cond, [m], n_samples)[m]
            obs = (batch.get("observation_masks") or {}).get(m)
            for j, s in enumerate(members):
                real = batch.data[m][j].float().numpy()
                observed = obs[j].numpy() if obs is not None else None
                model_scores = compare(real, mean[j], ctx.ranges[m], observed)
                base = compare(real, ctx.mean_imputer.predict(m, 1)[0].numpy(), ctx.ranges[m], observed) \
                    if m in ctx.mean_imputer.means else {}
                rows.append({
                    "subject": s, "split": ctx.split.get(s, ""), "modality": m, "conditioning": "+".join(cond),
                    "n_samples": n_samples,
                    **{k: _finite(model_scores.get(k)) for k in ("mse", "psnr", "ssim")},
                    **{f"mean_image_{k}": _finite(base.get(k)) for k in ("mse", "psnr", "ssim")},
                    "beats_mean_image": (model_scores["mse"] < base["mse"]) if base else None,
                })
            report_progress(progress, step + 1, len(steps), f"{m} from {'+'.join(cond)}")
    order = {s: i for i, s in enumerate(chosen)}
    rows.sort(key=lambda r: (order[r["subject"]], ctx.modalities.index(r["modality"])))
    return rows


def write_metrics_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write :func:`leave_one_out_table` rows as CSV (atomically); empty cells for undefined values."""
    from core.training.serialization import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- cohort imputation
def impute_missing(ctx: SynthesisContext, subjects: Sequence[str] | None = None, n_samples: int = 1, seed: int = 0,
                   batch_size: int = 4, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                   ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]], dict[str, list[str]]]:
    """``(mean, std, conditioning)`` for every missing modality of ``subjects`` (default: every subject
    that lacks one), each generated from all the modalities the subject has (:func:`core.impute.impute_subjects`)."""
    chosen = [s for s in (subjects if subjects is not None else ctx.dataset.ids) if ctx.observed(s)]
    with seeded(seed, ctx.model.device):
        result = impute_subjects(ctx.model, ctx.dataset, n_samples, subjects=chosen, batch_size=batch_size,
                                 progress=progress, cancel=cancel)
    return result.mean, result.std, result.conditioning


def _provenance(ctx: SynthesisContext, conditioning: Sequence[str] | None, n_samples: int, extra: Mapping[str, Any] | None = None) -> Any:
    from core.export import Provenance

    return Provenance(model=ctx.model.name, run=str(Path(ctx.run_dir).resolve()) if ctx.run_dir else None,
                      conditioning_modalities=list(conditioning) if conditioning is not None else None,
                      n_samples=int(n_samples), checkpoint="final_model", extra=dict(extra or {}))


def export_volume(ctx: SynthesisContext, synthesis: SubjectSynthesis, modality: str, path: str | os.PathLike,
                  uncertainty: bool = False, overwrite: bool = False) -> Any:
    """Write one synthesized modality of ``synthesis`` as NIfTI on the subject's source grid, with its sidecar
    (and ``<name>_std.nii.gz`` with ``uncertainty``); returns the :class:`core.export.ExportResult`."""
    from core.export import ExportError, write_synthesized

    if ctx.records is None or synthesis.subject not in ctx.records:
        raise ExportError(f"No preprocessing record for subject {synthesis.subject}; the source geometry is unknown.")
    record = ctx.records[synthesis.subject]
    item = synthesis.results[modality]
    extra = {"leave_one_out": synthesis.hidden} if synthesis.hidden else {}
    return write_synthesized(
        to_grid(item.mean, record), record, modality, path,
        provenance=_provenance(ctx, synthesis.conditioning, synthesis.n_samples, extra),
        uncertainty=to_grid(item.std, record) if uncertainty else None,
        records=ctx.records if hasattr(ctx.records, "intensity_reference") else None,
        overwrite=overwrite,
    )


def export_missing(ctx: SynthesisContext, out_dir: str | os.PathLike, n_samples: int = 1, uncertainty: bool = False,
                   subjects: Sequence[str] | None = None, seed: int = 0, overwrite: bool = False,
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> list[Any]:
    """Synthesize every missing modality of every subject (or ``subjects``) and export them all into
    ``out_dir`` (:func:`core.export.export_cohort`: staged, so a cancelled or failed batch leaves nothing)."""
    from core.export import export_cohort

    if ctx.records is None:
        raise SynthesisError("The cohort's preprocessing records are needed to export on the source grids.")

    def imputing(done: int, total: int, message: str = "") -> None:
        report_progress(progress, done, 2 * total, f"synthesizing: {message}")

    means, stds, conditioning = impute_missing(ctx, subjects, n_samples, seed, progress=imputing, cancel=cancel)
    if not means:
        return []
    n_volumes = sum(len(v) for v in means.values())

    def writing(done: int, total: int, message: str = "") -> None:
        report_progress(progress, n_volumes + done, 2 * n_volumes, f"writing: {message}")

    grid = {s: {m: to_grid(v, ctx.records[s]) for m, v in mods.items()} for s, mods in means.items()}
    grid_std = {s: {m: to_grid(v, ctx.records[s]) for m, v in mods.items()} for s, mods in stds.items()} if uncertainty else None
    return export_cohort(grid, ctx.records, out_dir, provenance=_provenance(ctx, None, n_samples), uncertainty=grid_std,
                         overwrite=overwrite, progress=writing, cancel=cancel)
