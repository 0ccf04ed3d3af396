"""The training loop: explicit, resumable, cancellable, and honest about what it is doing.

One epoch = the training steps over a seeded permutation of the subjects, then a validation pass.
After each epoch the trainer keeps the best weights (validation loss), steps the LR schedule, checks
early stopping, appends to ``metrics.csv`` and writes a checkpoint; within an epoch a checkpoint is also
written every ``checkpoint_every_minutes``. Control flags (pause, stop-and-keep, cancel) are read between steps.
Training order depends only on (seed, epoch), and the RNG states are
saved with every checkpoint, so a resumed run gives the same result as an uninterrupted one.

Run folder written here (when ``run_dir`` is given)::

    metrics.csv              one row per epoch, train/<term> and val/<term> columns
    status.json              running | completed | early_stopped | stopped | cancelled | failed
    checkpoints/epoch-0007/  model + best weights + optimizer/scheduler/RNG/trainer state
    checkpoints/epoch-0007-step-00040/  the same, 40 steps into epoch 8 (time-based, or stop-and-keep)
    checkpoints/latest       name of the newest complete checkpoint
    final_model/             the bundle to use (best weights when keep_best): core.models.load()

Under ``torchrun`` (WORLD_SIZE > 1) the same loop runs data-parallel with DistributedDataParallel:
``batch_size`` is the global batch, sharded equally over the ranks, metrics are reduced over ranks,
and only rank 0 writes the run folder and runs the callbacks (see :mod:`core.training.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from core.data.dataset import DatasetOutput, MultimodalBaseDataset, collate_multimodal
from core.models import LossOutput, TrainingProgress
from core.models.base import MultimodalVAE, TrainingStage
from core.training.callbacks import BatchProgress, Callback, EpochRecord
from core.training.checkpoint import (
    RANK_SEED_STRIDE,
    MeanAccumulator,
    RunFolderPersistence,
    Status,
    latest_checkpoint,
    seed_everything,
)
from core.training.config import TrainerConfig
from core.training.control import TrainingControl
from core.training.distributed import (
    DistributedContext,
    all_reduce_flags,
    init_distributed,
    shard_batch,
    shard_indices,
    shutdown_distributed,
)
from core.training.eta import EtaEstimator
from core.training.health import CollapseCheck, TrainingWarning
from core.training.optimizers import build_optimizer, optimizer_step

__all__ = ["Trainer", "TrainingResult", "TrainingDiverged", "select_device", "compile_submodules"]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainingResult:
    status: Status
    epochs_completed: int
    best_epoch: int | None
    best_validation_loss: float | None
    history: list[EpochRecord] = field(default_factory=list)
    message: str = ""
    run_dir: Path | None = None
    seconds: float = 0.0


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was requested but torch cannot use a CUDA GPU here; use 'auto' or 'cpu'.")
    return device


def compile_submodules(model: torch.nn.Module) -> list[str]:
    """``torch.compile`` the model's networks in place (encoders, decoders, joint nets, flows...).

    Only the child networks are compiled; the model's own Python (masks, subsets, products of
    experts) stays eager, so graph breaks cannot change it. Compiling in place keeps the parameter
    names, so checkpoints and bundles are unchanged. Returns the compiled module names; when
    torch.compile cannot be set up here, a warning is logged, nothing is compiled and ``[]`` returned.
    """
    compiled = []
    for name, child in model.named_children():
        members = child.items() if isinstance(child, torch.nn.ModuleDict) else [("", child)]
        for key, module in members:
            if any(True for _ in module.parameters()):
                try:
                    module.compile()
                except Exception as error:  # an optimisation only: never a reason to stop training
                    log.warning("torch.compile is unavailable here (%s: %s); training runs eagerly.", type(error).__name__, error)
                    for _, done in model.named_modules():
                        done._compiled_call_impl = None
                    return []
                compiled.append(f"{name}.{key}" if key else name)
    return compiled


def _host_metrics(output: LossOutput, grad_norm: torch.Tensor | None = None) -> dict[str, float]:
    """``output.metrics`` (plus ``grad_norm``) with the scalars on the loss's device read in one transfer,
    not one synchronisation each; the values are the same floats."""
    named: list[tuple[str, Any]] = [("loss", output.loss), *output.terms.items()]
    if grad_norm is not None:
        named.append(("grad_norm", grad_norm))
    values = dict(named)
    device = output.loss.device
    batched = [k for k, v in values.items() if isinstance(v, torch.Tensor) and v.device == device and v.numel() == 1]
    read = dict(zip(batched, torch.stack([values[k].detach().reshape(()) for k in batched]).tolist(), strict=True))
    return {k: read[k] if k in read else float(v) for k, v in values.items()}


class Trainer(RunFolderPersistence):
    """Trains a :class:`MultimodalVAE` on a dataset of :class:`DatasetOutput` samples.

    Args:
        model: the model to train (moved to the selected device).
        train_dataset, eval_dataset: torch Datasets of samples (``core.data`` datasets or the HDF5 cache).
        config: a :class:`TrainerConfig`.
        callbacks: observers of the training events.
        run_dir: where checkpoints, metrics and the final model go; ``None`` keeps everything in memory.
        control: pause / stop / cancel flags shared with another thread.
    """

    def __init__(
        self,
        model: MultimodalVAE,
        train_dataset: Dataset,
        eval_dataset: Dataset | None = None,
        config: TrainerConfig | None = None,
        callbacks: Iterable[Callback] = (),
        run_dir: str | Path | None = None,
        control: TrainingControl | None = None,
    ) -> None:
        self.config = config or TrainerConfig()
        if len(train_dataset) == 0:
            raise ValueError("The training set is empty; check the data split.")
        self.model = model
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset if eval_dataset is not None and len(eval_dataset) > 0 else None
        self.callbacks = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.control = control or TrainingControl()
        self.device = select_device(self.config.device)
        self.should_stop = False
        self.stop_reason = ""
        # Progress state (all of it goes into checkpoints).
        self.epoch = 0
        self.step_in_epoch = 0
        self.stage: TrainingStage = model.stage_at(1)
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epochs_without_improvement = 0
        self.history: list[EpochRecord] = []
        self.warnings: list[TrainingWarning] = []
        self.collapse_check = CollapseCheck(first_epoch=model.start_keep_best_epoch + 1)
        self._partial_train = MeanAccumulator()
        self._eta = EtaEstimator()
        self._steps_in_epoch = (0, 0)
        self._last_checkpoint_time = time.monotonic()
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._scaler: torch.amp.GradScaler | None = None
        # Data parallelism (set up in train(); single-process defaults until then).
        self.dist = DistributedContext()
        self._owns_process_group = False
        self._forward_module: torch.nn.Module = model

    @property
    def is_main_process(self) -> bool:
        """Rank 0 (or a single-process run): the process that writes files and runs the callbacks."""
        return self.dist.is_main

    # ------------------------------------------------------------------ setup
    def _setup_distributed(self) -> None:
        self.dist, self._owns_process_group = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.dist.enabled and self.config.batch_size < self.dist.world_size:
            raise ValueError(
                f"batch_size {self.config.batch_size} is the global batch and must be at least the number of processes "
                f"({self.dist.world_size})."
            )
        if self.dist.enabled and self.dist.is_main:
            skipped = sum(len(b) % self.dist.world_size for b in self._train_batches(1))
            if skipped:
                log.warning(
                    "With %d processes, %d of %d training subjects per epoch do not fill an equal share of their batch and "
                    "are skipped that epoch (a different few each epoch). A batch_size and training-set size divisible "
                    "by the number of processes use every subject.", self.dist.world_size, skipped, len(self.train_dataset)
                )

    def _wrap_for_training(self) -> None:
        """DDP around the model for the training forward (re-done when a stage changes the trainable set)."""
        if not self.dist.enabled:
            self._forward_module = self.model
            return
        # Models may leave parameters out of a step (random subsets, dropped messages, frozen stages);
        # a model whose every trainable parameter is always used can set this class attribute to False.
        find_unused = bool(getattr(self.model, "ddp_find_unused_parameters", True))
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self._forward_module = DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=find_unused)

    def _build_optimizer(self) -> None:
        cfg = self.config
        params = [p for p in self.model.parameters_for_stage(self.stage) if p.requires_grad]
        if not params:
            raise RuntimeError(f"Stage '{self.stage.name}' of {self.model.name} has no trainable parameters.")
        self.optimizer = build_optimizer(cfg.optimizer, params, cfg.learning_rate, cfg.optimizer_params)
        self.scheduler = (
            getattr(torch.optim.lr_scheduler, cfg.scheduler)(self.optimizer, **cfg.scheduler_arguments())
            if cfg.scheduler
            else None
        )
        use_fp16 = cfg.mixed_precision == "fp16" and self.device.type == "cuda"
        self._scaler = torch.amp.GradScaler("cuda") if use_fp16 else None
        self._wrap_for_training()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.config.mixed_precision != "no":
            dtype = torch.bfloat16 if self.config.mixed_precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def _loader(self, dataset: Dataset, batches: Sequence[Sequence[int]], epoch: int) -> Iterable[DatasetOutput]:
        """The batches in order. Data already in memory is indexed a batch at a time (no sample objects, no
        collate, no DataLoader: ~3% of a small model's step); other datasets (the HDF5 cache) and worker
        processes go through a DataLoader."""
        if isinstance(dataset, MultimodalBaseDataset) and self.config.num_workers == 0:
            return (dataset.batch(indices) for indices in batches)
        # A private generator: creating an iterator must not draw from the global RNG, or a run resumed
        # mid-epoch would sample different latents than an uninterrupted one.
        generator = torch.Generator().manual_seed(self.config.seed * 7_919 + epoch)
        return DataLoader(
            dataset,
            batch_sampler=batches,
            generator=generator,
            collate_fn=collate_multimodal,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _train_batches(self, epoch: int) -> list[list[int]]:
        """Seeded per epoch, so the order never depends on RNG state (resume-safe)."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_dataset), generator=generator).tolist()
        size = self.config.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if len(batches) > 1 and len(batches[-1]) == 1:  # a 1-sample step is noisy and breaks GroupNorm stats
            batches[-2].extend(batches.pop())
        return batches

    def _eval_batches(self) -> list[list[int]]:
        if self.eval_dataset is None:
            return []
        size = self.config.eval_batch_size or self.config.batch_size
        indices = shard_indices(len(self.eval_dataset), self.dist.rank, self.dist.world_size)
        return [indices[i : i + size] for i in range(0, len(indices), size)]

    # ------------------------------------------------------------------ events
    def _emit(self, event: str, *args: Any) -> None:
        if not self.dist.is_main:
            return
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def warn(self, warning: TrainingWarning) -> None:
        """Record a warning about the run: logged, kept in ``status.json`` and checkpoints, sent to callbacks."""
        self.warnings.append(warning)
        log.warning("Epoch %d: %s", warning.epoch, warning.message)
        self._emit("on_warning", warning)

    def _heartbeat(self, epoch: int, phase: str, batch: int, num_batches: int, loss: float, started: float) -> None:
        n_train, n_eval = self._steps_in_epoch
        per_epoch = n_train + n_eval
        done_in_epoch = batch if phase == "train" else n_train + batch
        done = (epoch - 1) * per_epoch + done_in_epoch
        total = self.config.num_epochs * per_epoch
        self._eta.report(epoch, phase, batch, started)
        eta = self._eta.seconds_left(epoch, phase, batch, self.config.num_epochs, n_train, n_eval)
        self._emit(
            "on_batch_end",
            BatchProgress(
                epoch=epoch,
                num_epochs=self.config.num_epochs,
                stage=self.stage.name,
                phase=phase,
                batch=batch,
                num_batches=num_batches,
                loss=loss,
                elapsed_seconds=time.monotonic() - started,
                eta_seconds=eta,
                overall_fraction=min(1.0, done / total),
            ),
        )

    # ------------------------------------------------------------------ one epoch
    def _train_epoch(self, epoch: int, started: float) -> str | None:
        """Run the remaining training steps of ``epoch``; returns 'stopped'/'cancelled' if interrupted."""
        self._forward_module.train()
        batches = self._train_batches(epoch)
        self._steps_in_epoch = (len(batches), len(self._eval_batches()))  # for the ETA, counted once per epoch
        # This rank's share of each remaining global batch (all of it when not distributed).
        steps = [(step, shard_batch(b, self.dist.rank, self.dist.world_size)) for step, b in enumerate(batches)]
        steps = [(step, local) for step, local in steps[self.step_in_epoch :] if local]
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        loader = self._loader(self.train_dataset, [local for _, local in steps], epoch)
        for (step, _), batch in zip(steps, loader, strict=True):
            interrupted = self._check_control()
            if interrupted:
                return interrupted
            progress = TrainingProgress(epoch=epoch, batch_ratio=step / len(batches))
            with self._autocast():
                output = self._forward_module(batch.to(self.device, non_blocking=True), progress=progress)
            loss = output.loss
            self.optimizer.zero_grad(set_to_none=True)
            if self._scaler is not None:
                self._scaler.scale(loss).backward()
                self._scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            grad_norm = self._gradient_norm(params)
            # The step's only host synchronisation: loss, terms and gradient norm read together, which is
            # also the NaN guard (a non-finite loss gives non-finite gradients; neither reaches the weights).
            metrics = _host_metrics(output, grad_norm)
            bad_loss, bad_grads = all_reduce_flags(
                self.dist, not math.isfinite(metrics["loss"]), self._scaler is None and not math.isfinite(metrics["grad_norm"])
            )
            if bad_loss:
                raise TrainingDiverged(
                    f"The loss became {metrics['loss']} at epoch {epoch}, step {step + 1} (subjects {batch.ids[:4]}). "
                    "Lower the learning rate, set grad_clip_norm, or check these subjects' data for extreme values. "
                    f"{self._last_good_message()}"
                )
            if bad_grads:
                raise TrainingDiverged(
                    f"Gradients became {metrics['grad_norm']} at epoch {epoch}, step {step + 1}. Lower the learning rate or set "
                    f"grad_clip_norm. {self._last_good_message()}"
                )
            if self._scaler is not None:  # fp16: the scaler skips steps whose gradients overflowed
                self._scaler.step(self.optimizer)
                self._scaler.update()
            else:
                optimizer_step(self.optimizer)
            self._partial_train.add(metrics, output.batch_size)
            self.step_in_epoch = step + 1
            self._heartbeat(epoch, "train", step + 1, len(batches), metrics["loss"], started)
            if step + 1 < len(batches) and self._checkpoint_due():
                self.save_checkpoint(tag=self._mid_epoch_tag())
        return None

    def _gradient_norm(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """The total gradient norm (a metric and the NaN guard), clipped to ``grad_clip_norm`` when set.

        Without clipping only the norm is computed: clipping to infinity multiplied every gradient by 1."""
        if self.config.grad_clip_norm is not None:
            return torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip_norm, foreach=True)
        grads = [p.grad for p in params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros((), device=self.device)

    def _checkpoint_due(self) -> bool:
        """The time-based checkpoint within an epoch, so a crash loses minutes, not a long epoch. Rank 0's
        clock decides for every rank (saving is a collective)."""
        minutes = self.config.checkpoint_every_minutes
        if self.run_dir is None or minutes is None:
            return False
        (due,) = all_reduce_flags(self.dist, self.dist.is_main and time.monotonic() - self._last_checkpoint_time >= 60 * minutes)
        return due

    def _mid_epoch_tag(self) -> str:
        """``epoch-0003-step-00040``: sorts after ``epoch-0003`` and before ``epoch-0004``, so the newest wins."""
        return f"epoch-{self.epoch:04d}-step-{self.step_in_epoch:05d}"

    @torch.no_grad()
    def evaluate(self, epoch: int, started: float | None = None) -> dict[str, float]:
        """Mean validation loss and terms at ``epoch`` (empty without a validation set)."""
        if self.eval_dataset is None:
            return {}
        self.model.eval()
        accumulator = MeanAccumulator()
        batches = [b for b in self._eval_batches() if b]
        for index, batch in enumerate(self._loader(self.eval_dataset, batches, epoch) if batches else []):
            with self._autocast():
                output = self.model(batch.to(self.device), progress=TrainingProgress(epoch=epoch))
            metrics = _host_metrics(output)
            accumulator.add(metrics, output.batch_size)
            if started is not None:
                self._heartbeat(epoch, "validation", index + 1, len(batches), metrics["loss"], started)
        self.model.train()
        return accumulator.reduced(self.dist).means()

    def _control_requests(self) -> tuple[bool, bool]:
        """(stop, cancel) requested in any process, so that every rank ends at the same step."""
        stop, cancel = all_reduce_flags(self.dist, self.control.stop_requested, self.control.cancel_requested)
        return stop, cancel

    def _check_control(self) -> str | None:
        if self.control.paused:
            self._emit("on_pause", True)
            self.control.wait_while_paused()
            self._emit("on_pause", False)
        stop, cancel = self._control_requests()
        if cancel:
            return "cancelled"
        if stop:
            return "stopped"
        return None

    def _update_best(self, epoch: int, monitored: float) -> bool:
        improved = monitored < self.best_loss - self.config.early_stopping_min_delta
        if epoch <= self.model.start_keep_best_epoch or improved:
            self.best_loss = monitored
            self.best_epoch = epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            if epoch > self.model.start_keep_best_epoch:
                self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    def _enter_stage(self, stage: TrainingStage) -> None:
        """Stage boundary: continue from the best weights of the previous stage with a fresh optimizer."""
        if self.config.keep_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.stage = stage
        self.model.enter_stage(stage)
        self._build_optimizer()
        self.best_loss = math.inf
        self.best_state = None
        self.best_epoch = None
        self.epochs_without_improvement = 0

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from: str | Path | None = None) -> TrainingResult:
        """Train to ``num_epochs`` (or until stopped); resume from a checkpoint folder or run folder."""
        started = time.monotonic()
        self._setup_distributed()
        try:
            return self._train(started, resume_from)
        finally:
            if self._owns_process_group:
                shutdown_distributed()
                self.dist, self._owns_process_group = DistributedContext(), False
                self._forward_module = self.model

    def _train(self, started: float, resume_from: str | Path | None) -> TrainingResult:
        self.model.to(self.device)
        if self.config.compile:
            compile_submodules(self.model)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        else:
            # Each rank draws its own latent noise; rank 0 uses the same seed as a single-process run.
            seed_everything(self.config.seed + self.dist.rank * RANK_SEED_STRIDE)
            self.model.enter_stage(self.stage)
            self._build_optimizer()
        self._write_status("running", "")
        self._emit("on_train_start")
        self._last_checkpoint_time = time.monotonic()
        status: Status = "completed"
        message = ""
        try:
            for epoch in range(self.epoch + 1, self.config.num_epochs + 1):
                stage = self.model.stage_at(epoch)
                if stage != self.stage:
                    self._enter_stage(stage)
                if self.step_in_epoch == 0:
                    self._partial_train = MeanAccumulator()
                self._emit("on_epoch_start", epoch, stage.name)
                epoch_started = time.monotonic()
                interrupted = self._train_epoch(epoch, started)
                if interrupted == "stopped":
                    self.save_checkpoint(tag=self._mid_epoch_tag())
                    status, message = "stopped", f"Stopped during epoch {epoch}; resume to continue."
                    break
                if interrupted == "cancelled":
                    status, message = "cancelled", f"Cancelled during epoch {epoch}; the last checkpoint is kept."
                    break
                train_metrics = self._partial_train.reduced(self.dist).means()
                validation = self.evaluate(epoch, started)
                monitored = validation.get("loss", train_metrics.get("loss", math.inf))
                if self.scheduler is not None:
                    if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        self.scheduler.step(monitored)
                    else:
                        self.scheduler.step()
                is_best = self._update_best(epoch, monitored)
                record = EpochRecord(
                    epoch=epoch,
                    stage=stage.name,
                    train=train_metrics,
                    validation=validation,
                    learning_rate=float(self.optimizer.param_groups[0]["lr"]),
                    seconds=time.monotonic() - epoch_started,
                    is_best=is_best,
                )
                self.history.append(record)
                for warning in self.collapse_check.update(epoch, validation or train_metrics):
                    self.warn(warning)
                self.epoch, self.step_in_epoch = epoch, 0
                self._partial_train = MeanAccumulator()
                patience = self.config.early_stopping_patience
                if patience is not None and self.epochs_without_improvement >= patience:
                    self.should_stop = True
                    self.stop_reason = (
                        f"Early stopping: no validation improvement for {patience} epochs (best epoch {self.best_epoch})."
                    )
                self._write_metrics()
                self._write_status("running", f"epoch {epoch} of {self.config.num_epochs}")
                self._emit("on_epoch_end", record)
                (self.should_stop,) = all_reduce_flags(self.dist, self.should_stop)  # a rank-0 callback may ask
                if epoch % self.config.checkpoint_every == 0 or epoch == self.config.num_epochs or self.should_stop:
                    self.save_checkpoint()
                if self.should_stop:
                    status, message = "early_stopped", self.stop_reason
                    break
                stop_requested, cancel_requested = self._control_requests()
                if stop_requested:
                    if epoch % self.config.checkpoint_every != 0:
                        self.save_checkpoint()
                    status, message = "stopped", f"Stopped after epoch {epoch}; resume to continue."
                    break
                if cancel_requested:
                    status, message = "cancelled", f"Cancelled after epoch {epoch}."
                    break
        except BaseException as error:
            message = str(error)
            with contextlib.suppress(OSError):  # on a full disk the status cannot be written either: keep the first error
                self._write_status("failed", message)
            self._emit("on_error", error)
            raise
        if status in ("completed", "early_stopped", "stopped"):
            self._finalize_model()
        result = TrainingResult(
            status=status,
            epochs_completed=self.epoch,
            best_epoch=self.best_epoch,
            best_validation_loss=self.best_loss if math.isfinite(self.best_loss) else None,
            history=list(self.history),
            message=message,
            run_dir=self.run_dir,
            seconds=time.monotonic() - started,
        )
        self._write_status(status, message)
        self._emit("on_train_end", result)
        return result

    def _last_good_message(self) -> str:
        if self.run_dir is None:
            return ""
        last = latest_checkpoint(self.run_dir)
        return f"The last good checkpoint is kept at {last}." if last else "No checkpoint had been written yet."

