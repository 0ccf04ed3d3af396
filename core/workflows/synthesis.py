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

**Field of view.** Every synthesized volume and its uncertainty map are background (0) outside a field of
view: the subject's own observation mask of that modality, else the most common one of the run's training
subjects (:class:`core.workflows.impute.FieldsOfView`); exports say which in their sidecar.

**Verdict.** :func:`modality_verdicts` gives one plain-words verdict per modality from a leave-one-out pass
over *every* held-out subject that has it (the run's test subjects, or its validation subjects when no test
subject has the modality): each one's modality is hidden and synthesized from its other modalities (decoded
posterior mean) and compared with the mean image on the same voxels. A subject counts as better when the
synthesis has both the lower MSE and the higher SSIM (MSE alone for vectors). The modality **passes** when at
least :data:`PASS_FRACTION` (95 %) of those subjects are better, the goal the project set its models. The
verdict is cached in the run folder (``synthesis_verdicts.json``, valid while the final model's files are
unchanged) and written into every export's sidecar and NIfTI description.

Everything here is in model space (the preprocessed grid); :func:`export_volume` and
:func:`export_missing` map volumes back onto the subject's source grid through :mod:`core.workflows.export`.
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

from core.data.dataset import IncompleteDataset, MultimodalBaseDataset, batches_of, spatial_dims
from core.metrics.baselines import MeanImputer
from core.metrics.errors import mse, psnr
from core.metrics.imputation import data_ranges
from core.metrics.ssim import ssim
from core.progress import CancelFn, ProgressFn, raise_if_cancelled, report_progress
from core.seeding import seeded
from core.workflows.impute import (
    FieldOfView,
    FieldsOfView,
    Imputation,
    impute_subjects,
    own_field_of_view,
    predict_with_uncertainty,
    to_grid,
)

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
    "PASS_FRACTION",
    "Verdict",
    "beats_mean_image",
    "verdicts_from_rows",
    "modality_verdicts",
    "unchecked_verdicts",
    "stored_verdicts",
    "impute_missing",
    "export_volume",
    "export_missing",
]

#: Columns of :func:`leave_one_out_table` rows and of the metrics CSV.
METRIC_COLUMNS = ["subject", "split", "modality", "conditioning", "n_samples", "mse", "psnr", "ssim",
                  "mean_image_mse", "mean_image_psnr", "mean_image_ssim", "beats_mean_image"]


#: A modality passes the mean-image check when at least this share of its held-out subjects beat the mean image.
PASS_FRACTION = 0.95
VERDICT_CACHE = "synthesis_verdicts.json"
_VERDICT_RULE = {"pass_fraction": PASS_FRACTION, "better_on": ["mse", "ssim"], "n_samples": 1, "version": 1}


class SynthesisError(ValueError):
    """A synthesis cannot be made as asked (unknown subject, conditioning on a modality it lacks...)."""


