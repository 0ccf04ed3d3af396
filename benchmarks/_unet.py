"""A small supervised U-Net translator: the strongest non-generative reference of the synthesis benchmark.

One network per task maps the conditioning volumes (as channels) to the target volume. Resize
convolutions (trilinear or bilinear upsampling, then a 3x3x3 convolution) instead of transposed
convolutions, so it shows no checkerboard; instance norm, since batches are a few volumes. Any grid
size works: each upsampled map is resized to its skip connection. Benchmark-only code, not product.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ResizeConvUNet", "train_unet", "predict_unet"]


def _block(dims: int, c_in: int, c_out: int) -> nn.Sequential:
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dims == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    return nn.Sequential(
        conv(c_in, c_out, 3, padding=1), norm(c_out, affine=True), nn.LeakyReLU(0.1),
        conv(c_out, c_out, 3, padding=1), norm(c_out, affine=True), nn.LeakyReLU(0.1),
    )  # fmt: skip


class ResizeConvUNet(nn.Module):
    """U-Net with ``len(channels) - 1`` halvings of the grid (average pooling) and resize-conv upsampling."""

    def __init__(self, in_channels: int, out_channels: int = 1, channels: tuple[int, ...] = (16, 32, 64), dims: int = 3) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}.")
        self.dims = dims
        self.down = nn.ModuleList([_block(dims, c_in, c_out) for c_in, c_out in zip((in_channels, *channels[:-1]), channels, strict=True)])
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.up = nn.ModuleList([conv(c_deep, c_skip, 3, padding=1)
                                 for c_deep, c_skip in zip(channels[:0:-1], channels[-2::-1], strict=True)])
        self.merge = nn.ModuleList([_block(dims, 2 * c, c) for c in channels[-2::-1]])
        self.head = conv(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool3d if self.dims == 3 else F.avg_pool2d
        mode = "trilinear" if self.dims == 3 else "bilinear"
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else pool(x, 2, ceil_mode=True))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1], strict=True):
            x = up(F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False))
            x = merge(torch.cat([x, skip], dim=1))
        return self.head(x)


def train_unet(
    inputs: torch.Tensor,
    target: torch.Tensor,
    observed: torch.Tensor,
    epochs: int,
    time_budget_s: float | None = None,
    batch_size: int = 4,
    learning_rate: float = 1e-3,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[ResizeConvUNet, dict[str, float]]:
    """Fit a U-Net on ``(n, C, *grid)`` inputs to ``(n, 1, *grid)`` targets with the MSE over the
    ``observed`` target voxels; stops after ``epochs`` or once ``time_budget_s`` is spent (checked
    after each epoch, as the trainer does). Returns the network and ``{epochs, seconds, final_loss}``."""
    torch.manual_seed(seed)
    device = torch.device(device)
    net = ResizeConvUNet(inputs.shape[1], target.shape[1], dims=inputs.dim() - 2).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    done, loss_value = 0, float("nan")
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        total, count = 0.0, 0
        for begin in range(0, len(order), batch_size):
            index = order[begin : begin + batch_size]
            x, y, w = (t[index].to(device) for t in (inputs, target, observed))
            weight = w.float()
            loss = ((net(x) - y) ** 2 * weight).sum() / weight.sum().clamp_min(1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(index), count + len(index)
        done, loss_value = done + 1, total / max(count, 1)
        if time_budget_s is not None and time.monotonic() - start > time_budget_s:
            break
    return net, {"epochs": done, "seconds": round(time.monotonic() - start, 2), "final_loss": loss_value}


@torch.no_grad()
def predict_unet(net: ResizeConvUNet, inputs: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """``(n, 1, *grid)`` predictions on the CPU."""
    net.eval()
    device = next(net.parameters()).device
    return torch.cat([net(inputs[i : i + batch_size].to(device)).cpu() for i in range(0, len(inputs), batch_size)])
