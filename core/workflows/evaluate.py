"""``mmvae evaluate RUN [DATA] --out report.json|csv``: how good is a trained run, beside baselines.

The run's ``final_model`` is evaluated on its own split of the data: baselines, classifiers and
latent samplers are fitted on the run's training subjects (``split.json``) and every metric is
computed on the test subjects (``--split validation`` for the validation subjects). DATA defaults to
the run's own data source; pointing it at another cohort evaluates the subjects of that cohort that
the run never saw (the run's training subjects must still be in it, for the baselines).

A joint sampler other than the prior (``--sampler gmm`` or ``maf``) is loaded from
``<run>/samplers/<name>/`` or fitted on the training subjects and saved there.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from core.atomic import atomic_write_text
from core.data.dataset import IncompleteDataset, MultimodalBaseDataset, collate_multimodal
from core.metrics import SECTIONS, EvaluationConfig, MetricError, evaluate_model
from core.models.base import load_bundle
from core.progress import CancelFn, ProgressFn, ProgressReporter
from core.samplers import GaussianMixtureSampler, LatentSampler, MAFSampler, load_sampler, sampler_folder
from core.training.trainer import select_device

__all__ = ["evaluate_run", "write_report", "report_rows", "add_arguments", "run_from_args", "SAMPLER_CHOICES"]

SAMPLER_CHOICES = ("prior", "gmm", "maf")


def _materialize(dataset: Dataset, indices: list[int]) -> MultimodalBaseDataset:
    """The subjects ``indices`` as an in-memory dataset (a lazy HDF5 cache is read once here)."""
    if isinstance(dataset, MultimodalBaseDataset):
        return dataset.subset(indices)
    batch = collate_multimodal([dataset[i] for i in indices])
    return IncompleteDataset(batch.data, batch.masks, labels=batch.get("labels"), ids=batch.ids,
                             observation_masks=batch.get("observation_masks") or {}, allow_unobserved_modalities=True)


def _load_dataset(run_dir: Path, data_source: Any, progress: ProgressFn | None, cancel: CancelFn | None) -> tuple[Dataset, str]:
    if isinstance(data_source, Dataset):
        return data_source, "<dataset>"
    from core.data.sources import DataConfig, load_data

    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        from core.workflows.runs import load_run_config

        data_config = load_run_config(config_path).data
        if data_source is not None:
            data_config = data_config.for_another_cohort(data_source)
    elif data_source is not None:
        data_config = DataConfig(source=str(data_source))
    else:
        raise FileNotFoundError(f"{config_path} is missing, so the run's data source is unknown; pass DATA explicitly.")
    loaded = load_data(data_config, progress=progress, cancel=cancel)
    return loaded.dataset, str(loaded.source)


def _split(run_dir: Path, dataset: Dataset, split: str) -> tuple[list[int], list[int], bool]:
    """Indices of the run's training subjects and of the evaluated subjects in ``dataset``."""
    position = {subject: i for i, subject in enumerate(dataset.ids)}
    split_path = run_dir / "split.json"
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path} is missing: the run's training subjects are needed to fit the baselines.")
    parts = json.loads(split_path.read_text(encoding="utf-8"))
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got '{split}'.")
    train = [position[s] for s in parts.get("train", []) if s in position]
    if not train:
        raise MetricError(
            f"None of the run's {len(parts.get('train', []))} training subjects is in the data; baselines and classifiers "
            "are fitted on them. Evaluate on the cohort the run was trained on (or one that contains it)."
        )
    chosen = [position[s] for s in parts.get(split, []) if s in position]
    if chosen:
        return train, chosen, False
    seen = {s for key in ("train", "validation", "test") for s in parts.get(key, [])}
    unseen = [i for s, i in position.items() if s not in seen]
    if not unseen:
        raise MetricError(f"The run's {split} split is empty and the data holds no subject the run has not seen; nothing to evaluate.")
    return train, sorted(unseen), True


