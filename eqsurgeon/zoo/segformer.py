"""SegFormer's all-MLP decode head, mirroring MMSegmentation 1.x ``SegformerHead``.

Each stage goes through a 1×1 ConvModule (the "MLP") to ``channels``, is resized bilinearly to the
stride-4 size, and the four are concatenated into the 1×1 ``fusion_conv``:

    fusion_conv   cat[convs.0(C2), up×2 convs.1(C3), up×4 convs.2(C4), up×8 convs.3(C5)] → 1×1 conv

>>> import torch
>>> head = SegformerHead([4, 8, 16, 32], channels=8, num_classes=3)
>>> head([torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([4, 8, 16, 32])]).shape
torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eqsurgeon.zoo.heads import BaseDecodeHead
from eqsurgeon.zoo.layers import ConvModule, resize


class SegformerHead(BaseDecodeHead):
    """mmseg ``SegformerHead``: per-stage 1×1 ConvModule, resize to the finest stage, 1×1 ``fusion_conv``.

    Args:
        in_channels: channels of each backbone stage, finest first.
        channels: working width (256 for MiT-B0/B1, 768 for B2-B5).
        num_classes: output classes.
        **kwargs: ``in_index``, ``dropout_ratio``, ``align_corners``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, **kwargs: object) -> None:
        kwargs.setdefault("in_index", list(range(len(in_channels))))
        super().__init__(in_channels, channels, num_classes, **kwargs)  # type: ignore[arg-type]
        self.convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels)
        self.fusion_conv = ConvModule(channels * len(in_channels), channels, 1)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        feats = self._transform_inputs(inputs)
        assert isinstance(feats, list)
        size = feats[0].shape[2:]
        # mmseg resizes every stage, the finest one too (a no-op resize to its own size).
        outs = [
            resize(conv(x), size, align_corners=self.align_corners)
            for x, conv in zip(feats, self.convs, strict=True)
        ]
        return self.cls_seg(self.fusion_conv(torch.cat(outs, dim=1)))
