r"""JNF: Joint Normalizing Flows (Senellart & Allassonnière, 2025).

Generative model p(z) = N(0, I), p_theta(x_m | z) per modality. A Gaussian joint encoder q_phi(z | X)
sees every modality; each unimodal posterior is a Gaussian base encoder followed by a normalizing flow
f_m (a masked autoregressive flow by default), z -> u = f_m(z):

    log q_m(z | x_m) = log N(f_m(z); mu_m(x_m), sigma_m(x_m)^2) + log |det df_m(z)/dz|

Training has two stages (the JMVAE objective with alpha = 1, split in time), driven by W = ``warmup``:

* **stage "joint"**, epochs 1..W: the joint VAE alone, no annealing,

      L_1(X) = - E_{q(z|X)} [ \sum_m \lambda_m log p(x_m | z) ] + \beta KL(q(z|X) || p(z));

* **stage "unimodal"**, epochs W+1..: the joint encoder and the decoders are frozen (no gradient, and
  kept in eval mode so BatchNorm statistics and Dropout do not drift) and the unimodal flow posteriors
  are fitted to the joint one,

      L_2(X) = - E_{q(z|X)} [ \sum_m log q_m(z | x_m) ] = \sum_m KL(q(z|X) || q_m(z|x_m)) + const.

The trainer builds a fresh optimizer over :meth:`JNF.parameters_for_stage` at each stage, reloads the
best weights of the previous stage and calls :meth:`JNF.enter_stage` (no special trainer is needed).

Inference for a subset S of the modalities:

* S = all modalities: the joint encoder;
* S = {m}: u ~ N(mu_m, sigma_m^2), z = f_m^{-1}(u); with ``return_mean`` the base mean is pushed through
  the inverse flow, f_m^{-1}(mu_m), the mode-like centre of q_m (not exactly its mean);
* 1 < |S| < M: Hamiltonian Monte Carlo on the product of the unimodal posteriors, with the prior
  divided out |S| - 1 times,

      pi(z | x_S) \propto \prod_{m in S} q_m(z | x_m) / p(z)^{|S| - 1},

  the exact posterior of conditionally independent modalities when q_m(z|x_m) = p(z|x_m). The chain
  starts from a sample of the flow posterior of a modality of S drawn uniformly per chain. pi is
  normalisable when the unimodal posteriors are more concentrated than the prior, as they are for a
  trained model.

Training needs complete samples: an incomplete batch raises :class:`IncompleteDataError`.

References:
    Senellart & Allassonnière, "Multimodal Variational Autoencoders with Joint Normalizing Flows"
    (2025). https://arxiv.org/abs/2502.03952 ; earlier version https://arxiv.org/abs/2305.11832
    Neal, "MCMC using Hamiltonian dynamics", Handbook of Markov Chain Monte Carlo, 2011.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from core.data.dataset import DatasetOutput
from core.models._shared.annealing import TrainingProgress
from core.models._shared.free_bits import kl_per_dimension_term
from core.models._shared.gaussian import kl_standard_normal, log_normal, rsample
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.two_stage import JOINT_STAGE, JointThenUnimodalStages
from core.models.base import ModalityError
from core.models.config import MODEL_CONFIG_DICT, BaseMultiVAEConfig
from core.models.jmvae import JointEncoderVAE
from core.models.registry import register_model
from core.nn.flows import LatentFlow, as_latent_flow, default_flow

__all__ = ["JNFConfig", "JNF"]

STEP_JITTER = 0.2  # HMC step sizes are drawn uniformly in eps_lf * [1 - 0.2, 1 + 0.2]


@dataclass(config=MODEL_CONFIG_DICT)
class JNFConfig(BaseMultiVAEConfig):
    """Config of :class:`JNF` (MultiVae's ``JNFConfig``)."""

    warmup: int = Field(
        10,
        ge=1,
        description="Epochs of the first stage (joint encoder and decoders); the unimodal flows train from epoch "
        "warmup + 1, so train for more than warmup epochs.",
    )
    beta: float = Field(1.0, ge=0, description="Weight of the KL divergence of the joint VAE.")


@register_model
class JNF(JointThenUnimodalStages, JointEncoderVAE):
    """Joint encoder plus masked-autoregressive-flow unimodal posteriors, trained in two stages.

    Args:
        model_config: a :class:`JNFConfig`.
        encoders: modality -> Gaussian base encoder of the unimodal posterior (over ``latent_dim``).
        decoders: modality -> decoder from ``latent_dim``.
        joint_encoder: module taking the dict of all modalities and returning a Gaussian; default built
            from copies of the unimodal encoders.
        flows: modality -> flow from the latent space to the base space, see :mod:`core.nn.flows` for the
            interface (a zuko flow, a zuko lazy transform, a module with ``forward(z) -> (u, log_det)`` and
            ``inverse(u)``, or a documented-style flow whose outputs have ``out`` and ``log_abs_det_jac``);
            default a zuko MAF per modality. A mapping-like container (``nn.ModuleDict``) is accepted.
    """

    name = "JNF"
    config_class = JNFConfig
    supports_incomplete_data = False
    summary = "Joint encoder plus normalizing-flow unimodal posteriors, trained in two stages; needs complete data."

    def __init__(
        self,
        model_config: JNFConfig,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
        joint_encoder: nn.Module | None = None,
        flows: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(model_config, encoders, decoders, joint_encoder)
        self.record_custom_architectures(flows=flows)
        if flows is not None and set(flows) != set(self.modalities):
            raise ModalityError(f"flows are given for {sorted(flows)} but the modalities are {sorted(self.modalities)}.")
        self.flows = nn.ModuleDict(
            {
                m: as_latent_flow(flows[m], self.latent_dim, f"flows['{m}']") if flows is not None else default_flow(self.latent_dim)
                for m in self.modalities
            }
        )

    # ------------------------------------------------------------------ stages
    def unimodal_modules(self) -> list[nn.Module]:
        """The unimodal encoders and their flows."""
        return [self.encoders, self.flows]

    # ------------------------------------------------------------------ unimodal flow posteriors
    def unimodal_log_prob(
        self, modality: str, z: torch.Tensor, gaussian: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """log q_m(z | x_m) = log N(f_m(z); mu_m, sigma_m^2) + log|det df_m/dz|, for ``z`` of shape ``(*, B, D)``.

        ``gaussian`` is ``(mu_m, logvar_m)`` of the base encoder, shape ``(B, D)`` (broadcast).
        """
        u, ladj = self.flows[modality](z)
        return log_normal(u, *gaussian) + ladj

    def sample_unimodal(
        self, modality: str, gaussian: tuple[torch.Tensor, torch.Tensor], N: int = 1, return_mean: bool = False
    ) -> torch.Tensor:
        """z = f_m^{-1}(u), u ~ N(mu_m, sigma_m^2) (or u = mu_m): ``(B, D)`` for N = 1, else ``(N, B, D)``."""
        u = rsample(*gaussian, n=N, return_mean=return_mean)
        flow: LatentFlow = self.flows[modality]
        return flow.inverse(u.reshape(-1, u.shape[-1])).reshape(u.shape)

    # ------------------------------------------------------------------ inference
    def encode(
        self,
        inputs: Any,
        cond_mod: str | Sequence[str] = "all",
        N: int = 1,
        return_mean: bool = False,
        flatten: bool = False,
        ignore_incomplete: bool = False,
        mcmc_steps: int = 100,
        n_lf: int = 10,
        eps_lf: float = 0.01,
        **kwargs: Any,
    ) -> ModelOutput:
        """z ~ q(z | x_cond): ``(B, D)`` for N = 1, ``(N, B, D)`` otherwise (``(N*B, D)`` with ``flatten``).

        Args:
            inputs: a batch or a dataset.
            cond_mod: ``'all'``, a modality name or a list of names.
            N: number of samples per data point (for HMC: N independent chains).
            return_mean: the posterior mean instead of samples (repeated N times). For one modality:
                f_m^{-1}(mu_m); for HMC: the average of the chains' states over the second half of
                the run.
            flatten: merge the sample and batch dimensions.
            ignore_incomplete: kept for a uniform API; every conditioning modality must be observed.
            mcmc_steps: HMC iterations (1 < |S| < M only). Raise it for large latent spaces.
            n_lf: leapfrog steps per HMC iteration.
            eps_lf: leapfrog step size.
            **kwargs: accepted for a uniform API across models and ignored.
        """
        cond = self.resolve_modalities(cond_mod)
        batch = self.prepare_batch(inputs)
        self.check_observed(batch, cond, ignore_incomplete)
        if len(cond) == len(self.modalities):
            mu, logvar = self.joint_gaussian(batch)
            z = rsample(mu, logvar, N, return_mean)
        elif len(cond) == 1:
            z = self.sample_unimodal(cond[0], self.encoder_gaussian(cond[0], batch.data[cond[0]]), N, return_mean)
        else:
            gaussians = {m: self.encoder_gaussian(m, batch.data[m]) for m in cond}
            z = self.sample_product_hmc(gaussians, N, mcmc_steps, n_lf, eps_lf, return_mean)
        if flatten and N > 1:
            z = z.reshape(-1, z.shape[-1])
        return ModelOutput(z=z, one_latent_space=True)

    def product_log_density(
        self, z: torch.Tensor, gaussians: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        r"""log pi(z) = \sum_{m in S} log q_m(z | x_m) - (|S| - 1) log p(z), up to a constant; ``(*, B)``."""
        log_pi = sum(self.unimodal_log_prob(m, z, g) for m, g in gaussians.items())
        return log_pi - (len(gaussians) - 1) * log_normal(z, torch.zeros_like(z), torch.zeros_like(z))

    def sample_product_hmc(
        self,
        gaussians: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        N: int = 1,
        mcmc_steps: int = 100,
        n_lf: int = 10,
        eps_lf: float = 0.01,
        return_mean: bool = False,
    ) -> torch.Tensor:
        r"""Samples of pi(z | x_S) \propto \prod_m q_m(z|x_m) / p(z)^{|S|-1} by Hamiltonian Monte Carlo.

        N independent chains per data point, each started from the flow posterior of a modality of S
        drawn uniformly. Each iteration draws a momentum rho ~ N(0, I), runs ``n_lf`` leapfrog steps of
        size eps (``eps_lf`` jittered by up to 20% per chain and iteration, which keeps detailed
        balance and avoids trajectories whose length resonates with the target's scale, Neal 2011
        sec. 5.4.2.2) and accepts the end point with probability min(1, exp(H_0 - H)) (rejecting
        non-finite proposals). The encoders run once; only the flows are re-evaluated, and no gradient
        reaches the model's parameters.

        Args:
            gaussians: modality -> ``(mu_m, logvar_m)`` of the base encoders, each ``(B, D)``.

        Returns:
            ``(B, D)`` for N = 1, else ``(N, B, D)``.
        """
        if int(mcmc_steps) != mcmc_steps or mcmc_steps < 0:
            raise ValueError(f"mcmc_steps must be a non-negative integer; got {mcmc_steps}.")
        if int(n_lf) != n_lf or n_lf < 1:
            raise ValueError(f"n_lf must be a positive integer; got {n_lf}.")
        if not eps_lf > 0:
            raise ValueError(f"eps_lf must be positive; got {eps_lf}.")
        gaussians = {m: (mu.detach(), lv.detach()) for m, (mu, lv) in gaussians.items()}
        names = list(gaussians)
        mu0 = gaussians[names[0]][0]
        batch, dim = mu0.shape

        def log_pi_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = z.detach().requires_grad_(True)
            log_pi = self.product_log_density(z, gaussians)
            (grad,) = torch.autograd.grad(log_pi.sum(), z)
            return log_pi.detach(), grad

        with torch.enable_grad():
            # Initial state: z_0 ~ q_m(z | x_m) with m drawn uniformly from S for every chain.
            with torch.no_grad():
                starts = torch.stack([self.sample_unimodal(m, gaussians[m], N).reshape(N, batch, dim) for m in names])
                pick = torch.randint(len(names), (N, batch), device=mu0.device)
                z = starts.gather(0, pick.view(1, N, batch, 1).expand(1, N, batch, dim)).squeeze(0)
            log_pi, grad = log_pi_and_grad(z)
            burn_in = mcmc_steps // 2
            running_sum = torch.zeros_like(z)
            n_kept = 0
            for step in range(mcmc_steps):
                rho = torch.randn_like(z)
                h0 = -log_pi + 0.5 * rho.pow(2).sum(-1)
                # Step size jittered per chain and iteration, so that no trajectory length can resonate
                # with the target's scale (a half-period trajectory would just reflect the state).
                eps = eps_lf * (1 + STEP_JITTER * (2 * torch.rand_like(h0) - 1)).unsqueeze(-1)
                z_new, g_new, rho_new = z, grad, rho
                for _ in range(n_lf):
                    rho_new = rho_new + 0.5 * eps * g_new
                    z_new = z_new + eps * rho_new
                    log_pi_new, g_new = log_pi_and_grad(z_new)
                    rho_new = rho_new + 0.5 * eps * g_new
                h = -log_pi_new + 0.5 * rho_new.pow(2).sum(-1)
                accept = torch.rand_like(h0).log() < (h0 - h)
                accept = accept & torch.isfinite(z_new).all(-1) & torch.isfinite(log_pi_new)
                z = torch.where(accept.unsqueeze(-1), z_new, z)
                log_pi = torch.where(accept, log_pi_new, log_pi)
                grad = torch.where(accept.unsqueeze(-1), g_new, grad)
                if step >= burn_in:
                    running_sum = running_sum + z
                    n_kept += 1
        z = z.detach()
        if return_mean:
            mean = (running_sum / n_kept).mean(0) if n_kept else z.mean(0)
            z = mean.unsqueeze(0).expand(N, batch, dim)
        return z[0] if N == 1 else z

    # ------------------------------------------------------------------ objective
    def forward(self, inputs: Any, progress: TrainingProgress | None = None) -> LossOutput:
        """The loss of the stage that ``progress.epoch`` falls in (the current stage without progress).

        Enters that stage first if the trainer has not (freezing happens in :meth:`enter_stage`).
        Stage ``joint`` terms: ``recon``, ``kl_prior``. Stage ``unimodal`` terms: ``nll[m]``
        (-log q_m(z|x_m)), ``kl[m]`` (its KL estimate to q(z|X)), and ``recon``/``kl_prior`` of the frozen
        joint VAE for monitoring.
        """
        stage = self.stage_at(progress.epoch) if progress is not None else self.current_stage
        if stage.name != self._active_stage:
            self.enter_stage(stage)
        batch = self.prepare_batch(inputs)
        self.require_complete(batch)
        if stage.name == JOINT_STAGE:
            return self._joint_vae_loss(batch)
        return self._unimodal_flows_loss(batch)

    def _joint_vae_loss(self, batch: DatasetOutput) -> LossOutput:
        mu, logvar = self.joint_gaussian(batch)
        z = rsample(mu, logvar)
        recon = self.joint_log_likelihood(batch, z, rescale=True)
        kl_prior = kl_standard_normal(mu, logvar)
        loss = (-recon + self.model_config.beta * kl_prior).mean()
        terms = {
            "recon": -recon.mean().detach(),
            "kl_prior": kl_prior.mean().detach(),
            kl_per_dimension_term("z"): kl_prior.mean().detach() / self.latent_dim,
        }
        return LossOutput(loss=loss, terms=terms, batch_size=batch.batch_size)

    def _unimodal_flows_loss(self, batch: DatasetOutput) -> LossOutput:
        with torch.no_grad():  # the joint VAE is frozen: z is a fixed target for the flows
            mu, logvar = self.joint_gaussian(batch)
            z = rsample(mu, logvar)
            log_q_joint = log_normal(z, mu, logvar)
            kl_prior = kl_standard_normal(mu, logvar)
        log_q = {m: self.unimodal_log_prob(m, z, self.encoder_gaussian(m, batch.data[m])) for m in self.modalities}
        loss = -sum(log_q.values()).mean()
        terms = {
            **{f"nll[{m}]": -lq.mean().detach() for m, lq in log_q.items()},
            **{f"kl[{m}]": (log_q_joint - lq).mean().detach() for m, lq in log_q.items()},
            "kl_prior": kl_prior.mean(),
            kl_per_dimension_term("z"): kl_prior.mean() / self.latent_dim,
        }
        if not self.training:  # the frozen joint VAE's reconstruction, for validation; training steps skip the decoders
            with torch.no_grad():
                recon = self.joint_log_likelihood(batch, z, rescale=True)
            terms["recon"] = -recon.mean()
        return LossOutput(loss=loss, terms=terms, batch_size=batch.batch_size)
