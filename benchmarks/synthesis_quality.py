"""Cross-modal synthesis quality of every registered model against three baselines, on the demo phantom.

Data: the 3D MR/US phantom (core.data.demo) with its ground truth: lesion and brain masks and the
ultrasound field of view. Training subjects lose modalities at random (``--missing mcar``: each
modality 30 % of the time) or depending on the lesion (``mnar_label``: subjects without a lesion
mostly have no ultrasound); held-out test subjects keep their true volumes. Split 70/15/15 by subject.

Tasks: T2 <- T1, FLAIR <- T1+T2, T2 <- FLAIR+T1, US <- T1+T2+FLAIR, T1 <- US. Each target is hidden and
synthesized from the conditioning volumes of every test subject, then scored by
``core.metrics.synthesis_scores`` on the hidden voxels that carry signal: the brain for MR, the
part of the subject's own field of view for ultrasound that lies inside the field of view the product
writes synthesized ultrasound in (the training cohort's majority one: a subject without ultrasound has no
field of view of its own). Every method, baselines included, is scored on those same voxels; the share of
the subject's own field of view they cover is reported as ``fov_coverage``. Voxels of synthesized
ultrasound outside every subject's field of view that are not background are counted; there should be none.

Methods, each in a fresh process (so its peak memory is its own):
* every registered model, with the preset the workbench offers for synthesis ("Synthesis"; "Standard"
  when a model has none yet, the model's defaults when it has no presets), trained with core's Trainer;
  synthesis decodes the posterior mean (``predict_with_uncertainty`` with one sample);
  a task a model cannot serve (a CVAE generates only its main modality) is reported as not served;
* ``mean_image``: the training subjects' mean volume (MeanImputer);
* ``voxel_ridge``: voxel-wise ridge regression from the conditioning modalities (VoxelRegressionImputer);
* ``unet``: one supervised resize-conv U-Net per task (benchmarks/_unet.py), trained on the training
  subjects that have the task's modalities, with the models' epoch and time budget.

Per method, task and score: median and IQR over the test subjects, and the fraction of subjects on which
the method beats each baseline (SSIM higher, MSE lower). Also training seconds, peak RSS, the goals of
issue 10 for each model, and a PNG panel of one lesion slice per task (truth, each model, each baseline).

    python benchmarks/synthesis_quality.py                       # 200 subjects at 40^3, CPU
    python benchmarks/synthesis_quality.py --device cuda         # 96x112x96 on a GPU
    python benchmarks/synthesis_quality.py --quick               # smoke run: 24 subjects at 16^3, 1 epoch
    python benchmarks/synthesis_quality.py --resume              # after an interruption: skip the finished methods
    python benchmarks/synthesis_quality.py --missing mnar_label  # writes synthesis_quality_mnar_label.json

One run split across two cores (same settings in every call; the last one merges and writes the JSON):

    python benchmarks/synthesis_quality.py --models --baselines unet --keep --time-budget-s 1200 --unet-epochs 40 --out /tmp/a.json &
    python benchmarks/synthesis_quality.py --baselines mean_image voxel_ridge --models MHVAE MVAE --keep --time-budget-s 1200 \
        --unet-epochs 40 --out /tmp/b.json
    python benchmarks/synthesis_quality.py --models MHVAE MVAE --resume --time-budget-s 1200 --unet-epochs 40

Writes ``benchmarks/results/synthesis_quality.json`` (``_mnar_label`` for that variant) and the ``.png`` beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `benchmarks` importable
from benchmarks._unet import predict_unet, train_unet  # noqa: E402
from core.data import DatasetOutput, IncompleteDataset, MultimodalBaseDataset, split_by_subject  # noqa: E402
from core.data.demo import DemoCohort, DemoSpec, MissingSpec, make_demo_cohort  # noqa: E402
from core.metrics import MeanImputer, VoxelRegressionImputer, outside_fov_fraction, synthesis_scores  # noqa: E402
from core.models import available, build_model, get_model_class  # noqa: E402
from core.presets import SYNTHESIS_PRESET, load_presets  # noqa: E402
from core.training import Callback, Trainer, TrainerConfig, select_device  # noqa: E402
from core.training.health import latent_kl_per_dimension  # noqa: E402
from core.workflows.impute import FieldsOfView, predict_with_uncertainty  # noqa: E402

LOAD_AT_START = round(os.getloadavg()[0], 2)  # other work on the machine skews the timings
RESULTS = Path(__file__).resolve().parent / "results"
TASKS: dict[str, tuple[tuple[str, ...], str]] = {
    "T2<-T1": (("T1",), "T2"),
    "FLAIR<-T1+T2": (("T1", "T2"), "FLAIR"),
    "T2<-FLAIR+T1": (("FLAIR", "T1"), "T2"),
    "US<-T1+T2+FLAIR": (("T1", "T2", "FLAIR"), "US"),
    "T1<-US": (("US",), "T1"),
}
BASELINES = ("mean_image", "voxel_ridge", "unet")
MISSING = {
    "mcar": MissingSpec(kind="mcar", rates={m: 0.3 for m in ("T1", "T2", "FLAIR", "US")}),
    "mnar_label": MissingSpec(
        kind="mnar_label",
        rates={m: 0.3 for m in ("T1", "T2", "FLAIR", "US")},
        rates_no_lesion={"T1": 0.3, "T2": 0.3, "FLAIR": 0.3, "US": 0.9},
    ),
}
QUICK = {"n_subjects": 24, "shape": (16, 16, 16), "epochs": 1}
TRAINING_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainerConfig))
DEFAULT_UNET_EPOCHS = 50  # when no model runs to take the budget from


@dataclass(frozen=True)
class Settings:
    """Everything a method's process needs to rebuild the same data and train the same way."""

    n_subjects: int
    shape: tuple[int, ...]
    missing: str
    seed: int
    tasks: tuple[str, ...]
    epochs: int | None
    time_budget_s: float | None
    device: str
    unet_epochs: int
    overrides: tuple[tuple[str, Any], ...] = ()  # (model or training parameter, value) on top of every preset: ablations


