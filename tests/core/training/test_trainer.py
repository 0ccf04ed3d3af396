from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from core.data import IncompleteDataset, split_by_subject
from core.models import MVAE, MVAEConfig, TrainingStage, load
from core.training import (
    Callback,
    Trainer,
    TrainerConfig,
    TrainingControl,
    TrainingDiverged,
    latest_checkpoint,
    read_metrics_csv,
)

INPUT_DIMS = {"a": (12,), "b": (12,), "c": (6,)}


def toy_dataset(n: int = 48) -> IncompleteDataset:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 3, generator=g)
    maps = {m: torch.randn(3, s[0], generator=g) for m, s in INPUT_DIMS.items()}
    data = {m: z @ w + 0.05 * torch.randn(n, w.shape[1], generator=g) for m, w in maps.items()}
    masks = {m: torch.rand(n, generator=g) > 0.25 for m in INPUT_DIMS}
    masks["a"] |= ~(masks["b"] | masks["c"])
    return IncompleteDataset(data, masks, ids=[f"s{i}" for i in range(n)])


@pytest.fixture(scope="module")
def splits():
    return split_by_subject(toy_dataset(), (0.7, 0.3, 0.0), seed=0)[:2]


def new_model(**overrides) -> MVAE:
    torch.manual_seed(11)
    values = {"warmup": 2, "k": 1, **overrides}
    return MVAE(MVAEConfig(n_modalities=3, latent_dim=3, input_dims=INPUT_DIMS, **values))


def config(**overrides) -> TrainerConfig:
    values = {"num_epochs": 5, "batch_size": 8, "learning_rate": 3e-3, "seed": 4}
    values.update(overrides)
    return TrainerConfig(**values)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    for name in a:
        assert torch.equal(a[name], b[name]), name


class Trigger(Callback):
    """Calls ``action`` once, after training step ``step`` of epoch ``epoch``."""

    def __init__(self, epoch: int, step: int, action) -> None:
        self.epoch, self.step, self.action, self.fired = epoch, step, action, False

    def on_batch_end(self, trainer, progress) -> None:
        if not self.fired and progress.phase == "train" and progress.epoch == self.epoch and progress.batch == self.step:
            self.fired = True
            self.action(trainer)


def test_training_lowers_the_validation_loss_and_writes_the_run(tmp_path, splits):
    train, validation = splits
    model = new_model()
    result = Trainer(model, train, validation, config(num_epochs=8), run_dir=tmp_path).train()
    assert result.status == "completed" and result.epochs_completed == 8
    # Compared under one objective: during the KL warm-up (epochs 1-2) the loss weighs the KL less, so
    # those epochs' losses are lower by construction, not by training.
    losses = [r.validation["loss"] for r in result.history[model.start_keep_best_epoch - 1 :]]
    assert losses[-1] < losses[0]
    assert (tmp_path / "metrics.csv").read_text(encoding="utf-8").count("\n") == 9
    assert json.loads((tmp_path / "status.json").read_text(encoding="utf-8"))["status"] == "completed"
    final = load(tmp_path / "final_model")
    best_record = min(result.history[model.start_keep_best_epoch :], key=lambda r: r.validation["loss"])
    assert result.best_epoch == best_record.epoch
    assert_same_weights(weights(final), weights(model))


def test_metrics_csv_reads_back_what_the_trainer_wrote(tmp_path, splits):
    train, validation = splits
    result = Trainer(new_model(), train, validation, config(num_epochs=2), run_dir=tmp_path).train()
    with open(tmp_path / "metrics.csv", "a", encoding="utf-8") as handle:
        handle.write("torn,row\n")  # a hand-edited or torn last line is skipped, not a crash
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["stage"] == result.history[1].stage
    assert rows[1]["val/loss"] == pytest.approx(result.history[1].validation["loss"])


