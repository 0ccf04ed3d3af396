r"""Default blocks of the multimodal hierarchical VAE (MHVAE), picked from the input shapes.

MHVAE has L = ``n_latent`` latent levels z_1 (next to the data) ... z_L (deepest, a vector of size
``latent_dim``). Per modality m, the bottom-up path computes deterministic features

    d_m^(1) = ENC_m(x_m),  d_m^(j+1) = BU_m^(j)(d_m^(j)) (j < L-1),  (mu_L, logvar_L) = BU_m^(L-1)(d_m^(L-1))

and, shared by the modalities, the top-down path computes h_l = TD_l(z_{l+1}), the prior
p(z_l | z_{l+1}) = PRIOR_l(h_l) and each expert q_m(z_l | x_m, z_{l+1}) = POST_l^m([h_l, d_m^(l)])
(concatenated on dim 1, channels or features). Decoders map z_1 to the data.

Two layouts, chosen by :func:`default_mhvae_blocks`:

* **spatial** when every modality is an image ``(C, H, W)`` or every one a volume ``(C, X, Y, Z)`` with
  the same grid: the intermediate latents z_1..z_{L-1} are feature maps (``z_channels`` channels) on
  grids that halve level by level, so the hierarchy keeps the anatomy's layout (MR/US synthesis);
  the dense layers of the vector z_L read a map of at most ``DEEPEST_VOXELS`` voxels, halved further
  by strided convolutions where the deepest level's grid is larger (a full-size volume with z_1 kept
  fine would otherwise give them about a hundred million weights);
* **vector** otherwise (vectors, or modalities of different kinds): each modality is first embedded in
  a vector of ``width`` features, and every latent is a vector of ``latent_dim``.

Gaussian heads soft-clamp means and log-variances to (-10, 10) with 10 tanh(x / 10), as the MHVAE
reference blocks do, so that products of experts stay finite early in training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from core.nn.base import EncoderOutput
from core.nn.default_architectures import _n_down, channels_last, default_decoder, mlp, upsample_conv

__all__ = [
    "soft_clamp",
    "GaussianHead",
    "FlattenGaussianHead",
    "ConvGaussianHead",
    "VectorToGrid",
    "UpsampleConvBlock",
    "NarrowUpsampleBlock",
    "ConvStem",
    "GridDecoder",
    "FeatureEncoder",
    "default_mhvae_blocks",
]


DEEPEST_VOXELS = 2048  # about 13^3: the dense layers of z_L read at most this many voxels' features at any grid


def soft_clamp(x: torch.Tensor, bound: float = 10.0) -> torch.Tensor:
    """``bound * tanh(x / bound)``: identity near 0, smoothly limited to (-bound, bound)."""
    return bound * torch.tanh(x / bound)


def _conv(dims: int, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Module:
    return (nn.Conv2d if dims == 2 else nn.Conv3d)(c_in, c_out, kernel_size=kernel, stride=stride, padding=padding)


def _conv_block(dims: int, c_in: int, c_out: int, downsample: bool) -> nn.Sequential:
    conv = _conv(dims, c_in, c_out, 4, 2, 1) if downsample else _conv(dims, c_in, c_out)
    return nn.Sequential(conv, nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())


class GaussianHead(nn.Module):
    """Vector features -> (mean, log-variance) of a vector latent, through one hidden layer."""

    def __init__(self, in_features: int, latent_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_features
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU())
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, h: torch.Tensor) -> EncoderOutput:
        h = self.body(h)
        return EncoderOutput(embedding=soft_clamp(self.mean(h)), log_covariance=soft_clamp(self.logvar(h)))


class FlattenGaussianHead(nn.Module):
    """Feature map -> (mean, log-variance) of the deepest, vector latent z_L.

    ``reduce`` (optional) runs on the feature map first: the default blocks give it strided
    convolutions on large grids, so that the dense layers read a bounded number of features.
    """

    def __init__(self, in_features: int, latent_dim: int, reduce: nn.Module | None = None) -> None:
        super().__init__()
        self.reduce = reduce if reduce is not None else nn.Identity()
        self.mean = nn.Linear(in_features, latent_dim)
        self.logvar = nn.Linear(in_features, latent_dim)

    def forward(self, h: torch.Tensor) -> EncoderOutput:
        h = self.reduce(h).flatten(1)
        return EncoderOutput(embedding=soft_clamp(self.mean(h)), log_covariance=soft_clamp(self.logvar(h)))


class ConvGaussianHead(nn.Module):
    """Feature map -> (mean, log-variance) feature maps of a spatial latent (3x3 convolution)."""

    def __init__(self, dims: int, in_channels: int, z_channels: int) -> None:
        super().__init__()
        self.conv = _conv(dims, in_channels, 2 * z_channels)

    def forward(self, h: torch.Tensor) -> EncoderOutput:
        mean, logvar = self.conv(h).chunk(2, dim=1)
        return EncoderOutput(embedding=soft_clamp(mean), log_covariance=soft_clamp(logvar))


class VectorToGrid(nn.Module):
    """Top-down block from the vector z_L to the feature map h_{L-1} of shape ``(channels, *grid)``.

    ``expand`` (optional) takes the dense layer's map on to ``h_{L-1}``'s grid: with it the dense layer
    writes ``(channels, *grid)`` of a coarser grid (the mirror of :class:`FlattenGaussianHead`'s ``reduce``).
    """

    def __init__(self, latent_dim: int, channels: int, grid: Sequence[int], expand: nn.Module | None = None) -> None:
        super().__init__()
        self.shape = (channels, *grid)
        self.net = nn.Sequential(nn.Linear(latent_dim, math.prod(self.shape)), nn.SiLU())
        self.expand = expand if expand is not None else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.expand(self.net(z).reshape(-1, *self.shape))


class UpsampleConvBlock(nn.Module):
    """Resize a feature map to ``grid`` (nearest neighbour), then 3x3 convolution, GroupNorm, SiLU."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, grid: Sequence[int]) -> None:
        super().__init__()
        self.grid = tuple(int(s) for s in grid)
        self.block = _conv_block(dims, in_channels, out_channels, downsample=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        conv, *rest = self.block
        h = conv(h) if tuple(h.shape[2:]) == self.grid else upsample_conv(h, conv, self.grid)
        for layer in rest:
            h = layer(h)
        return h


class NarrowUpsampleBlock(nn.Module):
    """The last decoder stage, made cheap: a 3x3 convolution to ``out_channels`` on the coarse grid, then a
    linear resize to the data ``grid``; the decoder's head is then the one convolution at the data grid.

    On a CPU the convolutions, norms and activations at the data grid cost most of a training step
    (benchmarks: MHVAE's Synthesis preset at 40^3, 5.6 -> 3.5 s per step on one core).

    With ``refine``, the full-resolution stage of the plain decoder (:class:`UpsampleConvBlock` to
    ``max(8, in_channels // 2)`` channels) is concatenated to the linearly resized features, scaled by a
    learned gain that starts at 0 (ReZero): training starts from the narrowed decoder, whose smooth path
    carries the lesion, and the full-resolution path may add the edges a linear resize blurs.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, grid: Sequence[int], refine: bool = False) -> None:
        super().__init__()
        self.grid = tuple(int(s) for s in grid)
        self.mode = "bilinear" if dims == 2 else "trilinear"
        self.narrow = _conv_block(dims, in_channels, out_channels, downsample=False)
        refine_channels = max(8, in_channels // 2) if refine else 0
        self.refine = UpsampleConvBlock(dims, in_channels, refine_channels, grid) if refine else None
        self.refine_gain = nn.Parameter(torch.zeros(())) if refine else None
        self.out_channels = out_channels + refine_channels

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        smooth = nn.functional.interpolate(self.narrow(h), size=self.grid, mode=self.mode, align_corners=False)
        if self.refine is None:
            return smooth
        return torch.cat([smooth, self.refine_gain * self.refine(h)], dim=1)


class ConvStem(nn.Module):
    """First feature extractor of a spatial modality: ``n_down`` strided convolutions."""

    def __init__(self, dims: int, in_channels: int, channels: int, n_down: int) -> None:
        super().__init__()
        widths = [in_channels] + [max(min(8, channels), channels // 2 ** (n_down - 1 - i)) for i in range(n_down)]
        self.net = nn.Sequential(*[_conv_block(dims, a, b, downsample=True) for a, b in zip(widths[:-1], widths[1:], strict=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(channels_last(x))


class GridDecoder(nn.Module):
    """Decoder from the spatial latent z_1 back to a modality of shape ``(C, *grid)``.

    A 3x3 convolution, then one resize-and-convolve block per grid of ``grids`` (coarse to fine, the
    last being the data grid), then a 3x3 convolution to the modality's channels, with no squashing.
    With ``final_channels`` the last block is a :class:`NarrowUpsampleBlock` of that width (``refine``
    adds its full-resolution path).
    """

    def __init__(
        self,
        dims: int,
        z_channels: int,
        channels: int,
        grids: Sequence[Sequence[int]],
        out_channels: int,
        final_channels: int | None = None,
        refine: bool = False,
    ) -> None:
        super().__init__()
        self.start = _conv_block(dims, z_channels, channels, downsample=False)
        blocks: list[nn.Module] = []
        width = channels
        for k, grid in enumerate(grids):
            if final_channels is not None and k == len(grids) - 1:
                blocks.append(NarrowUpsampleBlock(dims, width, final_channels, grid, refine))
                width = blocks[-1].out_channels
                continue
            nxt = max(8, width // 2)
            blocks.append(UpsampleConvBlock(dims, width, nxt, grid))
            width = nxt
        self.up = nn.Sequential(*blocks)
        self.head = _conv(dims, width, out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.start(channels_last(z))))


class FeatureEncoder(nn.Module):
    """Any modality -> a vector of ``width`` features (vector layout of the hierarchy).

    Vectors go through an MLP; images and volumes through strided convolutions then a linear layer.
    """

    def __init__(self, input_shape: Sequence[int], width: int) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) in (3, 4):
            channels, *spatial = self.input_shape
            dims = len(spatial)
            n_down = _n_down(spatial)
            stem = ConvStem(dims, channels, 64, n_down)
            grid = _grids(spatial, n_down)[-1]
            self.net = nn.Sequential(stem, nn.Flatten(1), nn.Linear(64 * math.prod(grid), width), nn.SiLU())
        else:
            self.net = nn.Sequential(nn.Flatten(1), mlp([math.prod(self.input_shape), width, width]), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _grids(spatial: Sequence[int], n_down: int) -> list[tuple[int, ...]]:
    """The grid after each of ``n_down`` stride-2 convolutions (kernel 4, padding 1): floor(s / 2)."""
    grids = [tuple(int(s) for s in spatial)]
    for _ in range(n_down):
        grids.append(tuple(max(1, s // 2) for s in grids[-1]))
    return grids[1:]


def _spatial_grid(input_dims: Mapping[str, Sequence[int]]) -> tuple[int, ...] | None:
    shapes = [tuple(s) for s in input_dims.values()]
    if all(len(s) in (3, 4) for s in shapes) and len({s[1:] for s in shapes}) == 1:
        return shapes[0][1:]
    return None


def default_mhvae_blocks(
    input_dims: Mapping[str, Sequence[int]],
    latent_dim: int,
    n_latent: int,
    width: int = 256,
    channels: int = 64,
    z_channels: int = 8,
    downsampling: int | None = None,
    decoder_channels: int | None = None,
    decoder_refine: bool = False,
) -> dict[str, object]:
    """All MHVAE blocks for the given modalities: ``encoders``, ``decoders``, ``bottom_up_blocks``,
    ``top_down_blocks``, ``posterior_blocks`` (one list per modality) and ``prior_blocks``.

    Args:
        input_dims: modality -> per-sample shape.
        latent_dim: size of the deepest latent z_L.
        n_latent: number of levels L (>= 2).
        width: feature size of the vector layout.
        channels: feature channels of the spatial layout (level 1; doubled per level, at most 2x).
        z_channels: channels of the intermediate spatial latents.
        downsampling: how many times the grid halves before z_1 (None: as many as leave the coarsest level
            about 4 voxels per axis, minus one halving per further level); at least 1.
        decoder_channels: width of the decoders' last stage, at the data grid (None: half of ``channels``,
            at least 8, resized by nearest neighbour); see :class:`NarrowUpsampleBlock`.
        decoder_refine: with ``decoder_channels``, add the full-resolution path beside the narrowed stage.
    """
    if n_latent < 2:
        raise ValueError(f"MHVAE needs n_latent >= 2 levels; got {n_latent}.")
    grid = _spatial_grid(input_dims)
    if grid is None:
        return _vector_blocks(input_dims, latent_dim, n_latent, width)
    return _spatial_blocks(
        input_dims, grid, latent_dim, n_latent, channels, z_channels, downsampling, decoder_channels, decoder_refine
    )


def _vector_blocks(input_dims: Mapping[str, Sequence[int]], latent_dim: int, n_latent: int, width: int) -> dict[str, object]:
    levels = n_latent - 1
    return {
        "encoders": {m: FeatureEncoder(shape, width) for m, shape in input_dims.items()},
        "decoders": {m: default_decoder(latent_dim, shape) for m, shape in input_dims.items()},
        "bottom_up_blocks": {
            m: [nn.Sequential(nn.Linear(width, width), nn.SiLU()) for _ in range(levels - 1)] + [GaussianHead(width, latent_dim)]
            for m in input_dims
        },
        "top_down_blocks": [nn.Sequential(nn.Linear(latent_dim, width), nn.SiLU()) for _ in range(levels)],
        "posterior_blocks": {m: [GaussianHead(2 * width, latent_dim, width) for _ in range(levels)] for m in input_dims},
        "prior_blocks": [GaussianHead(width, latent_dim) for _ in range(levels)],
    }


def _spatial_blocks(
    input_dims: Mapping[str, Sequence[int]],
    grid: Sequence[int],
    latent_dim: int,
    n_latent: int,
    channels: int,
    z_channels: int,
    downsampling: int | None,
    decoder_channels: int | None,
    decoder_refine: bool,
) -> dict[str, object]:
    dims = len(grid)
    levels = n_latent - 1  # levels 1..L-1 carry feature maps d^(l), h_l and spatial latents z_l
    n_down = _n_down(grid)
    bu_down = min(levels - 1, n_down - 1)  # bottom-up blocks that halve the grid; the stem does the rest
    stem_down = n_down - bu_down if downsampling is None else downsampling
    if stem_down < 1:
        raise ValueError(f"The default MHVAE blocks halve the grid at least once before z_1; got downsampling={downsampling}.")
    stem_grids = _grids(grid, stem_down)
    level_grids = [stem_grids[-1]]
    for j in range(levels - 1):
        level_grids.append(_grids(level_grids[-1], 1)[0] if j < bu_down else level_grids[-1])
    widths = [min(channels * 2 ** min(j, 1), 2 * channels) for j in range(levels)]

    # Grids between h_{L-1} and the dense layers of z_L, which read at most DEEPEST_VOXELS voxels.
    deep_grids = [level_grids[-1]]
    while math.prod(deep_grids[-1]) > DEEPEST_VOXELS and min(deep_grids[-1]) >= 2:
        deep_grids.append(_grids(deep_grids[-1], 1)[0])

    def bottom_up() -> list[nn.Module]:
        blocks: list[nn.Module] = [_conv_block(dims, widths[j], widths[j + 1], downsample=j < bu_down) for j in range(levels - 1)]
        reduce = nn.Sequential(*[_conv_block(dims, widths[-1], widths[-1], downsample=True) for _ in deep_grids[1:]])
        return [*blocks, FlattenGaussianHead(widths[-1] * math.prod(deep_grids[-1]), latent_dim, reduce)]

    expand = nn.Sequential(*[UpsampleConvBlock(dims, widths[-1], widths[-1], g) for g in deep_grids[-2::-1]])
    top_down: list[nn.Module] = [
        UpsampleConvBlock(dims, z_channels, widths[l], level_grids[l]) for l in range(levels - 1)  # noqa: E741
    ] + [VectorToGrid(latent_dim, widths[-1], deep_grids[-1], expand)]  # empty Sequentials pass the map through
    decoder_grids = [*stem_grids[:-1][::-1], tuple(grid)]
    return {
        "encoders": {m: ConvStem(dims, shape[0], widths[0], stem_down) for m, shape in input_dims.items()},
        "decoders": {
            m: GridDecoder(dims, z_channels, widths[0], decoder_grids, shape[0], decoder_channels, decoder_refine)
            for m, shape in input_dims.items()
        },
        "bottom_up_blocks": {m: bottom_up() for m in input_dims},
        "top_down_blocks": top_down,
        "posterior_blocks": {m: [ConvGaussianHead(dims, 2 * widths[l], z_channels) for l in range(levels)] for m in input_dims},  # noqa: E741
        "prior_blocks": [ConvGaussianHead(dims, widths[l], z_channels) for l in range(levels)],  # noqa: E741
    }
