"""ASPP decode heads mirroring MMSegmentation 1.x: ``ASPPHead`` (DeepLabV3) and
``DepthwiseSeparableASPPHead`` (DeepLabV3+).

Fusion sites:

    ASPPHead             bottleneck                 cat[up(image_pool), aspp d=1, 12, 24, 36]  → 3×3 conv
    DepthwiseSeparable.. bottleneck                 (the same five inputs)                     → 3×3 conv
                         sep_bottleneck.0.depthwise cat[up×2(bottleneck out), c1_bottleneck]   → depthwise 3×3

>>> import torch
>>> head = DepthwiseSeparableASPPHead(8, 4, 3, c1_in_channels=6, c1_channels=2, dilations=(1, 2), in_index=1)
>>> head([torch.randn(2, 6, 16, 16), torch.randn(2, 8, 8, 8)]).shape
torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eqsurgeon.zoo.heads import BaseDecodeHead
from eqsurgeon.zoo.layers import ConvModule, DepthwiseSeparableConvModule, resize


class ASPPModule(nn.ModuleList):
    """Parallel ConvModules: 1×1 for dilation 1, dilated 3×3 otherwise (mmseg ``ASPPModule``)."""

    def __init__(self, dilations: Sequence[int], in_channels: int, channels: int) -> None:
        super().__init__(
            ConvModule(in_channels, channels, 1)
            if d == 1
            else ConvModule(in_channels, channels, 3, padding=d, dilation=d)
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [branch(x) for branch in self]


class ASPPHead(BaseDecodeHead):
    """mmseg ``ASPPHead``: image pooling first, then the dilated branches, fused by a 3×3 ``bottleneck``.

    Args:
        in_channels: channels of the selected backbone output (2048 for ResNet-50/101).
        channels: working width (512 in the DeepLabV3 configs).
        num_classes: output classes.
        dilations: branch dilations; the D8 configs use (1, 12, 24, 36).
        **kwargs: ``in_index``, ``dropout_ratio``, ``align_corners``.

    >>> ASPPHead(8, 4, 2, dilations=(1, 2), in_index=0)([torch.randn(2, 8, 6, 6)]).shape
    torch.Size([2, 2, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        dilations: Sequence[int] = (1, 6, 12, 18),
        **kwargs: object,
    ) -> None:
        super().__init__(in_channels, channels, num_classes, **kwargs)  # type: ignore[arg-type]
        self.dilations = tuple(dilations)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
        self.aspp_modules = ASPPModule(self.dilations, in_channels, channels)
        self.bottleneck = ConvModule((len(self.dilations) + 1) * channels, channels, 3, padding=1)

    def aspp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image pool (upsampled back to ``x``'s size) and the ASPP branches, fused by ``bottleneck``."""
        pooled = resize(self.image_pool(x), x.shape[2:], align_corners=self.align_corners)
        return self.bottleneck(torch.cat([pooled, *self.aspp_modules(x)], dim=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.aspp_forward(self._transform_inputs(inputs)))


class DepthwiseSeparableASPPModule(ASPPModule):
    """ASPP whose dilated branches are depthwise-separable (mmseg ``DepthwiseSeparableASPPModule``)."""

    def __init__(self, dilations: Sequence[int], in_channels: int, channels: int) -> None:
        super().__init__(dilations, in_channels, channels)
        for i, d in enumerate(dilations):
            if d > 1:
                self[i] = DepthwiseSeparableConvModule(in_channels, channels, 3, padding=d, dilation=d)


class DepthwiseSeparableASPPHead(ASPPHead):
    """mmseg ``DepthwiseSeparableASPPHead`` (DeepLabV3+): ASPP, then a decoder that fuses the ×2
    upsampled ASPP output with a 48-channel projection of the stride-4 feature.

    Args:
        in_channels: channels of the ASPP input.
        channels: working width (512).
        num_classes: output classes.
        c1_in_channels: channels of ``inputs[0]`` (256 for ResNet).
        c1_channels: width of ``c1_bottleneck`` (48).
        **kwargs: ``dilations``, ``in_index``, ``dropout_ratio``, ``align_corners``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        c1_in_channels: int,
        c1_channels: int,
        **kwargs: object,
    ) -> None:
        super().__init__(in_channels, channels, num_classes, **kwargs)
        assert c1_in_channels > 0, "the zoo's DeepLabV3+ configs always use the c1 branch"
        self.aspp_modules = DepthwiseSeparableASPPModule(self.dilations, in_channels, channels)
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(channels + c1_channels, channels, 3, padding=1),
            DepthwiseSeparableConvModule(channels, channels, 3, padding=1),
        )

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        output = self.aspp_forward(self._transform_inputs(inputs))
        c1 = self.c1_bottleneck(inputs[0])
        output = resize(output, c1.shape[2:], align_corners=self.align_corners)
        return self.cls_seg(self.sep_bottleneck(torch.cat([output, c1], dim=1)))
