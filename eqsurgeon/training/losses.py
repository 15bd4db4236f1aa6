"""Segmentation loss: pixel cross-entropy with an ignore index, plus the auxiliary head's share.

Two averagings exist, and they give different gradients when a batch has many ignored pixels:

- ``"all"`` (MMSegmentation's default, ``avg_non_ignore=False``, used by the paper's recipes): the sum of
  per-pixel losses divided by the number of *all* pixels, ignored ones counting as zero loss.
- ``"valid"`` (PyTorch's ``F.cross_entropy`` default): divided by the number of non-ignored pixels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from eqsurgeon.outputs import split_outputs


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, average: str = "all"
) -> torch.Tensor:
    """Pixel cross-entropy; logits are resized (bilinear) to the label size first, as MMSeg does.

    Args:
        logits: [N, C, h, w].
        target: [N, H, W] integer labels.
        ignore_index: label that contributes nothing.
        average: "all" (divide by all pixels, MMSeg) or "valid" (by non-ignored pixels).

    >>> t = torch.tensor([[[0, 255]]])
    >>> x = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])
    >>> [round(cross_entropy(x, t, average=a).item(), 4) for a in ("all", "valid")]
    [0.3466, 0.6931]
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    if average == "all":
        return per_pixel.mean()
    assert average == "valid", average
    return per_pixel.sum() / (target != ignore_index).sum().clamp(min=1)


def segmentation_loss(
    out: Any, target: torch.Tensor, ignore_index: int = 255, aux_weight: float = 0.4, average: str = "all"
) -> torch.Tensor:
    """Main-head cross-entropy plus ``aux_weight`` × the auxiliary head's, when the model has one.

    >>> m = torch.zeros(1, 2, 2, 2)
    >>> t = torch.zeros(1, 2, 2, dtype=torch.long)
    >>> round(segmentation_loss((m, m), t).item(), 4)  # (1 + 0.4) × ln 2
    0.9704
    """
    main, aux = split_outputs(out)
    loss = cross_entropy(main, target, ignore_index, average)
    if aux is not None and aux_weight:
        loss = loss + aux_weight * cross_entropy(aux, target, ignore_index, average)
    return loss


def loss_parts(
    out: Any, target: torch.Tensor, ignore_index: int = 255, aux_weight: float = 0.4, average: str = "all"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`segmentation_loss` and its detached (total, decode, aux) parts for the log, named as
    MMSegmentation's decode.loss_ce and aux.loss_ce (aux is 0 without an auxiliary head).

    >>> m = torch.zeros(1, 2, 2, 2)
    >>> loss, parts = loss_parts((m, m), torch.zeros(1, 2, 2, dtype=torch.long))
    >>> [round(v, 4) for v in parts.tolist()]  # (1 + 0.4) × ln 2 = ln 2 + 0.4 ln 2
    [0.9704, 0.6931, 0.2773]
    """
    main, aux = split_outputs(out)
    decode = cross_entropy(main, target, ignore_index, average)
    loss, aux_part = decode, torch.zeros((), device=decode.device)
    if aux is not None and aux_weight:
        aux_part = aux_weight * cross_entropy(aux, target, ignore_index, average)
        loss = decode + aux_part
    return loss, torch.stack([loss, decode, aux_part]).detach().float()
