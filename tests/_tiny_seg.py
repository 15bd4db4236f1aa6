"""A tiny UPerNet-shaped model for trainer tests: 3 stages, pooled global branch, concat fusion, aux head.

Train mode returns (main, aux) like the zoo's UPerNets; eval mode returns the main logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class TinySeg(nn.Module):
    def __init__(self, num_classes: int = 5, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 4, 4), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.stage2 = _cbr(w, 2 * w, 2)
        self.stage3 = _cbr(2 * w, 4 * w, 2)
        self.pool_proj = _cbr(4 * w, w)
        self.bottleneck = _cbr(4 * w + w, w)  # fusion site: deep features ++ global pooled branch
        self.fuse = _cbr(w + 2 * w + w, w)  # fusion site: x1/4 ++ upsampled x1/8 ++ upsampled x1/16
        self.dropout = nn.Dropout2d(0.1)
        self.cls = nn.Conv2d(w, num_classes, 1)
        self.aux = nn.Conv2d(2 * w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        g = self.pool_proj(F.adaptive_avg_pool2d(c3, 1)).expand(-1, -1, *c3.shape[-2:])
        p3 = self.bottleneck(torch.cat([c3, g], 1))
        size = c1.shape[-2:]
        up2 = F.interpolate(c2, size=size, mode="bilinear", align_corners=False)
        up3 = F.interpolate(p3, size=size, mode="bilinear", align_corners=False)
        out = self.cls(self.dropout(self.fuse(torch.cat([c1, up2, up3], 1))))
        if self.training:
            return out, self.aux(c2)
        return out


def tiny_seg(num_classes: int = 5, width: int = 16) -> nn.Module:
    return TinySeg(num_classes, width)


class _NanAfter(TinySeg):
    """Trains normally for ``after`` training forwards, then returns NaN logits."""

    def __init__(self, after: int, num_classes: int) -> None:
        super().__init__(num_classes)
        self.after, self.calls = after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(x)
        if not self.training:
            return out
        self.calls += 1
        return (out[0] * float("nan"), out[1]) if self.calls > self.after else out


def nan_after(after: int = 5, num_classes: int = 5) -> nn.Module:
    return _NanAfter(after, num_classes)


class _Slow(TinySeg):
    """Sleeps in each training forward, so a test can kill the run between two checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            import time

            time.sleep(0.2)
        return super().forward(x)


def slow_seg(num_classes: int = 5) -> nn.Module:
    return _Slow(num_classes)
