"""Training throughput side by side with the published reference library (MultiVae 1.0.3).

The same networks, deep-copied into the reference's wrappers so both start from the same weights: MLPs
of the size MultiVae builds by default (one hidden layer of 512, as pythae's ``Encoder_VAE_MLP`` and
``Decoder_AE_MLP``) for every encoder, decoder, joint encoder and Nexus's top networks; for MHVAE the
project's vector blocks (width 256) with those decoders; for JNF each library's own default flow. These
are small networks (about 0.2 GFLOP per step of 64 for JMVAE), so what a library spends around them
shows. The same hyper-parameters (latent 16, Adam, learning rate 1e-3) and the same data train in
both libraries, for every model both have, on three kinds of modality: vectors (3 x 32), small images
(3 x 1x8x8, 1024 samples each) and volumes (2 x 1x32^3, flattened by the MLPs). Each measurement runs
in a fresh process (so peak memory is its own), the two libraries alternating, round after round, in
one run of this script; medians over rounds are reported with their ratio.

What is timed: each library's own training loop as a user runs it (the project's ``Trainer``,
MultiVae's ``BaseTrainer``/``MultistageTrainer``), from the start of an epoch to the end of its last
training step (data loading, forward, backward, optimizer, per-step logging), without the epoch-end
work (validation, checkpoints). The first epoch (and JNF's first epoch of each stage) is a warm-up. Wall and CPU time are both recorded.
The project's worker also times, on pre-collated batches, the model's step alone (forward, backward,
Adam) and the bare networks (every network its objective calls, on the rows it feeds them, with a
squared-error stand-in for their loss; see ``_bare_project``): the trainer's overhead and the model's own cost.

The reference is installed in its own virtual environment, ``benchmarks/.venv-peer`` (git-ignored), never
into the project's: ``--no-deps`` installs of multivae, pythae and torchvision 0.28 (a CUDA build that
needs two operator schemas declared before import on CPU torch), its import-time needs from the package
index, and a ``.pth`` line that makes the project's ``.venv`` (torch 2.13 CPU, the project itself)
importable, so no second torch is ever installed.

    python benchmarks/peer_throughput.py [--rounds 3] [--epochs 4] [--threads 1] [--kinds vector image volume]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.nn.base import as_embedding, as_gaussian, as_reconstruction

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"
PEER_VENV = ROOT / "benchmarks" / ".venv-peer"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_PACKAGES = ["multivae==1.0.3", "pythae==0.1.2", "torchvision==0.28.0"]  # installed with --no-deps
PEER_IMPORT_NEEDS = ["numpy", "scipy", "scikit-learn", "pydantic", "tqdm", "cloudpickle", "pillow", "matplotlib", "nltk"]

KINDS: dict[str, dict[str, Any]] = {
    "vector": {"shapes": {"a": (32,), "b": (32,), "c": (32,)}, "n": 1024, "batch_size": 64},
    "image": {"shapes": {"a": (1, 8, 8), "b": (1, 8, 8), "c": (1, 8, 8)}, "n": 1024, "batch_size": 64},
    "volume": {"shapes": {"a": (1, 32, 32, 32), "b": (1, 32, 32, 32)}, "n": 16, "batch_size": 8},
}
MODELS = ["MVAE", "JMVAE", "Nexus", "MHVAE", "JNF"]
LATENT = 16
HIDDEN = (512,)  # MultiVae's default MLP (pythae's Encoder_VAE_MLP / Decoder_AE_MLP): one hidden layer of 512
LEARNING_RATE = 1e-3


# ---------------------------------------------------------------------------------------------- setup
def ensure_peer_venv() -> None:
    """Create ``benchmarks/.venv-peer`` with the reference library when it is missing."""
    if PEER_PYTHON.is_file() and subprocess.run([str(PEER_PYTHON), "-c", "import multivae"], capture_output=True).returncode == 0:
        return
    if not PROJECT_PYTHON.is_file():
        raise SystemExit("The project's .venv is missing; run `make env` first.")
    base = subprocess.run([str(PROJECT_PYTHON), "-c", "import sys; print(sys._base_executable)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True)
    project_site = subprocess.run([str(PROJECT_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    peer_site = subprocess.run([str(PEER_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    # After the peer's own site-packages: the reference's packages win, torch and the project come from .venv.
    Path(peer_site, "_project_venv.pth").write_text(project_site + "\n")
    pip = [str(PEER_PYTHON), "-m", "pip", "install", "--quiet"]
    for command in (pip + ["--no-deps", *PEER_PACKAGES], pip + PEER_IMPORT_NEEDS):
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"Installing the reference failed ({' '.join(command[4:])}); is the package index reachable?")


def _import_reference() -> Any:
    """``multivae`` imported on CPU torch (see the module docstring for the two workarounds)."""
    library = torch.library.Library("torchvision", "DEF")  # the CUDA wheel's ops are missing on CPU torch
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _import_reference.library = library  # keep the registration alive
    import multivae.models
    import torchvision  # noqa: F401

    torch.distributions.Distribution.set_default_validate_args(False)  # MultiVae's log-probs of grey levels
    return multivae


def _memory_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process, from /proc."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


# ---------------------------------------------------------------------------------------------- networks
def _build_project_model(name: str, shapes: dict[str, tuple[int, ...]], epochs: int) -> Any:
    """The project's model with MLP networks for every modality (seeded: both workers get the same weights)."""
    from core.models import get_model_class
    from core.nn.default_architectures import MLPDecoder, MLPEncoder, mlp
    from core.nn.hierarchical import default_mhvae_blocks
    from core.nn.joint import MultipleHeadJointEncoder

    torch.manual_seed(0)
    cls = get_model_class(name)
    common = {"n_modalities": len(shapes), "latent_dim": LATENT, "input_dims": shapes}
    if name == "MHVAE":
        config = cls.config_class(**common, n_latent=3)
        blocks = default_mhvae_blocks({m: (math.prod(s),) for m, s in shapes.items()}, LATENT, 3)
        encoders = {m: _Flattened(blocks["encoders"][m], len(s)) for m, s in shapes.items()}
        decoders = {m: _Reshaped(MLPDecoder(LATENT, (math.prod(s),), hidden=HIDDEN), s) for m, s in shapes.items()}
        rest = {k: v for k, v in blocks.items() if k not in ("encoders", "decoders")}
        return cls(config, encoders=encoders, decoders=decoders, **rest)
    encoders = {m: MLPEncoder(s, LATENT, hidden=HIDDEN) for m, s in shapes.items()}
    decoders = {m: MLPDecoder(LATENT, s, hidden=HIDDEN) for m, s in shapes.items()}
    if name == "Nexus":
        config = cls.config_class(**common, modalities_specific_dim={m: LATENT for m in shapes}, warmup=epochs)
        top = {"top_encoders": {m: mlp([LATENT, *HIDDEN, config.msg_dim]) for m in shapes},
               "top_decoders": {m: MLPDecoder(LATENT, (LATENT,), hidden=HIDDEN) for m in shapes},
               "joint_encoder": MLPEncoder((config.msg_dim,), LATENT, hidden=HIDDEN)}
        return cls(config, encoders=encoders, decoders=decoders, **top)
    config = cls.config_class(**common, warmup=epochs // 2 if name == "JNF" else epochs)
    if name in ("JMVAE", "JNF"):
        joint = MultipleHeadJointEncoder(encoders, LATENT, hidden=HIDDEN)
        return cls(config, encoders=encoders, decoders=decoders, joint_encoder=joint)
    return cls(config, encoders=encoders, decoders=decoders)


class _Flattened(nn.Module):
    """An MLP feature extractor fed flattened images or volumes."""

    def __init__(self, inner: nn.Module, sample_dims: int) -> None:
        super().__init__()
        self.inner, self.sample_dims = inner, sample_dims

    def forward(self, x: torch.Tensor) -> Any:
        return self.inner(x.flatten(start_dim=x.dim() - self.sample_dims))


class _Reshaped(nn.Module):
    """An MLP decoder whose flat output is reshaped to the modality's shape."""

    def __init__(self, inner: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.inner, self.shape = inner, tuple(shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = as_reconstruction(self.inner(z))
        return x.reshape(*x.shape[:-1], *self.shape)


def _reference_model(multivae: Any, project_model: Any, name: str, shapes: dict[str, tuple[int, ...]], epochs: int) -> Any:
    """The reference's model holding deep copies of the project model's networks, in its output types."""
    from pythae.models.base.base_model import BaseDecoder, BaseEncoder
    from pythae.models.base.base_utils import ModelOutput

    class AsEncoder(BaseEncoder):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = copy.deepcopy(inner)

        def forward(self, x: Any) -> ModelOutput:
            out = self.inner(x)
            if hasattr(out, "dim"):
                return ModelOutput(embedding=out)
            mu, logvar = as_gaussian(out)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class AsJointEncoder(AsEncoder, multivae.models.nn.base_architectures.BaseJointEncoder):
        pass

    class AsDecoder(BaseDecoder):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = copy.deepcopy(inner)

        def forward(self, z: Any) -> ModelOutput:
            return ModelOutput(reconstruction=as_reconstruction(self.inner(z)))

    models = multivae.models
    common = {"n_modalities": len(shapes), "latent_dim": LATENT, "input_dims": shapes}
    p = project_model
    encoders = {m: AsEncoder(p.encoders[m]) for m in shapes}
    decoders = {m: AsDecoder(p.decoders[m]) for m in shapes}
    if name == "MVAE":
        return models.MVAE(models.MVAEConfig(**common, warmup=epochs), encoders=encoders, decoders=decoders)
    if name == "JMVAE":
        return models.JMVAE(models.JMVAEConfig(**common, warmup=epochs), encoders=encoders, decoders=decoders,
                            joint_encoder=AsJointEncoder(p.joint_encoder))
    if name == "JNF":  # each library's own default flow: MAF, 2 blocks of 3 hidden layers of 128
        return models.JNF(models.JNFConfig(**common, warmup=epochs // 2), encoders=encoders, decoders=decoders,
                          joint_encoder=AsJointEncoder(p.joint_encoder))
    if name == "Nexus":
        config = models.NexusConfig(**common, modalities_specific_dim={m: LATENT for m in shapes}, warmup=epochs)
        return models.Nexus(config, encoders=encoders, decoders=decoders,
                            top_encoders={m: AsEncoder(p.top_encoders[m]) for m in shapes},
                            joint_encoder=AsEncoder(p.joint_encoder),
                            top_decoders={m: AsDecoder(p.top_decoders[m]) for m in shapes})
    if name == "MHVAE":
        return models.MHVAE(
            models.MHVAEConfig(**common, n_latent=3), encoders=encoders, decoders=decoders,
            bottom_up_blocks={m: [copy.deepcopy(b) for b in p.bottom_up_blocks[m][:-1]] + [AsEncoder(p.bottom_up_blocks[m][-1])]
                              for m in shapes},
            top_down_blocks=[copy.deepcopy(b) for b in p.top_down_blocks],
            posterior_blocks={m: [AsEncoder(p.posterior_block(m, i)) for i in range(2)] for m in shapes},
            prior_blocks=[AsEncoder(b) for b in p.prior_blocks],
        )
    raise ValueError(name)


def _data(shapes: dict[str, tuple[int, ...]], n: int) -> dict[str, Any]:
    """Correlated modalities in [0, 1]: each a random map of one shared factor plus noise."""
    generator = torch.Generator().manual_seed(1)
    shared = torch.randn(n, 8, generator=generator)
    out = {}
    for m, shape in shapes.items():
        mixing = torch.randn(8, math.prod(shape), generator=generator) / 3
        noise = 0.1 * torch.randn(n, math.prod(shape), generator=generator)
        out[m] = torch.sigmoid(shared @ mixing + noise).reshape(n, *shape)
    return out


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(epochs: list[list[Any]], n: int, bs: int, skip: set[int]) -> dict[str, float]:
    """Samples/s and ms/step from each epoch's (number, wall start, cpu start, wall end, cpu end), medians.

    CPU time (this process's) is reported beside wall time: on a shared machine the wall clock also
    counts the time other processes held the cores, CPU time much less so."""
    kept = [e for e in epochs if e[0] not in skip and e[3] > e[1]]
    wall = statistics.median(n / (e[3] - e[1]) for e in kept)
    cpu = statistics.median(n / (e[4] - e[2]) for e in kept)
    return {"samples_per_second": wall, "ms_per_step": 1000 * bs / wall,
            "cpu_samples_per_second": cpu, "cpu_ms_per_step": 1000 * bs / cpu}


# ---------------------------------------------------------------------------------------------- workers
def _worker(library: str, kind: str, name: str, epochs: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    multivae = _import_reference() if library == "reference" else None
    import core.models  # noqa: F401
    import core.training  # noqa: F401

    case = KINDS[kind]
    shapes, n, bs = case["shapes"], case["n"], case["batch_size"]
    data = _data(shapes, n)
    model = _build_project_model(name, shapes, epochs)
    skip = {1, epochs // 2 + 1} if name == "JNF" else {1}
    if library == "reference":
        model = _reference_model(multivae, model, name, shapes, epochs)
    stack_rss, _ = _memory_mb()
    result: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
    if library == "project":
        result.update(_train_project(model, data, bs, epochs, skip))
        _, peak = _memory_mb()
        result.update(_bare_project(model, name, data, bs))
    else:
        result.update(_train_reference(multivae, model, name, data, bs, epochs, skip))
        _, peak = _memory_mb()
    result.update(stack_rss_mb=round(stack_rss, 1), peak_rss_mb=round(peak, 1), training_rss_mb=round(peak - stack_rss, 1))
    return result


def _train_project(model: Any, data: dict[str, Any], bs: int, epochs: int, skip: set[int]) -> dict[str, Any]:
    from core.data import MultimodalBaseDataset
    from core.training import Callback, Trainer, TrainerConfig

    times: list[list[Any]] = []

    class Timer(Callback):
        def on_epoch_start(self, trainer: Any, epoch: int, stage: str) -> None:
            times.append([epoch, *_now(), 0.0, 0.0])

        def on_batch_end(self, trainer: Any, progress: Any) -> None:
            if progress.phase == "train":
                times[-1][3:] = _now()

    config = TrainerConfig(num_epochs=epochs, batch_size=bs, learning_rate=LEARNING_RATE, device="cpu",
                           checkpoint_every_minutes=None, seed=0)
    dataset = MultimodalBaseDataset(data)
    Trainer(model, dataset, config=config, callbacks=[Timer()]).train()
    return _rates(times, len(dataset), bs, skip)


def _train_reference(multivae: Any, model: Any, name: str, data: dict[str, Any], bs: int, epochs: int, skip: set[int]) -> dict[str, Any]:
    from multivae.data.datasets.base import MultimodalBaseDataset
    from multivae.trainers import BaseTrainer, BaseTrainerConfig, MultistageTrainer, MultistageTrainerConfig
    from multivae.trainers.base.callbacks import TrainingCallback

    times: list[list[Any]] = []

    class Timer(TrainingCallback):
        def on_epoch_begin(self, training_config: Any, **kwargs: Any) -> None:
            times.append([kwargs.get("epoch", len(times) + 1), *_now(), 0.0, 0.0])

        def on_train_step_end(self, training_config: Any, **kwargs: Any) -> None:
            times[-1][3:] = _now()

    dataset = MultimodalBaseDataset(data=data)
    with tempfile.TemporaryDirectory() as folder:
        trainer_cls, config_cls = (MultistageTrainer, MultistageTrainerConfig) if name == "JNF" else (BaseTrainer, BaseTrainerConfig)
        config = config_cls(output_dir=folder, num_epochs=epochs, learning_rate=LEARNING_RATE, per_device_train_batch_size=bs,
                            steps_saving=None, steps_predict=None, no_cuda=True, seed=0)
        trainer_cls(model, dataset, training_config=config, callbacks=[Timer()]).train()
    return _rates(times, len(dataset), bs, skip)


def _bare_project(model: Any, name: str, data: dict[str, Any], bs: int, steps: int = 5) -> dict[str, Any]:
    """Per-step ms (wall and CPU) of the model alone and of its bare networks, on pre-collated batches
    (medians over steps, after 2 burn-in steps).

    The bare networks are every network the objective calls, called on the rows it feeds them, with a
    squared-error or Gaussian stand-in for their loss (so the ratio is what the model's code costs around
    its networks): every encoder and decoder; JMVAE's joint encoder too (the decoders read its code); for
    JNF, whose timed epochs are its second stage, the frozen joint encoder without gradients, the encoders
    and the flows; Nexus's message encoders, nexus node and top decoders; MHVAE's bottom-up path once and
    its top-down, prior and posterior blocks and decoders on one row per (subset, sample), as its stacked
    pass runs them. Both optimizers are the trainer's fused Adam.
    """
    from core.data import MultimodalBaseDataset
    from core.models import TrainingProgress

    dataset = MultimodalBaseDataset(data)
    batches = [dataset.subset(range(s * bs, (s + 1) * bs)).as_batch() for s in range(len(dataset) // bs)]
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, fused=True)
    progress = TrainingProgress(2, 0.0)

    def model_step(batch: Any) -> None:
        loss = model(batch, progress=progress).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    joint = model.joint_encoder if name in ("JMVAE", "JNF") else None
    flows = model.flows if name == "JNF" and model.stage_at(progress.epoch).name != "joint" else None
    if flows is not None:  # JNF's second stage trains the encoders and flows only
        trained = [model.encoders, flows]
    elif name == "Nexus":
        trained = [model.encoders, model.decoders, model.top_encoders, model.joint_encoder, model.top_decoders]
    elif name == "MHVAE":
        trained = [model]  # every block takes part in the objective
    else:
        trained = [model.encoders, model.decoders, *([joint] if joint is not None else [])]
    bare_optimizer = torch.optim.Adam(torch.nn.ModuleList(trained).parameters(), lr=LEARNING_RATE, fused=True)  # as the trainer's

    def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def gaussian_stand_in(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return (mu.square() + logvar.exp() - logvar).sum() / mu.shape[0]

    def nexus_top(codes: dict[str, torch.Tensor]) -> torch.Tensor:
        """The top level on the (stop-gradient) bottom codes: messages, their mean, the nexus node, t_m."""
        hbar = torch.stack([as_embedding(model.top_encoders[m](z.detach())) for m, z in codes.items()]).mean(0)
        mu, logvar = as_gaussian(model.joint_encoder(hbar))
        z_sigma = sample(mu, logvar)
        loss = gaussian_stand_in(mu, logvar)
        for m, z in codes.items():
            loss = loss + (as_reconstruction(model.top_decoders[m](z_sigma)) - z.detach()).square().sum() / z.shape[0]
        return loss

    def mhvae_loss(batch: Any) -> torch.Tensor:
        """The bottom-up paths once per modality, then the top-down pass on one row per (subset, sample)."""
        rows = torch.arange(bs).repeat(len(model.subsets_for_step()))
        deepest, skips = model.modality_encode(batch["data"])
        mu = torch.stack([p.embedding for p in deepest.values()]).mean(0)[rows]
        logvar = torch.stack([p.log_covariance for p in deepest.values()]).mean(0)[rows]
        loss, z = gaussian_stand_in(mu, logvar), sample(mu, logvar)
        for i in reversed(range(model.n_latent - 1)):
            h = model.top_down_blocks[i](z)
            p_mu, p_logvar = as_gaussian(model.prior_blocks[i](h))
            experts = [as_gaussian(model.posterior_block(m, i)(torch.cat([h, skips[m][i][rows]], dim=1))) for m in deepest]
            q_mu = torch.stack([e[0] for e in experts]).mean(0)
            q_logvar = torch.stack([e[1] for e in experts]).mean(0)
            loss = loss + gaussian_stand_in(q_mu - p_mu, q_logvar - p_logvar)
            z = sample(q_mu, q_logvar)
        for m, x in batch["data"].items():
            loss = loss + (as_reconstruction(model.decoders[m](z)) - x[rows]).square().sum() / len(rows)
        return loss

    def networks_loss(batch: Any) -> torch.Tensor:
        """Every other model: its encoders and decoders (and joint encoder, flows, top networks) once each."""
        loss = torch.zeros(())
        joint_z = None
        codes = {}
        if joint is not None:  # JMVAE, JNF: the decoders read the joint code; frozen in JNF's second stage
            with torch.no_grad() if flows is not None else contextlib.nullcontext():
                mu, logvar = as_gaussian(joint(batch["data"]))
                joint_z = sample(mu, logvar)
        for m, x in batch["data"].items():
            mu, logvar = as_gaussian(model.encoders[m](x))
            if flows is not None:  # JNF's second stage: the flow posterior's density of the joint code
                u, ladj = flows[m](joint_z)
                loss = loss + ((u - mu).square() / logvar.exp() + logvar).sum() / x.shape[0] - ladj.mean()
                continue
            z = joint_z if joint_z is not None else sample(mu, logvar)
            codes[m] = z
            loss = loss + (as_reconstruction(model.decoders[m](z)) - x).square().sum() / x.shape[0]
            if joint_z is not None:  # JMVAE's unimodal encoders enter through their KL to the joint posterior
                loss = loss + gaussian_stand_in(mu, logvar)
        if name == "Nexus":
            loss = loss + nexus_top(codes)
        return loss

    def bare_step(batch: Any) -> None:
        loss = mhvae_loss(batch) if name == "MHVAE" else networks_loss(batch)
        bare_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bare_optimizer.step()

    out = {}
    for key, step in (("model_step_ms", model_step), ("bare_networks_ms", bare_step)):
        wall, cpu = [], []
        for s in range(steps + 2):
            start = _now()
            step(batches[s % len(batches)])
            end = _now()
            wall.append(end[0] - start[0])
            cpu.append(end[1] - start[1])
        out[key] = 1000 * statistics.median(wall[2:])
        out["cpu_" + key] = 1000 * statistics.median(cpu[2:])
    return out


# ---------------------------------------------------------------------------------------------- driver
def _run_worker(library: str, kind: str, name: str, epochs: int, threads: int) -> dict[str, Any]:
    python = PEER_PYTHON if library == "reference" else PROJECT_PYTHON
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    command = [str(python), __file__, "--worker", library, "--kind", kind, "--model", name, "--epochs", str(epochs),
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        # The exception's own line, not the progress bar printed after it (or the exit status of a kill).
        errors = [line for line in done.stderr.splitlines() if "Error" in line or "Exception" in line]
        return {"error": errors[-1] if errors else f"exit status {done.returncode}: {done.stderr.strip()[-200:] or 'no output'}"}
    return json.loads(lines[-1])


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return round(statistics.median(values), 2) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)  # the first (and JNF's first unimodal one) is a warm-up
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (1: fairest on a shared machine)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--out", default=str(RESULTS / "peer_throughput.json"))
    parser.add_argument("--worker", choices=["project", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.kind, args.model, args.epochs, args.threads)))
        return
    ensure_peer_venv()
    load_start = os.getloadavg()
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for round_index in range(args.rounds):
        for kind in args.kinds:
            for name in args.models:
                order = ["project", "reference"] if round_index % 2 == 0 else ["reference", "project"]
                for library in order:
                    row = _run_worker(library, kind, name, args.epochs, args.threads)
                    runs.setdefault((kind, name, library), []).append(row)
                    print(round_index, kind, name, library, row, flush=True)
                _write(args, runs, load_start, round_index + 1)  # after every pair: an interrupted run keeps what it measured


def _write(args: argparse.Namespace, runs: dict[tuple[str, str, str], list[dict[str, Any]]], load_start: tuple[float, ...],
           rounds_done: int) -> None:
    table = []
    for kind in args.kinds:
        for name in args.models:
            if (kind, name, "reference") not in runs or (kind, name, "project") not in runs:
                continue
            ours, theirs = runs[(kind, name, "project")], runs[(kind, name, "reference")]
            entry: dict[str, Any] = {"kind": kind, "model": name, "batch_size": KINDS[kind]["batch_size"]}
            for label, rows in (("project", ours), ("reference", theirs)):
                entry[label] = {key: _median(rows, key) for key in ("samples_per_second", "ms_per_step", "cpu_samples_per_second",
                                                                      "cpu_ms_per_step", "stack_rss_mb", "peak_rss_mb",
                                                                      "training_rss_mb")}
                entry[label]["samples_per_second_all_rounds"] = [round(r["samples_per_second"], 1) for r in rows
                                                                 if "samples_per_second" in r]
                errors = [r["error"] for r in rows if "error" in r]
                if errors:
                    entry[label]["errors"] = errors
            for key in ("model_step_ms", "bare_networks_ms", "cpu_model_step_ms", "cpu_bare_networks_ms"):
                entry["project"][key] = _median(ours, key)
            for prefix in ("", "cpu_"):
                a, b = entry["project"][prefix + "samples_per_second"], entry["reference"][prefix + "samples_per_second"]
                entry[prefix + "ratio_project_over_reference"] = round(a / b, 2) if a and b else None
                step, bare = entry["project"][prefix + "ms_per_step"], entry["project"][prefix + "bare_networks_ms"]
                entry[prefix + "project_step_over_bare_networks"] = round(step / bare, 2) if step and bare else None
            table.append(entry)
    payload = {
        "benchmark": "peer_throughput",
        "reference": "multivae 1.0.3 (pythae 0.1.2), benchmarks/.venv-peer",
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds_done,
        "epochs": args.epochs,
        "latent_dim": LATENT,
        "learning_rate": LEARNING_RATE,
        "kinds": {k: {"shapes": {m: list(s) for m, s in v["shapes"].items()}, "n": v["n"], "batch_size": v["batch_size"]}
                  for k, v in KINDS.items() if k in args.kinds},
        "results": table,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\n{'kind':7} {'model':6} {'ratio':>6} {'cpu ratio':>9} {'ms/step':>8} {'ref ms':>8} {'cpu ms':>7} {'ref cpu':>7} "
          f"{'cpu bare':>8} {'train MB':>8} {'ref MB':>7}")
    for e in table:
        p, r = e["project"], e["reference"]
        print(f"{e['kind']:7} {e['model']:6} {e['ratio_project_over_reference'] or 0:6.2f} "
              f"{e['cpu_ratio_project_over_reference'] or 0:9.2f} "
              f"{p['ms_per_step'] or 0:8.1f} {r['ms_per_step'] or 0:8.1f} {p['cpu_ms_per_step'] or 0:7.1f} "
              f"{r['cpu_ms_per_step'] or 0:7.1f} "
              f"{p['cpu_bare_networks_ms'] or 0:8.1f} {p['training_rss_mb'] or 0:8.0f} {r['training_rss_mb'] or 0:7.0f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
