"""Two gloo processes on the CPU against a single-process run of the same global batch.

What "matches" means: the trainer gives each rank an equal half of every global batch, each rank's
loss is the per-sample mean over its half and DDP averages the gradients, so one DDP step applies the
gradient of the per-sample mean over the whole global batch, which is the single-process step. The
model below has a deterministic objective (posterior means, no sampling), so the only differences
are float rounding: weights and epoch metrics agree to ~1e-6. (With the reparameterisation trick
each rank would draw its own noise, and runs would agree only in distribution.)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from core.data import IncompleteDataset, MultimodalBaseDataset
from core.models import (
    MVAE,
    BaseMultiVAEConfig,
    LossOutput,
    ModelOutput,
    MultimodalVAE,
    MVAEConfig,
    available,
    build_model,
    get_model_class,
)
from core.models._shared.gaussian import kl_standard_normal
from core.training import Trainer, TrainerConfig
from core.training.distributed import init_distributed, shard_batch, shard_indices, shutdown_distributed
from core.training.trainer import compile_submodules

DIMS = {"a": (6,), "b": (4,)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MeanCodeVAE(MultimodalVAE):
    """Deterministic test model: z = mean of the experts' means; loss = -recon(all from z) + KL, per-sample mean."""

    name = "MeanCodeVAE"
    config_class = BaseMultiVAEConfig
    ddp_find_unused_parameters = False

    def encode(self, inputs: Any, cond_mod: Any = "all", N: int = 1, return_mean: bool = False, flatten: bool = False,
               ignore_incomplete: bool = False, **kwargs: Any) -> ModelOutput:
        batch = self.prepare_batch(inputs)
        cond = self.resolve_modalities(cond_mod)
        gaussians = [self.encoder_gaussian(m, batch.data[m]) for m in cond]
        mu = torch.stack([g[0] for g in gaussians]).mean(0)
        logvar = torch.stack([g[1] for g in gaussians]).mean(0)
        return ModelOutput(z=mu, logvar=logvar, one_latent_space=True)

    def forward(self, inputs: Any, progress: Any = None) -> LossOutput:
        batch = self.prepare_batch(inputs)
        code = self.encode(batch)
        recon = sum(self.reconstruction_log_likelihood(batch, m, self.decoder_output(m, code.z)) for m in self.modalities)
        kl = kl_standard_normal(code.z, code.logvar)
        loss = (-recon + kl).mean()
        return LossOutput(loss=loss, terms={"recon": -recon.mean().detach(), "kl": kl.mean().detach()}, batch_size=batch.batch_size)


def make_data(n: int, seed: int, incomplete: bool = False, dims: dict | None = None) -> MultimodalBaseDataset:
    dims = dims or DIMS
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    data = {m: z @ torch.randn(2, s[0], generator=g) + 0.1 * torch.randn(n, s[0], generator=g) for m, s in dims.items()}
    ids = [f"s{seed}-{i}" for i in range(n)]
    if not incomplete:
        return MultimodalBaseDataset(data, ids=ids)
    masks = {m: torch.rand(n, generator=g) > 0.3 for m in dims}
    first = next(iter(dims))
    masks[first] |= ~torch.stack(list(masks.values())).any(0)
    return IncompleteDataset(data, masks, ids=ids)


def mean_code_model() -> MeanCodeVAE:
    torch.manual_seed(3)
    return MeanCodeVAE(BaseMultiVAEConfig(n_modalities=2, latent_dim=3, input_dims=DIMS))


def trainer_config(**overrides: Any) -> TrainerConfig:
    values = {"num_epochs": 4, "batch_size": 8, "learning_rate": 3e-3, "seed": 5, "device": "cpu", "grad_clip_norm": 50.0}
    values.update(overrides)
    return TrainerConfig(**values)


