"""Training options, validated like model configs (unknown keys and impossible values are errors)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from core.config import CONFIG_DICT, advanced
from core.training.optimizers import build_optimizer

__all__ = ["TrainerConfig", "OPTIMIZERS", "SCHEDULERS"]

OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop")
SCHEDULERS = ("ReduceLROnPlateau", "StepLR", "CosineAnnealingLR", "ExponentialLR")


@dataclass(config=CONFIG_DICT)
class TrainerConfig:
    """How to train: epochs, batches, optimisation, checkpoints, stopping, device."""

    num_epochs: int = Field(20, ge=1, le=100_000, description="Number of passes over the training subjects.")
    batch_size: int = Field(16, ge=1, description="Subjects per training step.")
    eval_batch_size: int | None = Field(None, ge=1, **advanced("Subjects per validation step (default: batch_size)."))
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Optimizer learning rate.")
    optimizer: Literal["Adam", "AdamW", "SGD", "RMSprop"] = Field("Adam", **advanced("torch.optim class."))
    optimizer_params: dict[str, Any] = Field(default_factory=dict, **advanced("Extra optimizer arguments, e.g. weight_decay."))
    scheduler: Literal["ReduceLROnPlateau", "StepLR", "CosineAnnealingLR", "ExponentialLR"] | None = Field(
        None, **advanced("Learning-rate schedule, stepped once per epoch.")
    )
    scheduler_params: dict[str, Any] = Field(default_factory=dict, **advanced("Arguments of the schedule, e.g. patience."))
    grad_clip_norm: float | None = Field(None, gt=0, **advanced("Clip the gradient norm to this value."))
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop when the validation loss has not improved for this many epochs."
    )
    early_stopping_min_delta: float = Field(0.0, ge=0, **advanced("Smallest decrease that counts as an improvement."))
    keep_best: bool = Field(True, description="Keep the weights of the best validation epoch as the final model.")
    checkpoint_every: int = Field(1, ge=1, **advanced("Save a resumable checkpoint every this many epochs."))
    checkpoint_every_minutes: float | None = Field(
        10.0, gt=0, **advanced("Also save a resumable checkpoint within an epoch when this many minutes have passed "
                               "since the last one (long epochs on full-size volumes); None: only per epoch.")
    )
    seed: int = Field(0, ge=0, description="Random seed: same seed, same data and same result.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    num_workers: int = Field(0, ge=0, le=64, **advanced("DataLoader worker processes."))
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", **advanced("Autocast on CUDA (ignored on CPU)."))
    compile: bool = Field(
        False, **advanced("torch.compile the model's networks (first steps are slow while compiling; helps on GPU).")
    )

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ValueError(f"device '{self.device}' is not one of auto, cpu, cuda, cuda:N, mps.")
        probe = [torch.nn.Parameter(torch.zeros(1))]
        try:  # the optimizer the trainer builds (build_optimizer: fast kernels, and no torch._dynamo import)
            optimizer = build_optimizer(self.optimizer, probe, self.learning_rate, self.optimizer_params)
        except (TypeError, RuntimeError) as exc:
            raise ValueError(f"optimizer_params {self.optimizer_params} do not fit {self.optimizer}: {exc}") from None
        if self.scheduler is not None:
            try:
                getattr(torch.optim.lr_scheduler, self.scheduler)(optimizer, **self.scheduler_arguments())
            except (TypeError, ValueError) as exc:
                raise ValueError(f"scheduler_params {self.scheduler_params} do not fit {self.scheduler}: {exc}") from None
        return self

    def scheduler_arguments(self) -> dict[str, Any]:
        """Scheduler arguments with the defaults the check above filled in."""
        params = dict(self.scheduler_params)
        if self.scheduler == "StepLR":
            params.setdefault("step_size", 10)
        if self.scheduler == "CosineAnnealingLR":
            params.setdefault("T_max", self.num_epochs)
        if self.scheduler == "ExponentialLR":
            params.setdefault("gamma", 0.95)
        return params
