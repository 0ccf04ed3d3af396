"""MVAE learns the demo cohort: the validation loss falls, and T2 imputed from T1 on held-out subjects
beats the mean-image baseline (the mean T2 of the training subjects that have one)."""

from __future__ import annotations

import torch

from core.data import MultimodalBaseDataset, split_by_subject
from core.data.demo import DemoSpec, MissingSpec, make_demo_dataset
from core.models import MVAE, MVAEConfig
from core.training import Trainer, TrainerConfig


def test_mvae_on_demo_data_beats_the_mean_image_for_t2_from_t1():
    spec = DemoSpec(
        n_subjects=64, shape=(48, 56), dims=2, modalities=("T1", "T2"), seed=5,
        missing=MissingSpec(kind="mcar", rates={"T2": 0.3}),
    )
    data, truth = make_demo_dataset(spec)
    train, validation, test = split_by_subject(data, (0.7, 0.1, 0.2), seed=0)
    torch.manual_seed(0)
    model = MVAE(MVAEConfig(n_modalities=2, latent_dim=16, input_dims=data.input_dims, warmup=2))
    result = Trainer(model, train, validation, TrainerConfig(num_epochs=15, batch_size=8, learning_rate=2e-3)).train()
    losses = [r.validation["loss"] for r in result.history]
    assert min(losses[-3:]) < losses[0]

    held_out = [truth.ids.index(s) for s in test.ids]
    t1, t2 = truth.data["T1"][held_out], truth.data["T2"][held_out]
    assert not set(test.ids) & set(train.ids)
    predicted = model.predict(MultimodalBaseDataset({"T1": t1, "T2": torch.zeros_like(t2)}), cond_mod=["T1"], gen_mod=["T2"],
                              N=8)["T2"].mean(0)
    mean_image = train.data["T2"][train.masks["T2"]].mean(0, keepdim=True)
    brain = t1 != 0
    model_error = ((predicted - t2)[brain] ** 2).mean()
    baseline_error = ((mean_image - t2).expand_as(t2)[brain] ** 2).mean()
    assert model_error < 0.9 * baseline_error, (model_error, baseline_error)
