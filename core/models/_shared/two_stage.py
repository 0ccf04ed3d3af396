"""Two-stage training of the joint-encoder models that learn their unimodal side last (JNF, TELBO).

Stage ``joint`` (epochs 1..W, W the config's ``warmup``) trains the joint encoder and the decoders (with
their learned scales, ``decoder_scale: learned``); stage ``unimodal`` (from epoch W + 1) trains the
unimodal side with the joint VAE frozen: its
parameters get ``requires_grad=False`` and its modules stay in eval mode, so BatchNorm statistics and
Dropout masks of the frozen part do not change. The trainer reloads the best weights of the first stage
and starts a fresh optimizer at the boundary (``reset_optimizer_epochs``, MultiVae's attribute).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from core.models.base import TrainingStage

__all__ = ["JOINT_STAGE", "UNIMODAL_STAGE", "JointThenUnimodalStages"]

JOINT_STAGE = "joint"
UNIMODAL_STAGE = "unimodal"


class JointThenUnimodalStages:
    """Mixin for a :class:`~core.models.base.MultimodalVAE` with ``joint_encoder``, ``decoders`` and a
    ``model_config.warmup``; the model names what its unimodal stage trains in :meth:`unimodal_modules`."""

    _active_stage: str | None = None
    joint_encoder: nn.Module
    decoders: nn.Module
    decoder_log_scales: nn.ParameterDict | None
    model_config: Any

    def joint_modules(self) -> list[nn.Module]:
        """What stage ``joint`` trains and stage ``unimodal`` freezes: the joint encoder, the decoders and their
        learned scales (an analytic scale is no parameter: it is never trained)."""
        learned = self.decoder_log_scales is not None and self.model_config.decoder_scale == "learned"
        return [self.joint_encoder, self.decoders, *([self.decoder_log_scales] if learned else [])]

    def unimodal_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def stages(self) -> list[TrainingStage]:
        """``joint`` (epochs 1..W) then ``unimodal`` (from epoch W + 1)."""
        return [TrainingStage(JOINT_STAGE, 1), TrainingStage(UNIMODAL_STAGE, self.model_config.warmup + 1)]

    @property
    def reset_optimizer_epochs(self) -> list[int]:
        """Epochs at which a fresh optimizer starts: W + 1."""
        return [self.model_config.warmup + 1]

    @property
    def current_stage(self) -> TrainingStage:
        """The stage last entered (the first one before any)."""
        return next((s for s in self.stages if s.name == self._active_stage), self.stages[0])

    @property
    def joint_frozen(self) -> bool:
        """Whether the joint encoder and decoders are frozen (stage ``unimodal``)."""
        return self._active_stage == UNIMODAL_STAGE

    @property
    def decoders_frozen(self) -> bool:
        """Stage ``unimodal`` keeps the decoders, and so their calibrated scales, as stage ``joint`` left them."""
        return self.joint_frozen

    def _stage_modules(self, stage: TrainingStage) -> list[nn.Module]:
        if stage.name == JOINT_STAGE:
            return self.joint_modules()
        if stage.name == UNIMODAL_STAGE:
            return self.unimodal_modules()
        raise ValueError(f"Unknown stage '{stage.name}'; {type(self).__name__} has stages {[s.name for s in self.stages]}.")

    def parameters_for_stage(self, stage: TrainingStage) -> list[nn.Parameter]:
        """The parameters the stage trains (see :meth:`joint_modules` and :meth:`unimodal_modules`)."""
        return [p for module in self._stage_modules(stage) for p in module.parameters()]

    def enter_stage(self, stage: TrainingStage) -> None:
        """Unfreeze the stage's modules; in stage ``unimodal`` freeze the joint ones (see the module docstring)."""
        for module in self._stage_modules(stage):
            module.requires_grad_(True)
        if stage.name == UNIMODAL_STAGE:
            for module in self.joint_modules():
                module.requires_grad_(False)
        self._active_stage = stage.name
        self.train(self.training)  # type: ignore[attr-defined]

    def train(self, mode: bool = True) -> Any:
        """As ``nn.Module.train``, but the frozen joint modules stay in eval mode."""
        super().train(mode)  # type: ignore[misc]
        if self.joint_frozen:
            for module in self.joint_modules():
                module.eval()
        return self
