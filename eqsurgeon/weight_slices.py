"""Per-input statistics of a fusing layer's weight, read in the layer's own layout.

Used by :mod:`eqsurgeon.recognize` to tell a folded weight from a fresh one. The layout follows
``eqsurgeon.equalize``: conv ``[out, in/groups, *k]``, ConvTranspose ``[in, out/groups, *k]``, Linear
``[out, in]``.

>>> fans(torch.empty(8, 4, 3, 3))
(36, 72)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch


class SliceStats(NamedTuple):
    """Per input range of a fusing weight: the mean squared weight per input channel, its relative standard
    error, and the kurtosis E[w⁴] / E[w²]² (the shape of the weights' distribution about 0, whatever their
    scale: 1.8 for a uniform draw, 3 for a normal one)."""

    means: list[float]
    rel_se: list[float]
    kurtosis: list[float]


def slice_statistics(
    weight: torch.Tensor, op: str, groups: int, ranges: Sequence[tuple[int, int]]
) -> SliceStats:
    """The statistics of each input range's weight slice, read in the layer's own layout.

    The layout follows ``eqsurgeon.equalize``: conv [out, in/groups, *k] (input channel c in group
    c // (in/groups)), ConvTranspose [in, out/groups, *k], Linear [out, in].

    >>> stats = slice_statistics(torch.ones(3, 4), "linear", 1, [(0, 2), (2, 4)])
    >>> stats.means, stats.rel_se, stats.kurtosis
    ([1.0, 1.0], [0.0, 0.0], [1.0, 1.0])
    >>> uniform = slice_statistics(torch.linspace(-1, 1, 2000).reshape(500, 4), "linear", 1, [(0, 2), (2, 4)])
    >>> [round(k, 1) for k in uniform.kurtosis]
    [1.8, 1.8]
    """
    squares = _per_channel_squares(weight.detach().double(), op, groups)  # [in, weights per channel]
    stats = SliceStats([], [], [])
    for start, stop in ranges:
        chunk = squares[start:stop].reshape(-1)
        mean = float(chunk.mean())
        spread = float(chunk.std()) if chunk.numel() > 1 else math.inf
        stats.means.append(mean)
        stats.rel_se.append(spread / (mean * math.sqrt(chunk.numel())) if mean > 0 else math.inf)
        stats.kurtosis.append(float((chunk * chunk).mean()) / (mean * mean) if mean > 0 else math.inf)
    return stats


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) as ``torch.nn.init`` computes them from the tensor's dims 1 and 0 and its kernel."""
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _per_channel_squares(w: torch.Tensor, op: str, groups: int) -> torch.Tensor:
    # Squared weights regrouped as [input channel, every weight that multiplies it].
    sq = w * w
    if op == "linear":
        return sq.t()
    if op.startswith("conv_transpose"):
        return sq.flatten(1)
    out_channels, in_per_group = sq.shape[0], sq.shape[1]
    per = sq.flatten(2).view(groups, out_channels // groups, in_per_group, -1)  # [g, out/g, in/g, k]
    return per.permute(0, 2, 1, 3).reshape(groups * in_per_group, -1)
