"""What the model tests share, handed out as fixtures (tests/ is not a package, so nothing is imported
from here): input shapes, a batch builder, a model factory, the toy two-view problem with its short
training loop and mean baseline, and the checks that every model's tests make."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from core.data import DatasetOutput, IncompleteDataset, MultimodalBaseDataset
from core.models import ConfigError, TrainingProgress, config_from_dict, load
from core.models._shared.subsets import all_subsets
from core.nn import MLPDecoder, MLPEncoder

Dims = dict[str, tuple[int, ...]]

SHAPES: dict[str, Dims] = {
    "vector": {"a": (8,), "b": (8,), "c": (5,)},
    "image": {"a": (1, 16, 16), "b": (1, 16, 16)},
    "volume": {"a": (1, 16, 16, 16), "b": (1, 16, 16, 16)},
}


class ToyProblem:
    """Two 8-d views 'a' and 'b' of a shared 2-d latent through fixed random non-linear maps
    (256 training and 128 validation samples), and what the short-training tests do with them."""

    dims: Dims = {"a": (8,), "b": (8,)}

    def __init__(self) -> None:
        self.train, self.val = self.views(256, seed=0), self.views(128, seed=1)

    @staticmethod
    def views(n: int, seed: int) -> MultimodalBaseDataset:
        g = torch.Generator().manual_seed(seed)
        maps = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(100))
        z = torch.randn(n, 2, generator=g)
        return MultimodalBaseDataset(
            {m: torch.tanh(z @ maps[i]) + 0.05 * torch.randn(n, 8, generator=g) for i, m in enumerate("ab")}
        )

    def config(self, config_cls, **overrides):
        """A 4-d latent and Gaussian decoders of scale 0.1."""
        scales = {m: {"scale": 0.1} for m in self.dims}
        return config_cls(n_modalities=2, latent_dim=4, input_dims=self.dims, decoder_dist_params=scales, **overrides)

    def small_vaes(self, width: int = 64) -> tuple[dict, dict]:
        """Narrow unimodal encoders and decoders: the tests are about the objective, not the default widths."""
        encoders = {m: MLPEncoder((8,), 4, hidden=(width,)) for m in self.dims}
        decoders = {m: MLPDecoder(4, (8,), hidden=(width,)) for m in self.dims}
        return encoders, decoders

    def val_loss(self, model, progress: TrainingProgress | None = None) -> float:
        model.eval()
        with torch.no_grad():
            return float(model(self.val, progress).loss)

    def train_epoch(self, model, optimizer: torch.optim.Optimizer, epoch: int, batch_size: int = 32) -> None:
        model.train()
        for idx in torch.randperm(len(self.train)).split(batch_size):
            loss = model(self.train.subset(idx.tolist()).as_batch(), TrainingProgress(epoch)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def fit(self, model, optimizer: torch.optim.Optimizer, epochs: int, val_progress: TrainingProgress | None = None):
        """Train for ``epochs`` epochs; the validation loss (at ``val_progress``) before and after."""
        before = self.val_loss(model, val_progress)
        for epoch in range(1, epochs + 1):
            self.train_epoch(model, optimizer, epoch)
        return before, self.val_loss(model, val_progress)

    def b_from_a_errors(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean squared error of 'b' predicted from 'a' on the validation views, and that of the
        mean training 'b' (the baseline)."""
        prediction = model.predict(self.val, cond_mod="a", gen_mod="b")["b"]
        mse = (prediction - self.val.data["b"]).pow(2).mean()
        baseline = (self.train.data["b"].mean(0) - self.val.data["b"]).pow(2).mean()
        return mse, baseline


@pytest.fixture
def shapes() -> dict[str, Dims]:
    """Input dims by kind of data: 'vector' (three modalities), 'image' and 'volume' (two)."""
    return {kind: dict(dims) for kind, dims in SHAPES.items()}


@pytest.fixture(params=list(SHAPES))
def input_dims(request, shapes) -> Dims:
    """Parametrized: a test that asks for it runs once on the dims of each kind of data."""
    return shapes[request.param]


@pytest.fixture
def vectors(shapes) -> Dims:
    return shapes["vector"]


