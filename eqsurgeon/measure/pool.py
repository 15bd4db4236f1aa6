"""Pooling across DDP ranks, so every rank takes the same stopping decision.

Under ``torchrun``, with ``reduce=ddp_reduce`` (``measure_until``, and so ``calibrate``), each rank
measures its own shard of images, and after every batch the per-input moments of all ranks are merged
exactly (count, mean, M2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from eqsurgeon.records import Moments


@dataclass(frozen=True)
class MeasureState:
    """What a measuring pass has accumulated so far: handed to ``reduce`` after every batch."""

    images: int
    moments: dict[str, tuple[Moments, ...]]


def merge_moments(parts: Sequence[Moments]) -> Moments:
    """Pool moments measured on disjoint data (DDP ranks): exact mean/var, approximate standard error.

    >>> merge_moments([Moments(2, 0.0, 1.0, 1), Moments(2, 2.0, 1.0, 1)]).var
    2.0
    """
    parts = [p for p in parts if p.count > 0]
    if not parts:
        return Moments(0, math.nan, math.nan, 0)
    count = sum(p.count for p in parts)
    mean = sum(p.mean * p.count for p in parts) / count
    m2 = sum(p.var * p.count + p.count * (p.mean - mean) ** 2 for p in parts)
    batches = sum(p.batches for p in parts)
    # Each rank's σ estimate has relative SE se_r from b_r batches; pooling weights them by batches.
    if all(math.isfinite(p.std_rel_se) for p in parts):
        se = math.sqrt(sum((p.batches * p.std_rel_se) ** 2 for p in parts)) / batches
    else:
        se = math.inf
    return Moments(count, mean, m2 / count, batches, se)


def ddp_reduce(state: MeasureState) -> MeasureState:
    """A ``reduce`` for ``calibrate`` under torch.distributed: all-gathers and pools every rank's state."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return state
    gathered: list[MeasureState | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    states = [s for s in gathered if s is not None]
    moments = {
        layer: tuple(merge_moments([s.moments[layer][i] for s in states]) for i in range(len(parts)))
        for layer, parts in state.moments.items()
    }
    return MeasureState(sum(s.images for s in states), moments)