def beats_mean_image(model: Mapping[str, float | None], baseline: Mapping[str, float | None]) -> bool | None:
    """Is the synthesis closer to the real volume than the mean image: lower MSE and, where defined, higher SSIM?"""
    if model.get("mse") is None or baseline.get("mse") is None:
        return None
    better = model["mse"] < baseline["mse"]
    if model.get("ssim") is not None and baseline.get("ssim") is not None:
        better = better and model["ssim"] > baseline["ssim"]
    return bool(better)


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
        records: the cohort's :class:`~core.data.preprocessing.records.CohortRecords` (for exports).
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
    fields_of_view: FieldsOfView = field(init=False)
    verdicts: dict[str, Verdict] | None = field(init=False, default=None)

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
        self.fields_of_view = FieldsOfView.fit(train)

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
    ``mean`` and ``std`` are 0 outside ``field_of_view`` (None: the modality is written whole).
    """

    modality: str
    mean: np.ndarray
    std: np.ndarray
    real: np.ndarray | None = None
    observed: np.ndarray | None = None
    mean_image: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    field_of_view: FieldOfView | None = None

    @property
    def difference(self) -> np.ndarray | None:
        """Synthesized minus real (None without a real volume)."""
        return None if self.real is None else self.mean - self.real

    @property
    def beats_mean_image(self) -> bool | None:
        return beats_mean_image(self.metrics, self.baseline)


@dataclass
class SubjectSynthesis:
    """Every modality generated for one subject from ``conditioning`` with ``n_samples`` samples."""

    subject: str
    conditioning: list[str]
    n_samples: int
    results: dict[str, ModalitySynthesis]
    hidden: str | None = None  # the modality hidden in a leave-one-out check
    not_generated: dict[str, str] = field(default_factory=dict)  # modality -> why the model cannot make it


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
    not_generated = {m: reason for m in targets if (reason := ctx.model.cannot_generate(conditioning, [m]))}
    targets = [m for m in targets if m not in not_generated]
    if not targets:
        raise SynthesisError(" ".join(dict.fromkeys(not_generated.values())))
    batch = ctx.sample(subject)
    with seeded(seed, ctx.model.device):
        predicted = predict_with_uncertainty(ctx.model, batch, conditioning, targets, n_samples)
    results = {}
    for m in targets:
        mean, std, fov = ctx.fields_of_view.apply(m, predicted[m][0][0], predicted[m][1][0], own_field_of_view(batch, m, 0))
        item = ModalitySynthesis(m, mean.astype(np.float32), std.astype(np.float32), field_of_view=fov)
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
    return SubjectSynthesis(subject, conditioning, n_samples, results, hidden, not_generated)


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
            mean, std = predict_with_uncertainty(ctx.model, batch, cond, [m], n_samples)[m]
            for j, s in enumerate(members):
                real = batch.data[m][j].float().numpy()
                observed = own_field_of_view(batch, m, j)
                synthesized = ctx.fields_of_view.apply(m, mean[j], std[j], observed)[0]
                model_scores = compare(real, synthesized, ctx.ranges[m], observed)
                base = compare(real, ctx.mean_imputer.predict(m, 1)[0].numpy(), ctx.ranges[m], observed) \
                    if m in ctx.mean_imputer.means else {}
                rows.append({
                    "subject": s, "split": ctx.split.get(s, ""), "modality": m, "conditioning": "+".join(cond),
                    "n_samples": n_samples,
                    **{k: _finite(model_scores.get(k)) for k in ("mse", "psnr", "ssim")},
                    **{f"mean_image_{k}": _finite(base.get(k)) for k in ("mse", "psnr", "ssim")},
                    "beats_mean_image": beats_mean_image(model_scores, base),
                })
            report_progress(progress, step + 1, len(steps), f"{m} from {'+'.join(cond)}")
    order = {s: i for i, s in enumerate(chosen)}
    rows.sort(key=lambda r: (order[r["subject"]], ctx.modalities.index(r["modality"])))
    return rows


def write_metrics_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write :func:`leave_one_out_table` rows as CSV (atomically); empty cells for undefined values."""
    from core.atomic import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- verdict
@dataclass(frozen=True)
class Verdict:
    """Does the model beat the training subjects' mean image at synthesizing ``modality``? (module docstring)

    ``passed`` None: it could not be checked (``reason`` says why). ``medians`` and ``mean_image_medians``
    hold the median MSE and SSIM over the ``n_subjects`` held-out ``split`` subjects.
    """

    modality: str
    passed: bool | None
    n_better: int = 0
    n_subjects: int = 0
    split: str = ""
    medians: dict[str, float | None] = field(default_factory=dict)
    mean_image_medians: dict[str, float | None] = field(default_factory=dict)
    reason: str = ""

    @property
    def _baseline(self) -> str:
        return "the average brain" if self.medians.get("ssim") is not None else "the training average"

    @property
    def _medians(self) -> str:
        key, label = ("ssim", "SSIM") if self.medians.get("ssim") is not None else ("mse", "MSE")
        ours, base = self.medians.get(key), self.mean_image_medians.get(key)
        return f"median {label} {ours:.2f} vs {base:.2f}" if ours is not None and base is not None else ""

    @property
    def text(self) -> str:
        """The verdict in plain words, e.g. "better than the average brain for 19 of 20 held-out test subjects
        (median SSIM 0.78 vs 0.52)" or "not better than the average brain: not for reading (...)"."""
        if self.passed is None:
            return f"not checked against {self._baseline}: {self.reason}"
        count = f"{self.n_better} of {self.n_subjects} held-out {self.split} subjects"
        medians = self._medians
        if self.passed:
            return f"better than {self._baseline} for {count}" + (f" ({medians})" if medians else "")
        return f"not better than {self._baseline}: not for reading (better for only {count}" + \
            (f"; {medians})" if medians else ")")

    @property
    def short(self) -> str:
        """A few words for the NIfTI ``descrip`` field (80 characters in all)."""
        if self.passed is None:
            return "unchecked vs mean image"
        return f"{'beats' if self.passed else 'NOT better than'} mean image {self.n_better}/{self.n_subjects}"

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "passed": self.passed, "text": self.text, "short": self.short,
                "n_better": self.n_better, "n_subjects": self.n_subjects, "split": self.split,
                "medians": dict(self.medians), "mean_image_medians": dict(self.mean_image_medians), "reason": self.reason,
                "rule": f"passes when the synthesis beats the training mean image (lower MSE and higher SSIM) on at least "
                        f"{PASS_FRACTION:.0%} of the held-out subjects, leave-one-out"}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Verdict:
        return cls(str(value["modality"]), value["passed"], int(value["n_better"]), int(value["n_subjects"]),
                   str(value["split"]), dict(value["medians"]), dict(value["mean_image_medians"]), str(value["reason"]))


