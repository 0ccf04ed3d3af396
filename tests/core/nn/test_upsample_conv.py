"""The coarse-grid (transposed-convolution) form of resize-convolution computes what nearest-resize-then-convolve computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.nn.default_architectures import ConvDecoder, ResizeConv, channels_last, upsample_conv
from core.nn.hierarchical import UpsampleConvBlock


def _reference(x: torch.Tensor, conv: nn.Module, size: tuple[int, ...]) -> torch.Tensor:
    return conv(nn.functional.interpolate(x, size=size, mode="nearest"))


@pytest.mark.parametrize("grid", [(5, 6, 7), (1, 3, 2), (4, 5)])
def test_sub_pixel_form_matches_resize_then_convolve_values_and_gradients(grid: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    conv = (nn.Conv3d if len(grid) == 3 else nn.Conv2d)(3, 2, kernel_size=3, padding=1).double()
    x = channels_last(torch.randn(2, 3, *grid, dtype=torch.float64)).requires_grad_()
    size = tuple(2 * s for s in grid)
    expected = _reference(x, conv, size)
    got = upsample_conv(x, conv)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    weights = torch.randn_like(expected)
    grads_expected = torch.autograd.grad((expected * weights).sum(), [x, conv.weight, conv.bias])
    grads_got = torch.autograd.grad((got * weights).sum(), [x, conv.weight, conv.bias])
    for a, b in zip(grads_got, grads_expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_a_size_that_is_not_a_doubling_takes_the_plain_resize() -> None:
    torch.manual_seed(1)
    conv = nn.Conv3d(2, 2, kernel_size=3, padding=1).double()
    x = torch.randn(1, 2, 5, 4, 3, dtype=torch.float64)
    size = (9, 8, 5)  # odd grids halve by floor, so their way back up is not an exact doubling
    torch.testing.assert_close(upsample_conv(x, conv, size), _reference(x, conv, size), rtol=0, atol=0)


def test_the_output_stays_channels_last_for_the_next_convolution() -> None:
    conv = nn.Conv3d(4, 3, kernel_size=3, padding=1)
    out = upsample_conv(channels_last(torch.randn(2, 4, 3, 4, 5)), conv)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_parameters_are_those_of_the_plain_convolution_so_checkpoints_load() -> None:
    assert sorted(ResizeConv(3, 4, 2).state_dict()) == ["conv.bias", "conv.weight"]
    block = UpsampleConvBlock(3, 4, 2, grid=(6, 6, 6))
    assert sorted(block.state_dict())[:2] == ["block.0.bias", "block.0.weight"]


def test_decoders_built_on_it_give_the_plain_resize_results() -> None:
    torch.manual_seed(2)
    decoder = ConvDecoder(latent_dim=4, output_shape=(1, 20, 24, 18)).double().eval()
    z = torch.randn(3, 4, dtype=torch.float64)
    got = decoder(z).reconstruction

    def plain_forward(module: nn.Module, args: tuple, _kwargs: dict) -> torch.Tensor:
        x = args[0]
        return module.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))

    hooks = [m.register_forward_hook(lambda m, a, o: plain_forward(m, a, {})) for m in decoder.modules() if isinstance(m, ResizeConv)]
    try:
        expected = decoder(z).reconstruction
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
