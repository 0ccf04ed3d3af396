"""One call that runs every metric a model supports on a split, with its settings in one config.

Sections (each can be switched off): ``imputation`` (errors beside the baselines), ``coherence``
(needs class labels), ``likelihood`` (models that implement ``compute_joint_nll``), ``latent``
(needs class labels). A section that cannot run is listed under ``skipped`` with the reason; it never
fails the whole evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

from pydantic import Field
from pydantic.dataclasses import dataclass

from core.config import CONFIG_DICT, advanced, config_to_dict
from core.data.dataset import MultimodalBaseDataset
from core.metrics._common import MetricError, labels_of
from core.metrics.coherence import coherence_metrics, train_classifiers
from core.metrics.imputation import data_ranges, imputation_metrics
from core.metrics.latent import latent_metrics
from core.metrics.likelihood import joint_nll
from core.progress import CancelFn, ProgressFn

__all__ = ["EvaluationConfig", "evaluate_model", "SECTIONS"]

Section = Literal["imputation", "coherence", "likelihood", "latent"]
SECTIONS: tuple[str, ...] = get_args(Section)


@dataclass(config=CONFIG_DICT)
class EvaluationConfig:
    """What to measure and how (every metric is seeded, so the same config gives the same numbers)."""

    sections: list[Section] = Field(default_factory=lambda: list(SECTIONS), description=f"Metrics to compute, among {', '.join(SECTIONS)}.")
    subsets: list[list[str]] | None = Field(
        None, **advanced("Conditioning subsets (default: all, or singletons/leave-one-out/all beyond 4 modalities)."))
    include_reconstruction: bool = Field(True, description="Also report self-reconstruction (target inside the subset).")
    use_mean: bool = Field(True, **advanced("Decode the posterior mean instead of one posterior sample for errors."))
    n_neighbors: int = Field(5, ge=1, le=100, description="Neighbours of the k-NN baseline.")
    feature_size: int = Field(8, ge=1, le=64, **advanced("Voxels per axis after pooling, for k-NN search and classifiers."))
    label: str | None = Field(None, description="Which label to use for coherence and latent metrics (when there are several).")
    n_joint: int = Field(1000, ge=0, description="Prior (or sampler) samples for the joint coherence.")
    nll_K: int = Field(1000, ge=1, description="Importance samples per subject for the joint NLL.")
    nll_batch_size_K: int = Field(100, ge=1, **advanced("Importance samples per model call."))
    n_clusters: int | None = Field(None, ge=2, **advanced("k-means clusters (default: number of classes)."))
    n_runs: int = Field(10, ge=1, **advanced("Seeded k-means runs averaged."))
    batch_size: int = Field(32, ge=1, description="Subjects per model call.")
    seed: int = Field(0, ge=0, description="Seed of every random draw in the evaluation.")


def _section_progress(progress: ProgressFn | None, name: str) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda done, total, message="": progress(done, total, f"{name}: {message}")


def evaluate_model(
    model: Any,
    train: MultimodalBaseDataset,
    test: MultimodalBaseDataset,
    config: EvaluationConfig | None = None,
    *,
    classifiers: Mapping[str, Callable] | None = None,
    sampler: Any = None,
    ground_truth: MultimodalBaseDataset | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Every section of ``config`` on ``test``, with baselines and classifiers fitted on ``train``.

    ``ground_truth`` (complete data, e.g. the demo's) scores imputation of hidden modalities too.

    Returns a JSON-ready dict: ``imputation`` (rows), ``coherence``, ``likelihood``, ``latent``,
    ``skipped`` (section -> reason), ``seconds`` (per section), ``data_ranges`` and ``config``.
    """
    config = config or EvaluationConfig()
    report: dict[str, Any] = {"config": config_to_dict(config), "skipped": {}, "seconds": {},
                              "n_train": len(train), "n_test": len(test), "data_ranges": data_ranges(train)}
    has_labels = True
    try:
        labels_of(test, config.label)
        labels_of(train, config.label)
    except MetricError as error:
        has_labels = False
        label_reason = str(error)
    for section in config.sections:
        started = time.perf_counter()
        section_progress = _section_progress(progress, section)
        if section == "imputation":
            report["imputation"] = imputation_metrics(
                model, train, test, subsets=config.subsets, include_reconstruction=config.include_reconstruction,
                use_mean=config.use_mean, n_neighbors=config.n_neighbors, feature_size=config.feature_size,
                batch_size=config.batch_size, seed=config.seed, ground_truth=ground_truth, progress=section_progress,
                cancel=cancel,
            )
            report["imputation_targets"] = "ground truth (hidden modalities included)" if ground_truth is not None else "observed"
        elif section == "likelihood":
            result = joint_nll(model, test, K=config.nll_K, batch_size_K=config.nll_batch_size_K, batch_size=config.batch_size,
                               seed=config.seed, progress=section_progress, cancel=cancel)
            if result["available"]:
                report["likelihood"] = result
            else:
                report["skipped"]["likelihood"] = result["reason"]
        elif not has_labels:
            report["skipped"][section] = label_reason
        elif section == "coherence":
            try:
                used = classifiers if classifiers is not None else train_classifiers(train, config.label, config.feature_size, config.seed)
                report["coherence"] = coherence_metrics(
                    model, test, used, label=config.label, subsets=config.subsets, n_joint=config.n_joint, sampler=sampler,
                    batch_size=config.batch_size, seed=config.seed, progress=section_progress, cancel=cancel,
                )
                report["coherence"]["classifiers"] = "user" if classifiers is not None else "logistic regression on the training split"
            except MetricError as error:
                report["skipped"]["coherence"] = str(error)
        elif section == "latent":
            try:
                report["latent"] = latent_metrics(
                    model, train, test, label=config.label, n_clusters=config.n_clusters, n_runs=config.n_runs,
                    batch_size=config.batch_size, seed=config.seed, progress=section_progress, cancel=cancel,
                )
            except MetricError as error:
                report["skipped"]["latent"] = str(error)
        report["seconds"][section] = round(time.perf_counter() - started, 3)
    return report