def verdicts_from_rows(rows: Sequence[Mapping[str, Any]], modalities: Sequence[str]) -> dict[str, Verdict]:
    """Per modality, the verdict of :func:`leave_one_out_table` rows: the test subjects' rows, else the validation ones."""
    out = {}
    for m in modalities:
        mine = [r for r in rows if r["modality"] == m and r.get("beats_mean_image") is not None]
        split = next((name for name in ("test", "validation") if any(r["split"] == name for r in mine)), "")
        chosen = [r for r in mine if r["split"] == split] if split else []
        if not chosen:
            out[m] = Verdict(m, None, reason=f"no held-out (test or validation) subject has {m} and another modality "
                                             "to synthesize it from")
            continue

        def median(key: str, rows: list[Mapping[str, Any]] = chosen) -> float | None:
            values = [r[key] for r in rows if r.get(key) is not None]
            return float(np.median(values)) if values else None

        n_better = sum(bool(r["beats_mean_image"]) for r in chosen)
        out[m] = Verdict(m, n_better >= PASS_FRACTION * len(chosen), n_better, len(chosen), split,
                         {k: median(k) for k in ("mse", "ssim")}, {k: median(f"mean_image_{k}") for k in ("mse", "ssim")})
    return out


def _model_identity(run_dir: str | os.PathLike | None) -> list[list[Any]] | None:
    folder = Path(run_dir) / "final_model" if run_dir else None
    if folder is None or not folder.is_dir():
        return None
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir()) if p.is_file()]


