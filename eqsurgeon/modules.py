"""Modules that eqsurgeon inserts into models."""

from __future__ import annotations

import torch
from torch import nn


class ScaleEqualizer(nn.Module):
    """Normalize a feature with a constant global mean and std: ``(x - mean) / std``.

    The statistics are buffers (saved in the state dict, never trained). This is the paper's scale
    equalizer; ``eqsurgeon calibrate --mode insert`` places one before each concat input.

    Args:
        mean: global mean of the feature, measured on training images.
        std: global standard deviation of the feature; must be positive and finite.

    >>> eq = ScaleEqualizer(0.5, 0.25)
    >>> eq(torch.ones(1, 2))
    tensor([[2., 2.]])
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if not (std > 0 and torch.isfinite(torch.tensor(std))):
            raise ValueError(f"ScaleEqualizer needs a positive finite std, got {std}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.item():.4g}, std={self.std.item():.4g}"
