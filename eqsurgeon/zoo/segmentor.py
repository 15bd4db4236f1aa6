"""The full model: backbone → decode head (+ auxiliary head), logits at input resolution.

Mirrors MMSegmentation's ``EncoderDecoder`` with ``test_cfg=dict(mode='whole')``: the decode head's
stride-4 (or stride-8) logits are resized bilinearly to the input size.

>>> import torch
>>> from eqsurgeon.zoo.backbones import TimmBackbone
>>> from eqsurgeon.zoo.heads import FCNHead, UPerHead
>>> bb = TimmBackbone("test_convnext")
>>> aux = FCNHead(48, 8, 3, num_convs=1, concat_input=False, in_index=2)
>>> model = EncoderDecoder(bb, UPerHead(bb.channels, 16, 3), aux)
>>> main, aux = model.train()(torch.randn(2, 3, 64, 96))
>>> main.shape, aux.shape
(torch.Size([2, 3, 64, 96]), torch.Size([2, 3, 64, 96]))
>>> model.eval()(torch.randn(1, 3, 64, 64)).shape
torch.Size([1, 3, 64, 64])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from eqsurgeon.zoo.layers import resize

# ImageNet statistics for RGB images scaled to [0, 1] (mmseg's 0-255 values divided by 255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderDecoder(nn.Module):
    """Backbone, decode head and optional auxiliary head.

    In training mode the forward returns ``(main_logits, aux_logits)`` when there is an auxiliary head
    (its loss weight in the mmseg configs is :attr:`aux_loss_weight`, 0.4); otherwise, and always in eval
    mode, the main logits alone. Logits are resized to the input's height and width.

    Input normalization: the model expects RGB images scaled to [0, 1], then normalized with
    ``eqsurgeon_cfg["mean"]`` and ``eqsurgeon_cfg["std"]`` (ImageNet statistics in the [0, 1] scale);
    ``eqsurgeon_cfg["input_size"]`` is the training crop (height, width) of the config it mirrors. Any
    input whose sides are multiples of 32 works.

    Args:
        backbone: module returning a list of NCHW features.
        decode_head: head taking that list and returning logits.
        auxiliary_head: optional second head, used in training only.
        input_size: the mirrored config's crop size, recorded in ``eqsurgeon_cfg``.
        align_corners: for the final resize (mmseg: False).
    """

    aux_loss_weight = 0.4

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        auxiliary_head: nn.Module | None = None,
        input_size: tuple[int, int] = (512, 512),
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.align_corners = align_corners
        self.eqsurgeon_cfg: dict[str, Any] = {
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "input_size": tuple(input_size),
        }

    @property
    def num_classes(self) -> int:
        """Output channels of the main logits."""
        return int(self.decode_head.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[2:]
        feats = self.backbone(x)
        main = resize(self.decode_head(feats), size, align_corners=self.align_corners)
        if self.training and self.auxiliary_head is not None:
            aux = resize(self.auxiliary_head(feats), size, align_corners=self.align_corners)
            return main, aux
        return main
