"""In-memory random crops: for benchmarks and smoke tests that must not depend on files or decoding."""

from __future__ import annotations

import torch


class SyntheticDataset(torch.utils.data.Dataset):
    """``size`` distinct random (image uint8 [3, H, W], mask uint8 [H, W]) pairs, made once and kept.

    Masks are blocky (8×8-pixel cells) so a model has something to fit; keys may be an index or
    ``(epoch, index)`` like :class:`~eqsurgeon.training.segmentation.SegmentationDataset`.

    >>> ds = SyntheticDataset((32, 48), num_classes=4, size=2)
    >>> [tuple(t.shape) for t in ds[(5, 1)]]
    [(3, 32, 48), (32, 48)]
    """

    def __init__(self, crop_size: tuple[int, int], num_classes: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        h, w = crop_size
        self.images = torch.randint(0, 256, (size, 3, h, w), dtype=torch.uint8, generator=g)
        grid = (size, (h + 7) // 8, (w + 7) // 8)
        cells = torch.randint(0, num_classes, grid, dtype=torch.uint8, generator=g)
        self.masks = cells.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :h, :w].contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = key[1] if isinstance(key, tuple) else key
        return self.images[index], self.masks[index]
