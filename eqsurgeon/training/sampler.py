"""Sampling order: an endless, seeded, per-rank stream for training and a fixed shard for evaluation."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from eqsurgeon.errors import DataError


class InfiniteSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` forever: each epoch a fresh permutation seeded by (seed, epoch), sharded.

    Rank r takes positions r, r + world, ... of each permutation, truncated so every rank gets
    ``len(dataset) // world`` samples per epoch (as MMSeg's InfiniteSampler). The stream is a pure function
    of its position, so resuming at ``start = iteration × batch`` replays exactly what an uninterrupted run
    would have read, with any number of workers.

    Args:
        size: dataset length.
        seed: run seed.
        rank: this process's rank.
        world: number of processes.
        start: position in this rank's stream to start at.
        shuffle: permute each epoch (else dataset order).

    >>> it = iter(InfiniteSampler(4, seed=0, rank=1, world=2, shuffle=False))
    >>> [next(it) for _ in range(3)]
    [(0, 1), (0, 3), (1, 1)]
    """

    def __init__(
        self, size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0, shuffle: bool = True
    ) -> None:
        self.per_rank = size // world
        if self.per_rank == 0:
            raise DataError(f"the dataset has {size} images, fewer than the {world} processes; add images")
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.start, self.shuffle = start, shuffle

    def position(self, pos: int) -> tuple[int, int]:
        """(epoch, offset within this rank's epoch) of stream position ``pos``: the data-order state."""
        return divmod(pos, self.per_rank)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start
        epoch, perm = -1, torch.arange(self.size)
        while True:
            e, k = self.position(pos)
            if e != epoch:
                epoch, perm = e, self._permutation(e)
            yield e, int(perm[self.rank + k * self.world])
            pos += 1

    def _permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=g)


def shard_indices(size: int, rank: int, world: int) -> list[int]:
    """This rank's share of an evaluation set: every index exactly once across ranks, no padding.

    >>> shard_indices(5, 1, 2)
    [1, 3]
    """
    return list(range(rank, size, world))
