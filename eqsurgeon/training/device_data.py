"""The data loader's half of device augmentation: workers decode and plan, the device augments.

    data.augment = "workers"   worker: decode → resize → crop → flip → photometric        (uint8 crops)
    data.augment = "device"    worker: decode (or read JPEG bytes) → plan → mask geometry (image, mask, plan)
                               device: [nvjpeg] → device_augment.augment_batch            (float input)
    data.augment = "auto"      "device" when training on CUDA from image files, else "workers"

The plan is drawn with the per-sample pipeline's own ``make_params`` calls, in its order, under the
sample's (seed, epoch, index) seed: a sample gets the same resize, crop, flip and colour draws either way,
and its mask is bit-identical. Images differ only by the rounding of the bilinear resize (±1 level).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from eqsurgeon.training.augment import PaddedBatch, dominated
from eqsurgeon.training.config import DataConfig
from eqsurgeon.training.device_augment import augment_batch, decode_images, plan_row
from eqsurgeon.training.evaluate import to_input
from eqsurgeon.training.segmentation import SegmentationDataset
from eqsurgeon.training.transforms import PhotoMetricDistortion, RandomResize, draw_offsets, sample_seed


def augments_on_device(data: DataConfig, device: torch.device, dataset: Dataset) -> bool:
    """Whether this run augments on the device (``data.augment``; "auto" = on CUDA, from image files).

    >>> augments_on_device(DataConfig(augment="auto"), torch.device("cpu"), None)
    False
    """
    if not isinstance(dataset, SegmentationDataset):  # synthetic crops: nothing to augment
        return False
    if data.augment == "auto":
        return device.type == "cuda"
    return data.augment == "device"


class PlannedDataset(Dataset):
    """Training items for device augmentation: (image, mask, plan).

    ``image`` is the decoded source image in the decoder's layout, uint8 [H, W, 3] (the device transposes
    it), or, with ``encoded_jpeg``, a JPEG file's bytes (uint8 [L]) for the GPU to decode; ``mask`` is the
    final crop, padded with the ignore index to the crop size; ``plan`` a row of
    :data:`~eqsurgeon.training.device_augment.PLAN_COLUMNS`. The caps are checked on the headers first.

    Args:
        base: the per-sample training set (its files, checks, caps and seed are reused).
        data: the recipe's data table (crop, scale, ratio, cat_max_ratio, flip, photometric).
        encoded_jpeg: hand JPEG files over undecoded (when the device can decode them).
    """

    def __init__(self, base: SegmentationDataset, data: DataConfig, encoded_jpeg: bool = False) -> None:
        self.base = base
        self.crop_size = tuple(data.crop_size)
        self.ignore_index = data.ignore_index
        self.flip_prob = data.flip_prob
        self.cat_max_ratio = data.cat_max_ratio
        self.encoded_jpeg = encoded_jpeg
        self.resize = RandomResize(data.scale, data.ratio_range)
        self.photometric = PhotoMetricDistortion() if data.photometric else None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        pixels, mask_t = self.base.read_arrays(index, keep_jpeg=self.encoded_jpeg)
        mask = mask_t.numpy()
        if pixels is None:  # a JPEG: its bytes, for the GPU to decode
            raw = self.base.samples.images[index].read_bytes()
            image = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        else:
            image = torch.from_numpy(pixels)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue a lazy CUDA seeding call
            torch.default_generator.manual_seed(sample_seed(self.base.seed, epoch, index))
            plan, mask_crop = self.plan(mask)
        return image, mask_crop, plan

    def plan(self, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one sample's plan (under the caller's RNG) and apply its geometry to ``mask`` [H, W].

        The draws are those of ``transforms.train_pipeline`` in its order: RandomResize, RandomCrop
        (re-drawn for cat_max_ratio), RandomHorizontalFlip, PhotoMetricDistortion. The resized mask is
        never made whole: nearest-neighbour resizing is a gather, so each candidate window is gathered
        from the source mask with the row and column indices ``F.interpolate(mode="nearest")`` uses.
        """
        h, w = mask.shape
        size = self.resize.make_params([mask])["size"]  # it reads the shape alone
        rows, cols = _nearest_index(h, size[0]), _nearest_index(w, size[1])
        box, window = self._draw_crop(mask, rows, cols)
        flip = bool(torch.rand(1) < self.flip_prob)  # v2.RandomHorizontalFlip's draw
        if flip:
            window = window[:, ::-1]
        colour = self.photometric.make_params([])["draws"] if self.photometric is not None else None
        out = np.full(self.crop_size, self.ignore_index, dtype=np.uint8)
        out[: box[2], : box[3]] = window
        return plan_row((size[0], size[1]), box, flip, colour), torch.from_numpy(out)

    def _draw_crop(
        self, mask: np.ndarray, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[tuple[int, int, int, int], np.ndarray]:
        # augment.random_crop_box on the resized mask, with its draws and its acceptance test, each
        # candidate window gathered from the source; returns the box and its window of the mask
        h, w = len(rows), len(cols)
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        max_top, max_left = max(h - self.crop_size[0], 0), max(w - self.crop_size[1], 0)
        top, left = draw_offsets(max_top, max_left)
        window = _window(mask, rows, cols, top, left, ch, cw)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                if not dominated(torch.from_numpy(window), self.cat_max_ratio, self.ignore_index):
                    break
                top, left = draw_offsets(max_top, max_left)
                window = _window(mask, rows, cols, top, left, ch, cw)
        return (top, left, ch, cw), window


def _nearest_index(size: int, resized: int) -> np.ndarray:
    # source index of each resized pixel, as upsample_nearest computes it (float32 scale, floor, clamp)
    scale = np.float32(size / resized)
    index = np.floor(np.arange(resized, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, size - 1)


def _window(
    mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, top: int, left: int, h: int, w: int
) -> np.ndarray:
    # the (top, left, h, w) window of the nearest-resized mask, gathered from the source
    return mask.take(rows[top : top + h], axis=0).take(cols[left : left + w], axis=1)


def collate_planned(items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[Any, ...]:
    """(list of images, masks [N, h, w], plans [N, K]): images keep their own sizes.

    >>> img, mask, plan = torch.zeros(5, 7, 3, dtype=torch.uint8), torch.zeros(4, 4), torch.zeros(12)
    >>> images, masks, plans = collate_planned([(img, mask, plan)] * 2)
    >>> len(images), tuple(masks.shape), tuple(plans.shape)
    (2, (2, 4, 4), (2, 12))
    """
    images, masks, plans = zip(*items, strict=True)
    return list(images), torch.stack(masks), torch.stack(plans)


def model_input(
    batch: PaddedBatch | tuple[Any, ...], data: DataConfig, device: torch.device, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized input, long labels) on ``device`` from a loader batch of either kind.

    A planned batch (images, masks, plans) is decoded and augmented on the device; a
    :class:`~eqsurgeon.training.augment.PaddedBatch` of augmented crops is only normalized there.

    >>> from eqsurgeon.training.augment import pad_batch
    >>> b = pad_batch([torch.zeros(3, 2, 2, dtype=torch.uint8)], [torch.zeros(2, 2, dtype=torch.uint8)],
    ...               (2, 2), 255)
    >>> x, y = model_input(b, DataConfig(mean=(0, 0, 0), std=(1, 1, 1)), torch.device("cpu"))
    >>> x.dtype, y.dtype
    (torch.float32, torch.int64)
    """
    if isinstance(batch, PaddedBatch):
        x = to_input(batch.images.to(device, non_blocking=True), data, channels_last, batch.sizes)
        return x, batch.masks.to(device, non_blocking=True).long()
    images, masks, plans = batch
    decoded = decode_images(images, device)
    x = augment_batch(decoded, plans, tuple(data.crop_size), data.mean, data.std, channels_last)
    return x, masks.to(device, non_blocking=True).long()