def _sampler(name: str, run_dir: Path, model: Any, train: MultimodalBaseDataset, seed: int, batch_size: int,
             progress: ProgressFn | None, cancel: CancelFn | None) -> LatentSampler | None:
    if name == "prior":
        return None
    if name not in SAMPLER_CHOICES:
        raise ValueError(f"sampler must be one of {SAMPLER_CHOICES}, got '{name}'.")
    folder = sampler_folder(run_dir, name)
    if (folder / "sampler.json").is_file():
        return load_sampler(folder).to(model.device)
    sampler = GaussianMixtureSampler(seed=seed) if name == "gmm" else MAFSampler(seed=seed)
    sampler.fit(model, train, batch_size=batch_size, progress=progress, cancel=cancel)
    sampler.save(folder, {"fitted_on": "train split", "n_train": len(train)})
    return sampler


def evaluate_run(
    run_dir: str | os.PathLike[str],
    data_source: str | os.PathLike[str] | Dataset | None = None,
    *,
    split: str = "test",
    config: EvaluationConfig | None = None,
    sampler: str = "prior",
    classifiers: dict[str, Any] | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Evaluate a run's final model; returns the JSON-ready report of :func:`core.metrics.evaluate_model`
    plus ``run``, ``model``, ``data``, ``split`` and ``sampler``."""
    run_dir = Path(run_dir)
    bundle = run_dir / "final_model"
    if not (bundle / "model_config.json").is_file():
        raise FileNotFoundError(f"{bundle} does not exist: the run has no final model yet (train or resume it first).")
    config = config or EvaluationConfig()
    model = load_bundle(bundle, map_location=select_device(device))
    model.eval()
    dataset, source = _load_dataset(run_dir, data_source, progress, cancel)
    missing = [m for m in model.modalities if m not in (dataset.masks if hasattr(dataset, "masks") else {})]
    if missing:
        raise MetricError(f"The data lacks the model's modalities {missing}.")
    train_index, test_index, external = _split(run_dir, dataset, split)
    train, test = _materialize(dataset, train_index), _materialize(dataset, test_index)
    keep = list(model.modalities)
    if train.modalities != keep:
        train, test = (IncompleteDataset({m: d.data[m] for m in keep}, {m: d.masks[m] for m in keep}, labels=d.labels, ids=d.ids,
                                         observation_masks={m: v for m, v in d.observation_masks.items() if m in keep},
                                         allow_unobserved_modalities=True) for d in (train, test))
    chosen_sampler = _sampler(sampler, run_dir, model, train, config.seed, config.batch_size, progress, cancel)
    report = evaluate_model(model, train, test, config, classifiers=classifiers, sampler=chosen_sampler, progress=progress, cancel=cancel)
    report.update(run=str(run_dir), model=model.name, data=source, sampler=sampler, device=str(model.device),
                  split={"name": split, "n_train": len(train), "n_test": len(test), "external_subjects": external})
    return report


# ---------------------------------------------------------------------------------------------- output
def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report as tidy rows: section, subset, target, kind, metric, method, value, n_samples."""
    rows: list[dict[str, Any]] = []

    def add(section: str, metric: str, method: str, value: Any, subset: str = "", target: str = "", kind: str = "", n: Any = "") -> None:
        rows.append({"section": section, "subset": subset, "target": target, "kind": kind, "metric": metric, "method": method,
                     "value": value, "n_samples": n})

    for row in report.get("imputation", []):
        for method in ("model", "train_mean", "knn"):
            add("imputation", row["metric"], method, row[method], row["subset"], row["target"], row["kind"], row["n_samples"])
    coherence = report.get("coherence")
    if coherence:
        for target, scores in coherence["ceiling"].items():
            for metric in ("balanced_accuracy", "accuracy"):
                add("coherence", metric, "classifier_on_real_data", scores[metric], target=target, kind="ceiling", n=scores["n_samples"])
        for row in coherence["cross"]:
            for metric in ("balanced_accuracy", "accuracy"):
                add("coherence", metric, "model", row[metric], row["subset"], row["target"], "cross", row["n_samples"])
        if coherence.get("joint"):
            joint = coherence["joint"]
            add("coherence", "joint_coherence", joint["source"], joint["coherence"], kind="joint", n=joint["n_samples"])
    likelihood = report.get("likelihood")
    if likelihood:
        add("likelihood", f"joint_nll_K{likelihood['K']}", "model", likelihood["nll"], n=likelihood["n_samples"])
    latent = report.get("latent")
    if latent:
        for part in ("clustering", "linear_probe"):
            for metric in ("balanced_accuracy", "accuracy"):
                add("latent", metric, part, latent[part][metric], n=latent["n_test"])
    for section, reason in report.get("skipped", {}).items():
        add(section, "skipped", "", reason)
    return rows


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report as JSON (everything) or CSV (:func:`report_rows`), chosen by the extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"--out must end in .json or .csv, got '{path.name}'.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        atomic_write_text(path, json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["section", "subset", "target", "kind", "metric", "method", "value", "n_samples"])
        writer.writeheader()
        writer.writerows(_json_safe(report_rows(report)))
        atomic_write_text(path, buffer.getvalue())
    return path


def _summary(report: dict[str, Any]) -> str:
    lines = [f"{report['model']} on {report['split']['n_test']} {report['split']['name']} subjects "
             f"(baselines fitted on {report['split']['n_train']} training subjects)"]
    for row in report.get("imputation", []):
        if row["metric"] in ("mse", "ssim"):
            knn = f"{row['knn']:.4g}" if row["knn"] is not None else "n/a"
            lines.append(f"  {row['subset']:>16} -> {row['target']:<8} {row['metric']:<5} model {row['model']:.4g}  "
                         f"mean {row['train_mean']:.4g}  knn {knn}  (n={row['n_samples']})")
    coherence = report.get("coherence")
    if coherence:
        for size, stats in coherence["mean_by_subset_size"].items():
            lines.append(f"  coherence from {size} modalities: {stats['mean']:.3f} (balanced accuracy)")
        if coherence.get("joint"):
            lines.append(f"  joint coherence ({coherence['joint']['source']}): {coherence['joint']['coherence']:.3f}")
    if report.get("likelihood"):
        lines.append(f"  joint NLL (K={report['likelihood']['K']}): {report['likelihood']['nll']:.4g} nats per subject")
    if report.get("latent"):
        lines.append(f"  latent: k-means {report['latent']['clustering']['balanced_accuracy']:.3f}, "
                     f"linear probe {report['latent']['linear_probe']['balanced_accuracy']:.3f} (balanced accuracy)")
    for section, reason in report.get("skipped", {}).items():
        lines.append(f"  {section}: skipped ({reason})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mmvae evaluate``."""
    parser.add_argument("run", help="run folder (its final_model, config.yaml and split.json are used)")
    parser.add_argument("data", nargs="?", default=None, help="cohort folder, manifest CSV or HDF5 cache (default: the run's data)")
    parser.add_argument("--out", required=True, help="report file: .json (everything) or .csv (one row per number)")
    parser.add_argument("--split", default="test", choices=["test", "validation", "train"], help="subjects to evaluate (default test)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), help="metrics to compute")
    parser.add_argument("--sampler", default="prior", choices=list(SAMPLER_CHOICES), help="latent source for joint coherence")
    parser.add_argument("--label", default=None, help="label column for coherence and latent metrics")
    parser.add_argument("--nll-k", type=int, default=1000, help="importance samples per subject for the joint NLL")
    parser.add_argument("--n-joint", type=int, default=1000, help="samples for the joint coherence")
    parser.add_argument("--neighbors", type=int, default=5, help="k of the k-NN baseline")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``mmvae evaluate``; returns the exit code (0)."""
    config = EvaluationConfig(sections=args.sections, label=args.label, nll_K=args.nll_k, n_joint=args.n_joint,
                              n_neighbors=args.neighbors, batch_size=args.batch_size, seed=args.seed)
    with ProgressReporter(description="evaluating", bar=not args.quiet) as progress:
        report = evaluate_run(args.run, args.data, split=args.split, config=config, sampler=args.sampler, device=args.device,
                              progress=progress)
    path = write_report(report, args.out)
    print(_summary(report))
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":  # python -m core.workflows.evaluate RUN [DATA] --out FILE
    import sys

    _parser = argparse.ArgumentParser(prog="mmvae evaluate", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(run_from_args(_parser.parse_args()))
