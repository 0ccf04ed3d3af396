r"""The adversarial term of MHVAE (Dorent et al. 2023): one PatchGAN discriminator per image modality,
trained with least squares (LSGAN, Mao et al. 2017) against the decoder's synthesized volumes.

With D_m the discriminator of modality m, x a real volume and x^ a synthesized one:

    L_D = 1/2 E[(D_m(x) - 1)^2] + 1/2 E[D_m(x^)^2],      L_G = E[(D_m(x^) - 1)^2].

Both are minimised in the model's one backward pass: L_D sees the synthesized volumes detached (it only
trains D), and L_G evaluates D with its parameters detached (it only trains the generator), so one
optimizer serves both, as the trainer expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from core.nn.default_architectures import channels_last

__all__ = ["PatchDiscriminator", "least_squares_losses"]


class PatchDiscriminator(nn.Module):
    """Strided 4x4(x4) convolutions with instance norm and LeakyReLU(0.2), then one score per patch.

    ``n_layers`` halvings (at most as many as leave a 2-voxel grid for the last instance norm of ``grid``).
    """

    def __init__(self, dims: int, in_channels: int, grid: Sequence[int], width: int = 16, n_layers: int = 3) -> None:
        super().__init__()
        n_layers = max(1, min(n_layers, int(math.log2(max(2, min(grid)))) - 1))
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
        layers: list[nn.Module] = [conv(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(n_layers - 1):
            layers += [conv(channels, 2 * channels, 4, stride=2, padding=1), norm(2 * channels, affine=True), nn.LeakyReLU(0.2)]
            channels *= 2
        layers.append(conv(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(channels_last(x))


def least_squares_losses(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_G, L_D)`` of the module docstring for one modality; empty batches give zeros."""
    if real.shape[0] == 0 or fake.shape[0] == 0:
        zero = fake.sum() * 0
        return zero, zero
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    generator_loss = (functional_call(discriminator, frozen, (fake,)) - 1).pow(2).mean()
    discriminator_loss = 0.5 * (discriminator(real) - 1).pow(2).mean() + 0.5 * discriminator(fake.detach()).pow(2).mean()
    return generator_loss, discriminator_loss
