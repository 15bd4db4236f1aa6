"""Building blocks shared by the decode heads, shaped like MMSegmentation's (mmcv's) so module names match.

``ConvModule`` is conv (no bias) → BN → ReLU with children ``conv``, ``bn`` and ``activate``, initialized
the way mmcv does it (Kaiming normal, fan_out, ReLU gain; BN weight 1, bias 0). Heads upsample only
through :func:`resize`, a thin wrapper over ``F.interpolate``, so graph analysis sees every upsample.

>>> import torch
>>> block = ConvModule(8, 4, 3, padding=1)
>>> block(torch.randn(2, 8, 5, 5)).shape
torch.Size([2, 4, 5, 5])
>>> [name for name, _ in block.named_children()]
['conv', 'bn', 'activate']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize(
    x: torch.Tensor,
    size: Sequence[int] | torch.Size,
    mode: str = "bilinear",
    align_corners: bool = False,
) -> torch.Tensor:
    """Resample ``x`` to spatial ``size`` with ``F.interpolate`` (MMSegmentation's ``resize``).

    Args:
        x: NCHW tensor.
        size: target (height, width).
        mode: interpolation mode.
        align_corners: passed through; MMSegmentation's configs use False.

    Returns:
        The resampled tensor.

    >>> resize(torch.zeros(1, 2, 4, 4), (8, 16)).shape
    torch.Size([1, 2, 8, 16])
    """
    # No shape-dependent Python branches here: the graph tracer must see a single interpolate call.
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


class ConvModule(nn.Module):
    """Conv2d without bias → BatchNorm2d → ReLU (mmcv ``ConvModule`` with ``norm_cfg=BN``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: conv stride.
        padding: conv padding.
        dilation: conv dilation.
        groups: conv groups (``in_channels`` for a depthwise conv).
        act: append a ReLU (``activate``); mmcv's default is True.
        inplace: whether the ReLU is in place (mmseg's UPerHead laterals use ``inplace=False``).

    >>> ConvModule(4, 4, 1, act=False)(torch.zeros(1, 4, 2, 2)).shape
    torch.Size([1, 4, 2, 2])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        act: bool = True,
        inplace: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,  # mmcv's bias="auto": no bias when a norm layer follows
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=inplace) if act else None
        # mmcv ConvModule.init_weights: kaiming_init(mode="fan_out", nonlinearity="relu"), norm to (1, 0).
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if self.activate is not None:
            x = self.activate(x)
        return x


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise ``ConvModule`` then pointwise 1×1 ``ConvModule``, each with BN and ReLU (mmcv's defaults).

    Args:
        in_channels: input channels (and depthwise groups).
        out_channels: output channels of the pointwise conv.
        kernel_size: depthwise kernel size.
        padding: depthwise padding.
        dilation: depthwise dilation.

    >>> m = DepthwiseSeparableConvModule(6, 3, 3, padding=1)
    >>> m.depthwise_conv.conv.groups, m(torch.zeros(1, 6, 4, 4)).shape
    (6, torch.Size([1, 3, 4, 4]))
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, dilation: int = 1
    ) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(
            in_channels, in_channels, kernel_size, padding=padding, dilation=dilation, groups=in_channels
        )
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))