@pytest.fixture
def make_batch() -> Callable[..., DatasetOutput]:
    """make_batch(input_dims=vectors, n=5, missing=None, **options): n random samples of every modality;
    ``missing`` names the rows where a modality is not observed (``options`` then go to IncompleteDataset)."""

    def make(input_dims: Dims | None = None, n: int = 5, missing: dict[str, list[int]] | None = None, **options):
        input_dims = SHAPES["vector"] if input_dims is None else input_dims
        data = {m: torch.randn(n, *shape) for m, shape in input_dims.items()}
        if not missing:
            return MultimodalBaseDataset(data).as_batch()
        masks = {m: torch.ones(n, dtype=torch.bool) for m in input_dims}
        for m, rows in missing.items():
            masks[m][rows] = False
        return IncompleteDataset(data, masks, **options).as_batch()

    return make


@pytest.fixture
def model_factory() -> Callable[..., Callable[..., Any]]:
    """model_factory(model_cls, **defaults) gives make_model(input_dims=vectors, modules=None, **overrides):
    a model_cls with a 4-d latent, its config overrides on top of ``defaults``, its modules the user's."""

    def factory(model_cls, **defaults):
        def make_model(input_dims: Dims | None = None, modules: dict | None = None, **overrides):
            input_dims = SHAPES["vector"] if input_dims is None else input_dims
            config = model_cls.config_class(
                n_modalities=len(input_dims), latent_dim=4, input_dims=input_dims, **{**defaults, **overrides}
            )
            return model_cls(config, **(modules or {}))

        return make_model

    return factory


@pytest.fixture
def every_subset(make_batch) -> Callable[..., Iterator[tuple[DatasetOutput, list[str], tuple[int, ...]]]]:
    """every_subset(input_dims, n_samples): one batch of 4 random samples, then for every subset of its
    modalities (batch, subset, lead), lead being the leading dims of what encode and predict give with
    N=n_samples."""

    def cases(input_dims: Dims, n_samples: int):
        batch = make_batch(input_dims, 4)
        lead = (4,) if n_samples == 1 else (n_samples, 4)
        for subset in all_subsets(list(input_dims)):
            yield batch, list(subset), lead

    return cases


@pytest.fixture
def toy() -> ToyProblem:
    return ToyProblem()


@pytest.fixture
def round_trip(tmp_path: Path) -> Callable[[Any], Any]:
    """round_trip(model): save the model, load the bundle back, and put both in eval mode."""

    def saved_and_loaded(model):
        model.eval()
        model.save(tmp_path / "bundle")
        loaded = load(tmp_path / "bundle")
        loaded.eval()
        return loaded

    return saved_and_loaded


@pytest.fixture
def under_seed() -> Callable[..., Any]:
    """under_seed(seed, fn, *args, **kwargs): fn(*args, **kwargs) right after torch.manual_seed(seed)."""

    def call(seed: int, fn: Callable[..., Any], *args, **kwargs):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)

    return call


@pytest.fixture
def with_noise_where_missing() -> Callable[[DatasetOutput], DatasetOutput]:
    """The batch with large random values in place of every unobserved value (of vector modalities)."""

    def noisy(batch: DatasetOutput) -> DatasetOutput:
        changed = DatasetOutput(batch)
        changed["data"] = {
            m: torch.where(batch.masks[m].view(-1, 1), x, 10 * torch.randn_like(x)) for m, x in batch.data.items()
        }
        return changed

    return noisy


@pytest.fixture
def assert_finite_gradients() -> Callable[[torch.nn.Module], None]:
    """Every parameter of the model has a finite gradient."""

    def check(model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name

    return check


@pytest.fixture
def assert_predictions() -> Callable[..., None]:
    """assert_predictions(out, input_dims, lead): every modality is there, finite, of shape (*lead, *dims)."""

    def check(out: dict[str, torch.Tensor], input_dims: Dims, lead: tuple[int, ...]) -> None:
        for m, shape in input_dims.items():
            assert out[m].shape == (*lead, *shape) and torch.isfinite(out[m]).all(), m

    return check


@pytest.fixture
def assert_plain_decoders() -> Callable[[Any], None]:
    """The seed defaults that the configs share: no likelihood rescaling, default decoders, no user modules."""

    def check(config) -> None:
        assert config.uses_likelihood_rescaling is False and config.rescale_factors is None
        assert config.decoders_dist is None and config.decoder_dist_params is None and config.custom_architectures == []

    return check


@pytest.fixture
def assert_config_errors() -> Callable[..., None]:
    """assert_config_errors(config_cls, [(payload, pattern), ...]): each payload is refused by
    config_from_dict with a ConfigError whose message matches its pattern."""

    def check(config_cls, cases: list[tuple[dict, str]]) -> None:
        for payload, pattern in cases:
            with pytest.raises(ConfigError, match=pattern):
                config_from_dict(config_cls, payload)

    return check