@dataclass(frozen=True)
class Data:
    train: IncompleteDataset
    validation: IncompleteDataset
    truth: MultimodalBaseDataset  # the test subjects, complete
    lesion: torch.Tensor  # (n_test, 1, *grid) bool
    brain: torch.Tensor
    any_fov: torch.Tensor  # (1, *grid): the union of every subject's field of view
    written_fov: np.ndarray  # (*grid) bool: where the product writes synthesized US (cohort majority)
    panel_subject: int  # index into the test subjects


def _cohort_cache(spec: DemoSpec) -> Path:
    """Where the parent process leaves the generated cohort for the methods' processes (safetensors)."""
    key = f"v2_{spec.n_subjects}_{'x'.join(map(str, spec.shape))}_{spec.seed}_{spec.missing.kind}"
    return Path(tempfile.gettempdir()) / f"mmvae_synthesis_quality_{key}.safetensors"


def _load_or_make_cohort(spec: DemoSpec) -> DemoCohort:
    """The demo cohort, generated once per run of the benchmark (a few minutes at 200 x 40^3) and read
    back by every method's process; the ids are regenerated from the spec."""
    path = _cohort_cache(spec)
    if path.is_file():
        t = load_file(str(path))
        names = list(spec.modalities)
        ids = [f"sub-{i + 1:03d}" for i in range(spec.n_subjects)]
        observation = {"US": t["fov"]} if "fov" in t else {}
        labels = {k: t[f"label.{k}"] for k in ("lesion_present", "lesion_volume_ml")}
        data = {m: t[f"truth.{m}"] for m in names}  # complete: IncompleteDataset zeros the missing ones itself
        masks = {m: t[f"mask.{m}"] for m in names}
        return DemoCohort(
            IncompleteDataset(data, masks, labels=labels, ids=ids, observation_masks=observation),
            MultimodalBaseDataset(data, labels=labels, ids=ids, observation_masks=observation),
            t["lesion"],
            t["brain"],
        )
    cohort = make_demo_cohort(spec)
    # The ground truth, not cohort.dataset.data: that has the missing volumes zeroed, and the test
    # subjects' hidden targets are scored against these tensors.
    tensors = {f"truth.{m}": x.contiguous() for m, x in cohort.ground_truth.data.items()}
    tensors.update({f"mask.{m}": x.contiguous() for m, x in cohort.dataset.masks.items()})
    tensors.update({f"label.{k}": torch.as_tensor(v).contiguous() for k, v in cohort.dataset.labels.items()})
    tensors.update(lesion=cohort.lesion.contiguous(), brain=cohort.brain.contiguous())
    if "US" in cohort.dataset.observation_masks:
        tensors["fov"] = cohort.dataset.observation_masks["US"].contiguous()
    save_file(tensors, str(path))
    return cohort