def _dump(folder: Path, tag: str, rank: int, trainer: Trainer, result: Any) -> None:
    save_file({k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()},
              str(folder / f"{tag}-rank{rank}.safetensors"))
    history = [{"train": r.train, "validation": r.validation, "is_best": r.is_best} for r in result.history]
    (folder / f"{tag}-rank{rank}.json").write_text(
        json.dumps({"history": history, "best_epoch": result.best_epoch, "status": result.status}))


def _worker(rank: int, world_size: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    folder = Path(folder)
    context, created = init_distributed("cpu")
    assert created and context.world_size == world_size and context.backend == "gloo"
    try:
        train, validation = make_data(32, 0), make_data(11, 1)
        # A: a full run from scratch.
        trainer = Trainer(mean_code_model(), train, validation, trainer_config(), run_dir=folder / "ddp-run")
        _dump(folder, "ddp", rank, trainer, trainer.train())
        # B: resume, on two processes, a checkpoint written by a single process.
        resumed = Trainer(mean_code_model(), train, validation, trainer_config(), run_dir=folder / "single-resumed")
        _dump(folder, "resumed", rank, resumed, resumed.train(resume_from=folder / "single-resumed"))
        # E: time-based checkpoints within an epoch (rank 0's clock decides for both ranks).
        timed = Trainer(mean_code_model(), train, validation, trainer_config(num_epochs=1, checkpoint_every_minutes=1e-9),
                        run_dir=folder / "ddp-timed")
        _dump(folder, "timed", rank, timed, timed.train())
        # C: MVAE on incomplete data with random subsets (parameters unused in some steps).
        dims3 = {"a": (5,), "b": (4,), "c": (3,)}
        torch.manual_seed(0)
        mvae = MVAE(MVAEConfig(n_modalities=3, latent_dim=2, input_dims=dims3, k=1, warmup=1))
        run = Trainer(mvae, make_data(24, 2, True, dims3), make_data(7, 3, True, dims3), trainer_config(num_epochs=2, batch_size=6))
        _dump(folder, "mvae", rank, run, run.train())
        # D: every registered model (stages, dropped messages, hierarchies) keeps its ranks in sync.
        for name in available():
            incomplete = get_model_class(name).supports_incomplete_data
            params = {"n_modalities": 3, "latent_dim": 2, "input_dims": dims3, **({"warmup": 1} if name == "JNF" else {})}
            torch.manual_seed(0)
            run = Trainer(build_model(name, params), make_data(16, 4, incomplete, dims3), None, trainer_config(num_epochs=2))
            _dump(folder, f"registry-{name}", rank, run, run.train())
    finally:
        shutdown_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same(a: dict, b: dict, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=rtol), (k, (a[k] - b[k]).abs().max())


def _same_history(a: list, b: list) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for phase in ("train", "validation"):
            assert ra[phase].keys() == rb[phase].keys()
            for key in ra[phase]:
                assert ra[phase][key] == pytest.approx(rb[phase][key], rel=1e-5, abs=1e-6), (phase, key)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_sharding_gives_equal_contiguous_shares():
    assert [shard_batch(list(range(9)), r, 2) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [shard_batch([5, 6, 7, 8], r, 4) for r in range(4)] == [[5], [6], [7], [8]]
    assert shard_batch([1], 1, 2) == []
    assert sorted(sum((shard_indices(11, r, 3) for r in range(3)), [])) == list(range(11))


def test_two_gloo_processes_match_a_single_process_run(tmp_path):
    train, validation = make_data(32, 0), make_data(11, 1)
    single_dir = tmp_path / "single"
    single = Trainer(mean_code_model(), train, validation, trainer_config(), run_dir=single_dir)
    single_result = single.train()
    single_weights = _weights(single)
    # A single-process checkpoint (epoch 3) for the two processes to resume.
    shutil.copytree(single_dir, tmp_path / "single-resumed")
    shutil.rmtree(tmp_path / "single-resumed" / "checkpoints" / "epoch-0004")
    (tmp_path / "single-resumed" / "checkpoints" / "latest").write_text("epoch-0003\n")

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")

    ddp = [load_file(str(tmp_path / f"ddp-rank{r}.safetensors")) for r in range(2)]
    logs = [json.loads((tmp_path / f"ddp-rank{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    # The ranks hold the same weights and took the same decisions from the same reduced metrics.
    _same(ddp[0], ddp[1], atol=0, rtol=0)
    assert logs[0] == logs[1]
    # ... which are the single-process ones, up to float rounding.
    _same(ddp[0], single_weights)
    single_history = [{"train": r.train, "validation": r.validation} for r in single_result.history]
    _same_history(logs[0]["history"], single_history)
    assert logs[0]["best_epoch"] == single_result.best_epoch

    # Rank 0 alone wrote one complete run folder.
    run = tmp_path / "ddp-run"
    assert (run / "final_model" / "model.safetensors").is_file()
    assert (run / "metrics.csv").read_text(encoding="utf-8").count("\n") == 5
    assert json.loads((run / "status.json").read_text(encoding="utf-8"))["status"] == "completed"
    latest = run / "checkpoints" / "epoch-0004"
    assert (latest / "rng-rank1.json").is_file()
    assert json.loads((latest / "trainer_state.json").read_text(encoding="utf-8"))["world_size"] == 2
    assert not list(run.rglob("*.staging")) and not list(run.rglob("*.tmp"))

    # Time-based checkpoints within an epoch, written once for both ranks.
    timed = tmp_path / "ddp-timed" / "checkpoints"
    assert sorted(p.name for p in timed.glob("epoch-*")) == ["epoch-0000-step-00003", "epoch-0001"]
    assert (timed / "epoch-0000-step-00003" / "rng-rank1.json").is_file()
    _same(load_file(str(tmp_path / "timed-rank0.safetensors")), load_file(str(tmp_path / "timed-rank1.safetensors")), 0, 0)

    # 1 -> 2 processes: resuming the single-process checkpoint continues the same trajectory.
    resumed = load_file(str(tmp_path / "resumed-rank0.safetensors"))
    _same(resumed, single_weights)

    # 2 -> 1 process: resuming the DDP checkpoint of epoch 3 alone ends where both runs ended.
    back = tmp_path / "ddp-resumed"
    shutil.copytree(run, back)
    shutil.rmtree(back / "checkpoints" / "epoch-0004")
    (back / "checkpoints" / "latest").write_text("epoch-0003\n")
    alone = Trainer(mean_code_model(), train, validation, trainer_config(), run_dir=back)
    alone.train(resume_from=back)
    _same(_weights(alone), single_weights)

    # MVAE with random subsets and missing modalities trains under DDP with weights kept in sync.
    mvae = [load_file(str(tmp_path / f"mvae-rank{r}.safetensors")) for r in range(2)]
    _same(mvae[0], mvae[1], atol=0, rtol=0)
    assert json.loads((tmp_path / "mvae-rank0.json").read_text(encoding="utf-8"))["status"] == "completed"
    for name in available():
        ranks = [load_file(str(tmp_path / f"registry-{name}-rank{r}.safetensors")) for r in range(2)]
        _same(ranks[0], ranks[1], atol=0, rtol=0)
        assert json.loads((tmp_path / f"registry-{name}-rank0.json").read_text(encoding="utf-8"))["status"] == "completed", name


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit notices raised while torch.compile imports
def test_compile_keeps_parameter_names_so_checkpoints_and_ddp_are_unchanged():
    model = mean_code_model()
    names = list(model.state_dict())
    compiled = compile_submodules(model)  # [] (and a warning) where torch.compile cannot be set up
    assert list(model.state_dict()) == names
    assert sorted(compiled) in ([], ["decoders.a", "decoders.b", "encoders.a", "encoders.b"])
    assert (model.encoders["a"]._compiled_call_impl is not None) == bool(compiled)
