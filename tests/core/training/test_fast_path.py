"""The trainer's fast path gives what the plain path gave: batches, metrics, optimizers, imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core.data import IncompleteDataset, collate_multimodal
from core.models._shared.outputs import LossOutput
from core.training.optimizers import build_optimizer, optimizer_step
from core.training.trainer import _host_metrics


def test_an_in_memory_batch_is_the_collated_samples_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    data = {"a": torch.randn(6, 1, 4, 4, generator=generator), "b": torch.randn(6, 3, generator=generator)}
    masks = {"a": torch.tensor([1, 0, 1, 1, 0, 1]).bool(), "b": torch.ones(6, dtype=torch.bool)}
    dataset = IncompleteDataset(
        data, masks, labels={"age": torch.arange(6.0)}, ids=list("uvwxyz"),
        observation_masks={"a": torch.rand(6, 1, 4, 4, generator=generator) > 0.3},
    )
    indices = [4, 0, 3]
    fast, plain = dataset.batch(indices), collate_multimodal([dataset[i] for i in indices])
    assert fast.ids == plain.ids == ["y", "u", "x"]
    for key in ("data", "masks", "observation_masks", "labels"):
        assert fast[key].keys() == plain[key].keys()
        for m in fast[key]:
            assert fast[key][m].dtype == plain[key][m].dtype
            assert torch.equal(fast[key][m], plain[key][m]), (key, m)


def test_host_metrics_are_the_floats_of_every_term_in_order():
    output = LossOutput(
        loss=torch.tensor(1.25, requires_grad=True) * 2,
        terms={"kl": torch.tensor(0.1), "wide": torch.tensor(1 / 3, dtype=torch.float64), "beta": 0.5},
        batch_size=4,
    )
    grad_norm = torch.tensor(7.0)
    metrics = _host_metrics(output, grad_norm)
    assert list(metrics) == ["loss", "kl", "wide", "beta", "grad_norm"]
    expected = {"loss": float(torch.tensor(2.5)), "kl": float(torch.tensor(0.1)), "wide": 1 / 3, "beta": 0.5, "grad_norm": 7.0}
    assert metrics == expected


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop"])
def test_optimizers_get_fast_kernels_unless_the_options_choose(name):
    params = [torch.nn.Parameter(torch.randn(3))]
    optimizer = build_optimizer(name, params, 1e-3)
    chosen = "fused" if name != "RMSprop" else "foreach"
    assert optimizer.defaults[chosen] is True
    assert build_optimizer(name, params, 1e-3, {"foreach": False}).defaults.get("fused") in (None, False)


def test_fused_adam_follows_the_per_tensor_update_to_rounding():
    torch.manual_seed(0)
    fused, plain = (torch.nn.Parameter(torch.randn(50)) for _ in range(2))
    plain.data.copy_(fused.data)
    optimizers = build_optimizer("Adam", [fused], 1e-2), torch.optim.Adam([plain], lr=1e-2, foreach=False)
    for _ in range(20):
        grad = torch.randn(50)
        for p, optimizer in zip((fused, plain), optimizers, strict=True):
            p.grad = grad.clone()
            optimizer.step()
    torch.testing.assert_close(fused.data, plain.data, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_the_optimizer_step_is_the_plain_step_bit_for_bit_and_schedulers_see_it(name, recwarn):
    torch.manual_seed(0)
    grads = [torch.randn(30) for _ in range(6)]
    params = []
    for step in (optimizer_step, lambda optimizer: optimizer.step()):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 30))
        optimizer = build_optimizer(name, [p], 1e-2, {"momentum": 0.9} if name == "SGD" else {})
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, 2)
        for grad in grads:
            p.grad = grad.clone()
            step(optimizer)
            schedule.step()
        params.append(p.detach())
    assert torch.equal(params[0], params[1])
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)], "the schedule saw the optimizer step first"


def test_validating_a_trainer_config_and_building_its_optimizer_do_not_import_dynamo():
    """torch.optim's lazy dynamo wrappers used to pull in torch._dynamo and sympy (seconds, ~70 MB)."""
    code = (
        "import sys, torch\n"
        "from core.training import TrainerConfig\n"
        "from core.training.optimizers import build_optimizer\n"
        "config = TrainerConfig(optimizer='SGD', optimizer_params={'momentum': 0.9}, scheduler='StepLR')\n"
        "optimizer = build_optimizer(config.optimizer, [torch.nn.Parameter(torch.zeros(2))], 0.1, config.optimizer_params)\n"
        "optimizer.zero_grad(); optimizer.load_state_dict(optimizer.state_dict())\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_training_in_memory_imports_neither_dynamo_nor_sympy():
    """The default path (compile off): building, stepping, scheduling and checkpointing an optimizer."""
    code = (
        "import sys, tempfile, torch\n"
        "from core.data import MultimodalBaseDataset\n"
        "from core.models import MVAE, MVAEConfig\n"
        "from core.training import Trainer, TrainerConfig\n"
        "data = {'a': torch.rand(12, 4), 'b': torch.rand(12, 3)}\n"
        "model = MVAE(MVAEConfig(n_modalities=2, latent_dim=2, input_dims={'a': (4,), 'b': (3,)}, warmup=0))\n"
        "config = TrainerConfig(num_epochs=2, batch_size=4, device='cpu', scheduler='StepLR')\n"
        "with tempfile.TemporaryDirectory() as run:\n"
        "    Trainer(model, MultimodalBaseDataset(data), config=config, run_dir=run).train()\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