def _finished_methods(settings: Settings) -> Path:
    """Where each method's raw result is kept until the run ends, so ``--resume`` can skip it (same settings only)."""
    key = hashlib.sha1(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"mmvae_synthesis_quality_{key}"


def demo_spec(settings: Settings) -> DemoSpec:
    return DemoSpec(n_subjects=settings.n_subjects, shape=settings.shape, seed=settings.seed, missing=MISSING[settings.missing])


def prepare(settings: Settings) -> Data:
    """The cohort, its subject split, and the test subjects' ground truth (same in every process)."""
    cohort: DemoCohort = _load_or_make_cohort(demo_spec(settings))
    train, validation, test = split_by_subject(cohort.dataset, (0.7, 0.15, 0.15), seed=settings.seed)
    position = {subject: i for i, subject in enumerate(cohort.dataset.ids)}
    test_index = [position[s] for s in test.ids]
    truth = cohort.ground_truth.subset(test_index)
    lesion_voxels = cohort.lesion[test_index].flatten(1).sum(1)
    return Data(
        train=train,
        validation=validation,
        truth=truth,
        lesion=cohort.lesion[test_index],
        brain=cohort.brain[test_index],
        any_fov=cohort.ground_truth.observation_masks["US"].any(0),
        written_fov=np.asarray(FieldsOfView.fit(train).cohort["US"].mask, bool).reshape(cohort.lesion.shape[2:]),
        panel_subject=int(lesion_voxels.argmax()),
    )


def hidden_target_batch(truth: MultimodalBaseDataset, target: str, index: list[int]) -> DatasetOutput:
    """A batch of test subjects with ``target`` removed (zeros, flagged missing): nothing can leak."""
    part = truth.subset(index)
    return DatasetOutput(
        data={m: torch.zeros_like(x) if m == target else x for m, x in part.data.items()},
        masks={m: torch.full((len(index),), m != target) for m in part.modalities},
        labels=None,
        ids=part.ids,
        observation_masks=part.observation_masks,
    )


# ---------------------------------------------------------------------------------------------- methods
class TimeBudget(Callback):
    """Stops training after the epoch during which ``seconds`` ran out."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def on_train_start(self, trainer: Trainer) -> None:
        self.start = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, record: Any) -> None:
        if time.monotonic() - self.start > self.seconds:
            trainer.should_stop = True
            trainer.stop_reason = f"time budget of {self.seconds:g} s spent"


def model_preset(name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(preset name, model parameters, training settings): Synthesis, else Standard, else the defaults."""
    presets = {p.name: p for p in load_presets(name)}
    for choice in (SYNTHESIS_PRESET, "Standard"):
        if choice in presets:
            return choice, dict(presets[choice]["model"]), dict(presets[choice]["training"])
    return "model defaults", {}, {}


def complete_subjects(dataset: IncompleteDataset) -> IncompleteDataset:
    keep = torch.stack(list(dataset.masks.values())).all(0)
    return dataset.subset(torch.nonzero(keep).flatten().tolist())


def unserved_reason(model: Any, task: str) -> str | None:
    """Why ``model`` cannot synthesize the task's target from its conditioning (None when it can)."""
    cond, target = TASKS[task]
    return model.cannot_generate(list(cond), [target])


def run_model(name: str, settings: Settings, data: Data) -> tuple[dict[str, Any], Any]:
    """Train ``name`` with its synthesis preset; returns (facts, predict(task, index) function)."""
    preset, params, training = model_preset(name)
    if settings.epochs is not None:
        training["num_epochs"] = settings.epochs
    for key, value in settings.overrides:
        (training if key in TRAINING_FIELDS else params)[key] = value
    training = {**training, "device": settings.device, "seed": settings.seed}
    train, validation = data.train, data.validation
    if not get_model_class(name).supports_incomplete_data:
        train, validation = complete_subjects(train), complete_subjects(validation)
    torch.manual_seed(settings.seed)
    model = build_model(name, {"n_modalities": len(train.modalities), "input_dims": train.input_dims, **params})
    callbacks = [TimeBudget(settings.time_budget_s)] if settings.time_budget_s else []
    result = Trainer(model, train, validation, TrainerConfig(**training), callbacks=callbacks).train()
    facts = {
        "kind": "model", "preset": preset, "model_parameters": params, "training": training,
        "training_subjects": len(train), "status": result.status, "message": result.message,
        "epochs": result.epochs_completed, "training_seconds": round(result.seconds, 1),
        "not_served": {task: reason for task in settings.tasks if (reason := unserved_reason(model, task))},
        # what the trainer's collapse check reads: a level near 0 nats here carries nothing about the input
        "last_epoch_kl_per_dimension": latent_kl_per_dimension(result.history[-1].train) if result.history else {},
    }  # fmt: skip

    # The product's field-of-view rule: the hidden target has no field of view of its own, so synthesized
    # ultrasound is written inside the training cohort's majority field of view, as the workbench writes it.
    fields_of_view = FieldsOfView.fit(data.train)

    def predict(task: str, index: list[int]) -> np.ndarray:
        cond, target = TASKS[task]
        batch = hidden_target_batch(data.truth, target, index)
        mean, std = predict_with_uncertainty(model, batch, list(cond), [target], n_samples=1)[target]
        return np.stack([fields_of_view.apply(target, mean[j], std[j], own=None)[0] for j in range(len(index))])

    return facts, predict


def run_baseline(name: str, settings: Settings, data: Data) -> tuple[dict[str, Any], Any]:
    """Fit a baseline; returns (facts, predict(task, index) function)."""
    start = time.monotonic()
    facts: dict[str, Any] = {"kind": "baseline"}
    if name == "mean_image":
        mean = MeanImputer().fit(data.train)
        facts["training_seconds"] = round(time.monotonic() - start, 1)
        return facts, lambda task, index: mean.predict(TASKS[task][1], len(index)).numpy()
    if name == "voxel_ridge":
        ridge = VoxelRegressionImputer().fit(data.train)
        for task in settings.tasks:  # fit every task now, so the fitting time is counted
            cond, target = TASKS[task]
            ridge.predict(hidden_target_batch(data.truth, target, [0]), cond, target)
        facts["training_seconds"] = round(time.monotonic() - start, 1)

        def predict_ridge(task: str, index: list[int]) -> np.ndarray:
            cond, target = TASKS[task]
            out = ridge.predict(hidden_target_batch(data.truth, target, index), cond, target)
            if out is None:
                raise RuntimeError(f"No training subject observes {cond} and {target}; the ridge baseline is undefined.")
            return out.numpy()

        return facts, predict_ridge
    if name == "unet":
        device = select_device(settings.device)
        nets, per_task = {}, {}
        for task in settings.tasks:
            cond, target = TASKS[task]
            usable = data.train.masks[target].clone()
            for m in cond:
                usable &= data.train.masks[m]
            index = torch.nonzero(usable).flatten()
            inputs = torch.cat([data.train.data[m][index] for m in cond], dim=1)
            observed = data.train.observation_masks.get(target)
            observed = torch.ones_like(data.train.data[target][index], dtype=torch.bool) if observed is None else observed[index]
            nets[task], per_task[task] = train_unet(
                inputs, data.train.data[target][index], observed, settings.unet_epochs, settings.time_budget_s,
                device=device, seed=settings.seed,
            )
            per_task[task]["training_subjects"] = len(index)
        facts.update(training_seconds=round(time.monotonic() - start, 1), epochs=settings.unet_epochs, per_task=per_task)

        def predict_net(task: str, index: list[int]) -> np.ndarray:
            cond, _ = TASKS[task]
            inputs = torch.cat([data.truth.data[m][index] for m in cond], dim=1)
            return predict_unet(nets[task], inputs).numpy()

        return facts, predict_net
    raise ValueError(f"Unknown baseline '{name}'; choose among {BASELINES}.")


def panel_slice(data: Data) -> int:
    """The axial slice through the most lesion voxels of the panel subject."""
    lesion = data.lesion[data.panel_subject, 0]
    return int(lesion.flatten(0, 1).sum(0).argmax())


def evaluate_method(name: str, settings: Settings, data: Data | None = None) -> dict[str, Any]:
    """Train one method and score it on every task and test subject (``data``: prepared already)."""
    torch.manual_seed(settings.seed)
    data = data or prepare(settings)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run = run_baseline if name in BASELINES else run_model
    facts, predict = run(name, settings, data)
    k = panel_slice(data)
    scores: dict[str, dict[str, list[float]]] = {}
    outside: dict[str, dict[str, float]] = {}
    panel: dict[str, list[list[float]]] = {}
    for task in settings.tasks:
        if task in facts.get("not_served", {}):
            continue
        cond, target = TASKS[task]
        per_subject: dict[str, list[float]] = {}
        own, union, coverage = [], [], []
        for start in range(0, len(data.truth), 4):
            index = list(range(start, min(start + 4, len(data.truth))))
            predicted = predict(task, index).reshape(len(index), *data.truth.data[target].shape[1:])
            for j, i in enumerate(index):
                pred, truth = predicted[j, 0], data.truth.data[target][i, 0].numpy()
                if target == "US":
                    own_fov = data.truth.observation_masks["US"][i, 0].numpy()
                    region = own_fov & data.written_fov
                    coverage.append(float(region.sum() / max(1, own_fov.sum())))
                else:
                    region = data.brain[i, 0].numpy()
                for metric, value in synthesis_scores(truth, pred, region, data.lesion[i, 0].numpy()).items():
                    per_subject.setdefault(metric, []).append(value)
                if target == "US":
                    own.append(outside_fov_fraction(pred, own_fov))
                    union.append(outside_fov_fraction(pred, data.any_fov[0].numpy()))
                if i == data.panel_subject:
                    panel[task] = np.round(pred[:, :, k], 4).tolist()
        scores[task] = per_subject
        if own:
            outside[task] = {
                "own_fov_max": max(own), "own_fov_median": float(np.median(own)), "any_fov_max": max(union),
                "fov_coverage_median": round(float(np.median(coverage)), 4), "fov_coverage_min": round(min(coverage), 4),
            }  # fmt: skip
    facts["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    facts["rss_after_data_mb"] = round(rss_data, 1)
    if torch.cuda.is_available():
        facts["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return {**facts, "scores": scores, "outside_fov_nonbackground": outside, "panel": panel}


def evaluate_or_report(name: str, settings: Settings, data: Data | None = None) -> dict[str, Any]:
    """:func:`evaluate_method`, with a failure recorded (and its traceback printed) instead of raised,
    so one broken method does not lose the others' results."""
    try:
        return evaluate_method(name, settings, data)
    except Exception as error:
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}


def _child(name: str, settings: Settings, queue: mp.Queue) -> None:
    queue.put(evaluate_or_report(name, settings))


def evaluate_in_fresh_process(name: str, settings: Settings) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(name, settings, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


# ---------------------------------------------------------------------------------------------- summary
HIGHER_IS_BETTER = {"ssim": True, "mse": False}


def _quartiles(values: list[float]) -> dict[str, float | int | None]:
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"median": None, "q25": None, "q75": None, "iqr": None, "n": 0}
    q25, median, q75 = (float(q) for q in np.percentile(finite, [25, 50, 75]))
    return {"median": round(median, 4), "q25": round(q25, 4), "q75": round(q75, 4), "iqr": round(q75 - q25, 4), "n": int(finite.size)}


def _fraction_beating(mine: list[float], theirs: list[float], higher: bool) -> float | None:
    pairs = [(a, b) for a, b in zip(mine, theirs, strict=True) if math.isfinite(a) and math.isfinite(b)]
    wins = sum((a > b) if higher else (a < b) for a, b in pairs)
    return round(wins / len(pairs), 3) if pairs else None


def _finite(value: Any) -> Any:
    """The payload with NaN and infinities as null, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(raw: dict[str, dict[str, Any]], tasks: tuple[str, ...]) -> dict[str, Any]:
    """Medians, IQRs and paired win fractions per method and task (raw per-subject scores dropped)."""
    methods = {}
    for name, result in raw.items():
        if "error" in result:
            methods[name] = result
            continue
        summary = {k: v for k, v in result.items() if k not in ("scores", "panel")}
        summary["tasks"] = {}
        for task in tasks:
            if task not in result["scores"]:
                summary["tasks"][task] = {"not_served": result["not_served"][task]}
                continue
            scores = result["scores"][task]
            beats = {
                baseline: {
                    metric: _fraction_beating(scores[metric], raw[baseline]["scores"][task][metric], higher)
                    for metric, higher in HIGHER_IS_BETTER.items()
                }
                for baseline in BASELINES
                if baseline != name and baseline in raw and "error" not in raw[baseline]
            }
            summary["tasks"][task] = {"metrics": {metric: _quartiles(values) for metric, values in scores.items()}, "beats": beats}
        methods[name] = summary
    return methods


def goals(methods: dict[str, Any], tasks: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Issue 10's targets per model: True/False per check (None where a baseline or task is missing)."""
    def median(method: str, task: str, metric: str) -> float | None:
        return methods.get(method, {}).get("tasks", {}).get(task, {}).get("metrics", {}).get(metric, {}).get("median")

    out = {}
    for name, summary in methods.items():
        if summary.get("kind") != "model":
            continue
        checks: dict[str, Any] = {}
        for task in tasks:
            target = TASKS[task][1]
            entry = summary["tasks"][task]
            if "not_served" in entry:
                checks[task] = {"not_served": entry["not_served"]}
                continue
            beats_mean = entry["beats"].get("mean_image")
            r2, ridge_r2, mean_r2 = median(name, task, "r2"), median("voxel_ridge", task, "r2"), median("mean_image", task, "r2")
            ssim, unet_ssim = median(name, task, "ssim"), median("unet", task, "ssim")
            check = {
                "beats_mean_image_on_95pct_ssim_and_mse": None if beats_mean is None else bool(min(beats_mean.values()) >= 0.95),
                "r2_minus_voxel_ridge": None if r2 is None or ridge_r2 is None else round(r2 - ridge_r2, 4),
            }
            if target != "US":
                check["ssim_within_0.05_of_unet"] = None if ssim is None or unet_ssim is None else bool(ssim >= unet_ssim - 0.05)
                ratio_error, dice = median(name, task, "lesion_ratio_error"), median(name, task, "lesion_dice")
                check["lesion_ratio_within_25pct"] = None if ratio_error is None else bool(ratio_error <= 0.25)
                check["lesion_dice_at_least_0.5"] = None if dice is None else bool(dice >= 0.5)
            else:
                outside = summary["outside_fov_nonbackground"].get(task, {})
                check["nothing_outside_any_fov"] = bool(outside.get("any_fov_max", 1.0) == 0.0)
                check["above_mean_image_and_ridge_r2"] = None if None in (r2, ridge_r2, mean_r2) else bool(r2 > max(ridge_r2, mean_r2))
            checks[task] = check
        checks["training_seconds"] = summary.get("training_seconds")
        checks["trains_in_30_min"] = summary.get("training_seconds", math.inf) <= 1800  # meant for the 2-core CPU
        out[name] = checks
    return out


def write_panel(raw: dict[str, dict[str, Any]], data: Data, tasks: tuple[str, ...], path: Path) -> list[str]:
    """One row per task (truth, each model, each baseline) of the panel subject's lesion slice, each
    tile windowed like the truth (radiological view: anterior up); returns the columns."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QGuiApplication, QImage, QPainter

    from core.display import display_window

    k = panel_slice(data)
    truths = {task: data.truth.data[TASKS[task][1]][data.panel_subject, 0, :, :, k].numpy() for task in tasks}
    ok = [n for n in raw if "error" not in raw[n]]
    columns = ["truth", *[n for n in ok if n not in BASELINES], *[n for n in BASELINES if n in ok]]
    width, height = data.truth.data[TASKS[tasks[0]][1]].shape[2:4]
    zoom = max(1, math.ceil(128 / max(width, height)))
    tile_w, tile_h, label_h, label_w = width * zoom, height * zoom, 18, 130
    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841 (QPainter needs an application)
    image = QImage(label_w + len(columns) * (tile_w + 2), label_h + len(tasks) * (tile_h + 2), QImage.Format.Format_RGB888)
    image.fill(QColor("black"))
    painter = QPainter(image)
    painter.setPen(QColor("white"))
    for c, name in enumerate(columns):
        painter.drawText(label_w + c * (tile_w + 2), 0, tile_w, label_h, Qt.AlignmentFlag.AlignCenter, name)
    for r, (task, truth) in enumerate(truths.items()):
        top = label_h + r * (tile_h + 2)
        painter.drawText(0, top, label_w - 4, tile_h, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, task)
        low, high = display_window([truth]) or (0.0, 1.0)
        for c, name in enumerate(columns):
            values = truth if name == "truth" else np.asarray(raw[name]["panel"].get(task, np.zeros_like(truth)))
            gray = np.clip((values - low) / (high - low), 0, 1)
            big = np.kron(np.rot90(gray), np.ones((zoom, zoom)))
            pixels = np.ascontiguousarray(np.repeat((big * 255).astype(np.uint8)[..., None], 3, axis=2))
            tile = QImage(pixels.data, tile_w, tile_h, pixels.strides[0], QImage.Format.Format_RGB888)
            painter.drawImage(label_w + c * (tile_w + 2), top, tile)
    painter.end()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(path), "PNG"):
        raise OSError(f"Could not write the panel {path}.")
    return columns


def print_table(methods: dict[str, Any], tasks: tuple[str, ...]) -> None:
    header = (
        f"{'method':<12} {'task':<16} {'SSIM':>6} {'R2':>6} {'PSNR':>6} {'ratio':>11} {'Dice':>5} "
        f"{'>mean SSIM/MSE':>15} {'>ridge':>11} {'train s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, summary in methods.items():
        if "error" in summary:
            print(f"{name:<12} failed: {summary['error']}")
            continue
        for task in tasks:
            entry = summary["tasks"][task]
            if "not_served" in entry:
                print(f"{name:<12} {task:<16} not served: {entry['not_served']}")
                continue
            m = {k: v["median"] for k, v in entry["metrics"].items()}
            fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
            pct = lambda b: "-" if b is None else f"{100 * b['ssim']:.0f}%/{100 * b['mse']:.0f}%"  # noqa: E731
            ratio = f"{fmt(m.get('lesion_ratio'), 2)}/{fmt(m.get('lesion_ratio_true'), 2)}"
            print(
                f"{name:<12} {task:<16} {fmt(m['ssim']):>6} {fmt(m['r2']):>6} {fmt(m['psnr'], 1):>6} {ratio:>11} "
                f"{fmt(m.get('lesion_dice'), 2):>5} {pct(entry['beats'].get('mean_image')):>15} "
                f"{pct(entry['beats'].get('voxel_ridge')):>11} {summary.get('training_seconds', 0):>8}"
            )


# ---------------------------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help=f"registered models (default: all: {', '.join(available())})")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--n-subjects", type=int, default=None, help="cohort size (default 200; --quick 24)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="grid (default 40 40 40; 96 112 96 on CUDA; --quick 16^3)")
    parser.add_argument("--missing", choices=list(MISSING), default="mcar")
    parser.add_argument("--epochs", type=int, default=None, help="override every preset's num_epochs (and the U-Net's)")
    parser.add_argument("--time-budget-s", type=float, default=None, help="stop each training after the epoch that spends this")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="JSON path, the PNG panel beside it (default: results/synthesis_quality[_MISSING].json)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 24 subjects at 16^3, 1 epoch, in this process")
    parser.add_argument("--in-process", action="store_true", help="run every method in this process (peak RSS is then shared)")
    parser.add_argument("--resume", action="store_true", help="reuse the methods an interrupted run with the same settings finished")
    parser.add_argument(
        "--keep", action="store_true",
        help="keep the cohort cache and the finished methods for a later --resume (to split one run across processes)",
    )  # fmt: skip
    parser.add_argument("--unet-epochs", type=int, default=None, help="the U-Net's epochs (default: --epochs, else the longest preset's)")
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", type=_override, default=[],
        help="change one model or training parameter of every preset (VALUE is JSON), for an ablation: --set adversarial_weight=500",
    )  # fmt: skip
    return parser.parse_args(argv)


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE, e.g. free_bits=0.5")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def settings_from_args(args: argparse.Namespace) -> Settings:
    cuda = select_device(args.device).type == "cuda"
    quick = QUICK if args.quick else {}
    shape = tuple(args.shape) if args.shape else quick.get("shape", (96, 112, 96) if cuda else (40, 40, 40))
    epochs = args.epochs if args.epochs is not None else quick.get("epochs")
    models = args.models if args.models is not None else available()
    unknown = [m for m in models if m not in available()]
    if unknown:
        raise SystemExit(f"Unknown models {unknown}; registered: {available()}.")
    preset_epochs = [int(model_preset(m)[2].get("num_epochs", TrainerConfig().num_epochs)) for m in models]
    unet_epochs = args.unet_epochs or (epochs if epochs is not None else max(preset_epochs, default=DEFAULT_UNET_EPOCHS))
    return Settings(
        n_subjects=args.n_subjects or quick.get("n_subjects", 200),
        shape=shape,
        missing=args.missing,
        seed=args.seed,
        tasks=tuple(args.tasks),
        epochs=epochs,
        time_budget_s=args.time_budget_s,
        device=args.device,
        unet_epochs=unet_epochs,
        overrides=tuple(args.overrides),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = settings_from_args(args)
    models = args.models if args.models is not None else available()
    started = time.monotonic()
    data = prepare(settings)
    raw: dict[str, dict[str, Any]] = {}
    finished = _finished_methods(settings)
    finished.mkdir(parents=True, exist_ok=True)
    for name in [*args.baselines, *models]:
        began = time.monotonic()
        saved = finished / f"{name}.json"
        if args.resume and saved.is_file():
            raw[name] = json.loads(saved.read_text(encoding="utf-8"))
            print(f"{name}: reused from the interrupted run ({saved})", flush=True)
            continue
        in_process = args.in_process or args.quick  # a fresh process per method costs more than a quick run
        raw[name] = evaluate_or_report(name, settings, data) if in_process else evaluate_in_fresh_process(name, settings)
        if "error" not in raw[name]:
            saved.write_text(json.dumps(raw[name]), encoding="utf-8")  # NaN kept: the summary reads it back
        print(f"{name}: {raw[name].get('error', 'done')} ({time.monotonic() - began:.0f} s)", flush=True)
    methods = summarize(raw, settings.tasks)
    default_name = "synthesis_quality.json" if args.missing == "mcar" else f"synthesis_quality_{args.missing}.json"
    out = Path(args.out) if args.out else RESULTS / default_name
    panel = out.with_suffix(".png")
    columns = write_panel(raw, data, settings.tasks, panel)
    spec = MISSING[settings.missing]
    payload = {
        "benchmark": "synthesis_quality",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": LOAD_AT_START,
        "device": str(select_device(settings.device)),
        "command": " ".join(["python", "benchmarks/synthesis_quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "total_seconds": round(time.monotonic() - started, 1),
        "data": {
            "source": "demo phantom (core.data.demo, ICBM152)", "grid": list(settings.shape), "n_subjects": settings.n_subjects,
            "n_train": len(data.train), "n_validation": len(data.validation), "n_test": len(data.truth),
            "test_subjects_with_lesion": int(data.lesion.flatten(1).any(1).sum()), "missing": settings.missing,
            "missing_spec": {"rates": spec.rates, **({"rates_no_lesion": spec.rates_no_lesion} if spec.kind == "mnar_label" else {})},
            "seed": settings.seed,
        },  # fmt: skip
        "budget": {"epochs_override": settings.epochs, "time_budget_s": settings.time_budget_s, "unet_epochs": settings.unet_epochs},
        "overrides": dict(settings.overrides),
        "tasks": {
            t: {"conditioning": list(TASKS[t][0]), "target": TASKS[t][1], "region": "field of view" if TASKS[t][1] == "US" else "brain"}
            for t in settings.tasks
        },
        "scoring": (
            "core.metrics.synthesis_scores on the hidden voxels (brain; for US the subject's own FOV inside the FOV the product writes, "
            "the training cohort's majority one); medians and IQR over the test subjects"
        ),
        "methods": methods,
        "goals": goals(methods, settings.tasks),
        "panel": {
            "file": panel.name, "test_subject": data.truth.ids[data.panel_subject], "axial_slice": panel_slice(data), "columns": columns,
        },
    }
    if not args.keep:
        _cohort_cache(demo_spec(settings)).unlink(missing_ok=True)
        shutil.rmtree(finished, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(payload), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print_table(methods, settings.tasks)
    print(f"wrote {out} and {panel} in {payload['total_seconds']:.0f} s")
    return payload


if __name__ == "__main__":
    main()
