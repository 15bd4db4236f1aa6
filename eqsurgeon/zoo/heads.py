"""Decode heads mirroring MMSegmentation 1.x layer for layer: FCNHead, PSPHead (with its PPM), UPerHead.

Every head takes the backbone's list of NCHW features, picks its inputs with ``in_index`` like mmseg's
``BaseDecodeHead._transform_inputs``, and ends with ``Dropout2d(0.1)`` → ``conv_seg`` (1×1 conv with bias,
initialized normal std 0.01, bias 0). Module names follow mmseg, so a layer reads
``decode_head.fpn_bottleneck.conv`` here as it does there.

The fusion sites (bilinear upsample → concat → conv) each head contains:

    UPerHead   bottleneck      cat[C5, 4 × up(PPM branch)]        → 3×3 conv
               fpn_bottleneck  cat[P2, up×2 P3, up×4 P4, up×8 P5]  → 3×3 conv
    PSPHead    bottleneck      cat[C5, 4 × up(PPM branch)]        → 3×3 conv
    FCNHead    conv_cat        cat[x, convs(x)]  (concat_input)    → 3×3 conv   (no upsample)

>>> import torch
>>> head = UPerHead([8, 16, 32, 64], channels=16, num_classes=3)
>>> feats = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
>>> head(feats).shape
torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eqsurgeon.zoo.layers import ConvModule, resize


class BaseDecodeHead(nn.Module):
    """What every mmseg decode head shares: input selection and ``cls_seg`` (dropout → conv_seg).

    Args:
        in_channels: channels of the selected input (an int), or of each selected input (a sequence).
        channels: the head's working width.
        num_classes: output channels of ``conv_seg``.
        in_index: index (or indices) into the backbone's feature list.
        dropout_ratio: ``Dropout2d`` probability before ``conv_seg``; 0 disables it.
        align_corners: passed to every resize (mmseg configs: False).
    """

    def __init__(
        self,
        in_channels: int | Sequence[int],
        channels: int,
        num_classes: int,
        in_index: int | Sequence[int] = -1,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels if isinstance(in_channels, int) else list(in_channels)
        self.channels = channels
        self.num_classes = num_classes
        self.in_index = in_index if isinstance(in_index, int) else list(in_index)
        self.align_corners = align_corners
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        # mmseg BaseDecodeHead.init_cfg: Normal(std=0.01) on conv_seg, bias 0.
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def _transform_inputs(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(self.in_index, int):
            return inputs[self.in_index]
        return [inputs[i] for i in self.in_index]

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """Classify each pixel of ``feat``: dropout, then the 1×1 ``conv_seg``."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class FCNHead(BaseDecodeHead):
    """mmseg ``FCNHead``: ``num_convs`` 3×3 ConvModules, optionally ``conv_cat`` over [input, output].

    The FCN-D8 decode head uses ``num_convs=2, concat_input=True`` (one fusion site, nothing upsampled);
    the auxiliary head of the UPerNet and ResNet configs uses ``num_convs=1, concat_input=False`` at
    stage 3 with 256 channels (no site).

    >>> FCNHead(8, 4, 2, num_convs=1, concat_input=False, in_index=0)([torch.randn(2, 8, 4, 4)]).shape
    torch.Size([2, 2, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        dilation: int = 1,
        **kwargs: object,
    ) -> None:
        super().__init__(in_channels, channels, num_classes, **kwargs)  # type: ignore[arg-type]
        assert num_convs > 0, "num_convs=0 is not used by any zoo config"
        padding = (kernel_size // 2) * dilation
        convs = [ConvModule(in_channels, channels, kernel_size, padding=padding, dilation=dilation)]
        convs += [
            ConvModule(channels, channels, kernel_size, padding=padding, dilation=dilation)
            for _ in range(num_convs - 1)
        ]
        self.convs = nn.Sequential(*convs)
        self.concat_input = concat_input
        if concat_input:
            width = in_channels + channels
            self.conv_cat = ConvModule(width, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        feats = self.convs(x)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return self.cls_seg(feats)


class PPM(nn.ModuleList):
    """Pooling pyramid: per scale, adaptive average pool → 1×1 ConvModule → bilinear resize back.

    >>> [o.shape[-1] for o in PPM((1, 2), 4, 2)(torch.randn(2, 4, 6, 6))]
    [6, 6]
    """

    def __init__(
        self, pool_scales: Sequence[int], in_channels: int, channels: int, align_corners: bool = False
    ) -> None:
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(in_channels, channels, 1))
            for scale in pool_scales
        )
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [resize(ppm(x), x.shape[2:], align_corners=self.align_corners) for ppm in self]


class PSPHead(BaseDecodeHead):
    """mmseg ``PSPHead``: the PPM branches and the input concatenated into a 3×3 ``bottleneck``.

    >>> PSPHead(8, 4, 2, in_index=0)([torch.randn(2, 8, 12, 12)]).shape
    torch.Size([2, 2, 12, 12])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        **kwargs: object,
    ) -> None:
        super().__init__(in_channels, channels, num_classes, **kwargs)  # type: ignore[arg-type]
        self.psp_modules = PPM(pool_scales, in_channels, channels, self.align_corners)
        self.bottleneck = ConvModule(in_channels + len(pool_scales) * channels, channels, 3, padding=1)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        psp_outs = torch.cat([x, *self.psp_modules(x)], dim=1)
        return self.cls_seg(self.bottleneck(psp_outs))


class UPerHead(BaseDecodeHead):
    """mmseg ``UPerHead``: PPM on the last input, FPN top-down over the rest, ``fpn_bottleneck`` fusion.

    Args:
        in_channels: channels of each backbone stage, finest first.
        channels: working width (512 in every UPerNet config).
        num_classes: output classes.
        pool_scales: PPM scales.
        **kwargs: ``in_index``, ``dropout_ratio``, ``align_corners`` (see :class:`BaseDecodeHead`).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("in_index", list(range(len(in_channels))))
        super().__init__(in_channels, channels, num_classes, **kwargs)  # type: ignore[arg-type]
        top = in_channels[-1]
        self.psp_modules = PPM(pool_scales, top, channels, self.align_corners)
        self.bottleneck = ConvModule(top + len(pool_scales) * channels, channels, 3, padding=1)
        # mmseg builds laterals and FPN convs with inplace=False (the laterals are summed afterwards).
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, channels, 1, inplace=False) for c in in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            ConvModule(channels, channels, 3, padding=1, inplace=False) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)

    def psp_forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The PPM branch on the coarsest input, fused by ``bottleneck``."""
        x = inputs[-1]
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        feats = self._transform_inputs(inputs)
        assert isinstance(feats, list)
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(feats))
        # Top-down path: upsample → add (reported by analysis as an add site, never changed).
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(
                laterals[i], laterals[i - 1].shape[2:], align_corners=self.align_corners
            )
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        outs.append(laterals[-1])
        for i in range(len(outs) - 1, 0, -1):
            outs[i] = resize(outs[i], outs[0].shape[2:], align_corners=self.align_corners)
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))