def _read_verdict_cache(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(run_dir) / VERDICT_CACHE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        key = stored["key"]
        if key["rule"] != _VERDICT_RULE or key["model"] != _model_identity(run_dir):
            return None
        stored["parsed"] = {m: Verdict.from_dict(v) for m, v in stored["verdicts"].items()}
        return stored
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, unreadable, older or for another model: recomputed


def stored_verdicts(run_dir: str | os.PathLike) -> dict[str, Verdict] | None:
    """The verdicts cached in ``run_dir`` for its current final model, if any (exports of other cohorts reuse them)."""
    stored = _read_verdict_cache(run_dir)
    return None if stored is None else stored["parsed"]


def _held_out(ctx: SynthesisContext) -> list[str]:
    return [s for s in ctx.dataset.ids if ctx.split.get(s) in ("test", "validation")]


def modality_verdicts(ctx: SynthesisContext, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                      use_cache: bool = True) -> dict[str, Verdict]:
    """The verdict of every modality (module docstring), from the context, the run folder's cache or a fresh
    leave-one-out pass over the held-out subjects (then cached in both)."""
    if use_cache and ctx.verdicts is not None:
        return ctx.verdicts
    identity, subjects = _model_identity(ctx.run_dir), _held_out(ctx)
    key = {"rule": _VERDICT_RULE, "model": identity, "subjects": subjects, "modalities": ctx.modalities}
    cache = Path(ctx.run_dir) / VERDICT_CACHE if ctx.run_dir and identity is not None else None
    if use_cache and cache is not None:
        stored = _read_verdict_cache(ctx.run_dir)
        if stored is not None and stored["key"] == key:
            ctx.verdicts = stored["parsed"]
            return ctx.verdicts
    rows = leave_one_out_table(ctx, subjects, n_samples=1, progress=progress, cancel=cancel) if subjects else []
    ctx.verdicts = verdicts_from_rows(rows, ctx.modalities)
    if cache is not None:
        from core.atomic import atomic_write_text

        atomic_write_text(cache, json.dumps({"key": key, "verdicts": {m: v.to_dict() for m, v in ctx.verdicts.items()}},
                                            indent=2))
    return ctx.verdicts


def unchecked_verdicts(modalities: Sequence[str], reason: str) -> dict[str, Verdict]:
    """Verdicts that say the check was not made (and why), for exports made before it finished."""
    return {m: Verdict(m, None, reason=reason) for m in modalities}


# ---------------------------------------------------------------------------------------------- cohort imputation
def impute_missing(ctx: SynthesisContext, subjects: Sequence[str] | None = None, n_samples: int = 1, seed: int = 0,
                   batch_size: int = 4, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Imputation:
    """Every missing modality of ``subjects`` (default: every subject that lacks one), each generated from all the
    modalities the subject has and masked to its field of view (:func:`core.workflows.impute.impute_subjects`)."""
    chosen = [s for s in (subjects if subjects is not None else ctx.dataset.ids) if ctx.observed(s)]
    with seeded(seed, ctx.model.device):
        return impute_subjects(ctx.model, ctx.dataset, n_samples, subjects=chosen, batch_size=batch_size,
                               progress=progress, cancel=cancel, fields_of_view=ctx.fields_of_view)


def _provenance(ctx: SynthesisContext, conditioning: Sequence[str] | None, n_samples: int, extra: Mapping[str, Any] | None = None) -> Any:
    from core.workflows.export import Provenance

    return Provenance(model=ctx.model.name, run=str(Path(ctx.run_dir).resolve()) if ctx.run_dir else None,
                      conditioning_modalities=list(conditioning) if conditioning is not None else None,
                      n_samples=int(n_samples), checkpoint="final_model", extra=dict(extra or {}))


def export_volume(ctx: SynthesisContext, synthesis: SubjectSynthesis, modality: str, path: str | os.PathLike,
                  uncertainty: bool = False, overwrite: bool = False, verdicts: Mapping[str, Verdict] | None = None) -> Any:
    """Write one synthesized modality of ``synthesis`` as NIfTI on the subject's source grid, with its sidecar
    (and ``<name>_std.nii.gz`` with ``uncertainty``), its field of view and its verdict (``verdicts``, default
    :func:`modality_verdicts`); returns the :class:`core.workflows.export.ExportResult`."""
    from core.workflows.export import ExportError, write_synthesized

    if ctx.records is None or synthesis.subject not in ctx.records:
        raise ExportError(f"No preprocessing record for subject {synthesis.subject}; the source geometry is unknown.")
    record = ctx.records[synthesis.subject]
    item = synthesis.results[modality]
    extra = {"leave_one_out": synthesis.hidden} if synthesis.hidden else {}
    verdict = (verdicts if verdicts is not None else modality_verdicts(ctx)).get(modality)
    return write_synthesized(
        to_grid(item.mean, record), record, modality, path,
        provenance=_provenance(ctx, synthesis.conditioning, synthesis.n_samples, extra),
        uncertainty=to_grid(item.std, record) if uncertainty else None,
        records=ctx.records if hasattr(ctx.records, "intensity_reference") else None,
        overwrite=overwrite, field_of_view=item.field_of_view, verdict=verdict.to_dict() if verdict else None,
    )


def export_missing(ctx: SynthesisContext, out_dir: str | os.PathLike, n_samples: int = 1, uncertainty: bool = False,
                   subjects: Sequence[str] | None = None, seed: int = 0, overwrite: bool = False,
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                   verdicts: Mapping[str, Verdict] | None = None) -> list[Any]:
    """Synthesize every missing modality of every subject (or ``subjects``) and export them all into
    ``out_dir`` (:func:`core.workflows.export.export_cohort`: staged, so a cancelled or failed batch leaves nothing),
    each inside its field of view and with its modality's verdict (``verdicts``, default :func:`modality_verdicts`)."""
    from core.workflows.export import export_cohort

    if ctx.records is None:
        raise SynthesisError("The cohort's preprocessing records are needed to export on the source grids.")

    def imputing(done: int, total: int, message: str = "") -> None:
        report_progress(progress, done, 2 * total, f"synthesizing: {message}")

    if verdicts is None:
        verdicts = modality_verdicts(ctx, cancel=cancel)
    imputed = impute_missing(ctx, subjects, n_samples, seed, progress=imputing, cancel=cancel)
    if not imputed.mean:
        return []
    n_volumes = sum(len(v) for v in imputed.mean.values())

    def writing(done: int, total: int, message: str = "") -> None:
        report_progress(progress, n_volumes + done, 2 * n_volumes, f"writing: {message}")

    grid = {s: {m: to_grid(v, ctx.records[s]) for m, v in mods.items()} for s, mods in imputed.mean.items()}
    grid_std = {s: {m: to_grid(v, ctx.records[s]) for m, v in mods.items()} for s, mods in imputed.std.items()} \
        if uncertainty else None
    return export_cohort(grid, ctx.records, out_dir, provenance=_provenance(ctx, None, n_samples), uncertainty=grid_std,
                         overwrite=overwrite, progress=writing, cancel=cancel, fields_of_view=imputed.field_of_view,
                         verdicts={m: v.to_dict() for m, v in verdicts.items()})