def test_metrics_csv_empty_cells_become_the_missing_value(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,stage,train/loss,val/loss\n1,joint,2.5,\n", encoding="utf-8")
    assert read_metrics_csv(path)[0]["val/loss"] is None
    assert math.isnan(read_metrics_csv(path, missing=math.nan)[0]["val/loss"])
    assert read_metrics_csv(path)[0]["train/loss"] == 2.5


def test_checkpoints_are_complete_pickle_free_and_atomic(tmp_path, splits):
    train, validation = splits
    Trainer(new_model(), train, validation, config(num_epochs=3), run_dir=tmp_path).train()
    last = latest_checkpoint(tmp_path)
    assert last is not None and last.name == "epoch-0003"
    suffixes = {p.suffix for p in last.iterdir()}
    assert suffixes <= {".safetensors", ".json"}
    assert not list((tmp_path / "checkpoints").glob(".*staging*"))
    state = json.loads((last / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["epoch"] == 3 and len(state["history"]) == 3


def test_resume_equals_uninterrupted(tmp_path, splits):
    train, validation = splits
    straight = new_model()
    Trainer(straight, train, validation, config(keep_best=False), run_dir=tmp_path / "a").train()

    interrupted = new_model()
    Trainer(interrupted, train, validation, config(num_epochs=2, keep_best=False), run_dir=tmp_path / "b").train()
    resumed = new_model()
    result = Trainer(resumed, train, validation, config(keep_best=False), run_dir=tmp_path / "b").train(resume_from=tmp_path / "b")
    assert result.epochs_completed == 5 and len(result.history) == 5
    assert_same_weights(weights(straight), weights(resumed))


def test_stop_and_keep_mid_epoch_then_resume_equals_uninterrupted(tmp_path, splits):
    train, validation = splits
    straight = new_model()
    Trainer(straight, train, validation, config(num_epochs=3, keep_best=False)).train()

    control = TrainingControl()
    stopper = Trigger(epoch=2, step=2, action=lambda trainer: control.request_stop())
    first = Trainer(new_model(), train, validation, config(num_epochs=3, keep_best=False), [stopper], tmp_path, control)
    result = first.train()
    assert result.status == "stopped" and result.epochs_completed == 1
    assert latest_checkpoint(tmp_path).name == "epoch-0001-step-00002"

    resumed = new_model()
    Trainer(resumed, train, validation, config(num_epochs=3, keep_best=False), run_dir=tmp_path).train(resume_from=tmp_path)
    assert_same_weights(weights(straight), weights(resumed))


def test_cancel_keeps_the_run_folder_and_last_checkpoint(tmp_path, splits):
    train, validation = splits
    control = TrainingControl()
    canceller = Trigger(epoch=3, step=1, action=lambda trainer: control.request_cancel())
    result = Trainer(new_model(), train, validation, config(), [canceller], tmp_path, control).train()
    assert result.status == "cancelled"
    assert latest_checkpoint(tmp_path).name == "epoch-0002"
    assert json.loads((tmp_path / "status.json").read_text(encoding="utf-8"))["status"] == "cancelled"
    # resumable after a cancel too
    resumed = Trainer(new_model(), train, validation, config(), run_dir=tmp_path).train(resume_from=tmp_path)
    assert resumed.status == "completed" and resumed.epochs_completed == 5


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, splits):
    train, validation = splits

    def poison(trainer):
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(float("nan"))

    trainer = Trainer(new_model(), train, validation, config(), [Trigger(3, 1, poison)], tmp_path)
    with pytest.raises(TrainingDiverged, match="learning rate") as info:
        trainer.train()
    assert "epoch-0002" in str(info.value)
    assert json.loads((tmp_path / "status.json").read_text(encoding="utf-8"))["status"] == "failed"
    good = latest_checkpoint(tmp_path)
    assert good.name == "epoch-0002"
    restored = new_model()
    Trainer(restored, train, validation, config(), run_dir=tmp_path).load_checkpoint(good)
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_early_stopping_and_keep_best(tmp_path, splits):
    train, validation = splits
    result = Trainer(
        new_model(warmup=0),
        train,
        validation,
        config(num_epochs=20, learning_rate=1e-9, early_stopping_patience=2, early_stopping_min_delta=10.0),
        run_dir=tmp_path,
    ).train()
    assert result.status == "early_stopped"
    assert result.epochs_completed == 3 and result.best_epoch == 1
    assert "Early stopping" in result.message


def test_pause_blocks_between_steps_until_resumed(splits):
    train, validation = splits
    control = TrainingControl()
    events: list[bool] = []

    class Recorder(Callback):
        def on_pause(self, trainer, paused):
            events.append(paused)
            if paused:
                threading.Timer(0.2, control.resume).start()

    pauser = Trigger(1, 1, lambda trainer: control.pause())
    result = Trainer(new_model(), train, validation, config(num_epochs=2), [pauser, Recorder()], control=control).train()
    assert result.status == "completed" and events == [True, False]


def test_gradient_clipping_bounds_the_norm(splits):
    train, _ = splits
    norms: list[float] = []

    class Norms(Callback):
        def on_epoch_end(self, trainer, record):
            norms.append(record.train["grad_norm"])

    Trainer(new_model(), train, None, config(num_epochs=2, grad_clip_norm=1e-3), [Norms()]).train()
    assert all(n > 1e-3 for n in norms)  # the pre-clipping norm is reported, and it exceeds the bound


class TwoStageMVAE(MVAE):
    """Stage 'joint' trains everything; stage 'decoders' trains only the decoders."""

    @property
    def stages(self):
        return [TrainingStage("joint", 1), TrainingStage("decoders", 3)]

    def parameters_for_stage(self, stage):
        return list(self.decoders.parameters()) if stage.name == "decoders" else list(self.parameters())

    def enter_stage(self, stage):
        self.encoders.requires_grad_(stage.name != "decoders")


def test_multistage_reloads_best_weights_and_trains_only_the_stage_parameters(tmp_path, splits):
    train, validation = splits
    torch.manual_seed(11)
    model = TwoStageMVAE(MVAEConfig(n_modalities=3, latent_dim=3, input_dims=INPUT_DIMS, warmup=0))
    snapshots = {}

    class Snapshot(Callback):
        def on_epoch_start(self, trainer, epoch, stage):
            snapshots[epoch] = (stage, weights(trainer.model))

    result = Trainer(model, train, validation, config(num_epochs=5), [Snapshot()], tmp_path).train()
    assert [r.stage for r in result.history] == ["joint", "joint", "decoders", "decoders", "decoders"]
    encoder_keys = [k for k in snapshots[3][1] if k.startswith("encoders.")]
    final = weights(model)
    for key in encoder_keys:  # encoders frozen in stage 2
        assert torch.equal(snapshots[3][1][key], final[key])
    assert any(not torch.equal(snapshots[3][1][k], final[k]) for k in final if k.startswith("decoders."))
