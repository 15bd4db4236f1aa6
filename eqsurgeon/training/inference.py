"""Whole-image and sliding-window inference, returning logits at a requested size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon.outputs import split_outputs


def predict(
    model: nn.Module,
    image: torch.Tensor,
    out_size: tuple[int, int],
    mode: str = "whole",
    crop_size: tuple[int, int] = (512, 512),
    stride: tuple[int, int] = (341, 341),
) -> torch.Tensor:
    """Logits [N, C, *out_size] of an eval-mode model on a normalized batch.

    ``whole`` runs the image at once. ``slide`` runs crop_size windows every ``stride`` pixels (the last
    window of a row/column is shifted back inside the image), sums the window logits resized to the
    window, and divides by how many windows covered each pixel, as MMSeg's slide inference.

    >>> net = nn.Conv2d(3, 2, 1)
    >>> x = torch.randn(1, 3, 10, 12)
    >>> torch.allclose(predict(net, x, (10, 12), "slide", (6, 6), (4, 4)), net(x), atol=1e-6)
    True
    """
    if mode == "whole":
        logits = _logits(model, image)
    else:
        assert mode == "slide", mode
        logits = _slide(model, image, crop_size, stride)
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return logits


def _logits(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    logits, _ = split_outputs(model(image))
    if logits.shape[-2:] != image.shape[-2:]:
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def _slide(
    model: nn.Module, image: torch.Tensor, crop_size: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    (h, w), (ch, cw), (sh, sw) = image.shape[-2:], crop_size, stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    total: torch.Tensor | None = None
    count = image.new_zeros((1, 1, h, w))
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            logits = _logits(model, image[..., y1:y2, x1:x2]).float()
            if total is None:
                total = image.new_zeros((image.shape[0], logits.shape[1], h, w), dtype=torch.float32)
            total[..., y1:y2, x1:x2] += logits
            count[..., y1:y2, x1:x2] += 1
    assert total is not None and bool((count > 0).all())
    return total / count
