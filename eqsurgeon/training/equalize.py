"""Equalization inside a training run: Algorithm 1 on training crops, before the first step.

The crops come through the training pipeline (RandomResize, RandomCrop, flip, photometric), seeded on a
stream of their own so they do not shift the training data. Under DDP each rank measures its share and
``calibrate`` pools count/mean/M2 across ranks after every batch (``eqsurgeon.measure.ddp_reduce``), so
every rank applies the same μ/σ, computed from the images of all ranks.

The record written to ``eq.json`` and to each checkpoint is built by the same function as ``calibrate``'s
(``eqsurgeon.calibration.build_record``), image mean/std on the record's 0–1 scale, so ``load_model``
rebuilds insert-mode equalizers from any training checkpoint and ``verify`` reads it like any other.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eqsurgeon.calibration import CalibrationOptions, RecordSource, build_record, calibrate
from eqsurgeon.errors import RecipeError
from eqsurgeon.measure import ddp_reduce
from eqsurgeon.records import CalibrationRecord
from eqsurgeon.training.augment import PaddedBatch
from eqsurgeon.training.config import TrainConfig
from eqsurgeon.training.distributed import DistInfo
from eqsurgeon.training.evaluate import to_input
from eqsurgeon.training.sampler import InfiniteSampler
from eqsurgeon.training.transforms import PadCollate

# Calibration crops use epochs -1, -2, ... of the augmentation seed stream; training uses 0, 1, ...
_CALIBRATION_EPOCH = -1


def equalize_in_loop(
    model: nn.Module, cfg: TrainConfig, train_set: Dataset, info: DistInfo
) -> tuple[nn.Module, CalibrationRecord]:
    """Calibrate ``model`` in place on ``cfg.eq.images`` training crops (over all ranks).

    Returns:
        The model (on ``info.device``; insert mode wraps its fusing layers) and the calibration record.

    >>> # run by the trainer when eq.mode is "fold" or "insert"; see tests/test_train_eq.py
    """
    eq = cfg.eq
    per_rank = eq.images // info.world
    if per_rank < 2:
        raise RecipeError(f"eq.images = {eq.images} leaves {per_rank} per process; use 2 or more per process")
    keys = calibration_keys(len(train_set), cfg.run.seed, info.rank, info.world, per_rank)
    loader = DataLoader(
        train_set,
        batch_size=eq.batch_size,
        sampler=keys,
        num_workers=min(cfg.data.workers, len(keys)),
        generator=torch.Generator(),  # leave the global RNG alone (resume exactness)
        collate_fn=PadCollate(cfg.data.crop_size, cfg.data.ignore_index),
    )
    batches = list(loader)  # uint8, small; re-read once per site by calibrate
    model.to(info.device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.run.amp)
    options = CalibrationOptions(
        mode=eq.mode, bias_correction=eq.bias_correction, bn_mode=eq.bn_mode, tolerance=eq.tolerance,
        max_images=eq.images, autocast_dtype=amp,
    )  # fmt: skip
    result = calibrate(model, _Normalized(batches, cfg, info.device), options, reduce=ddp_reduce)
    source = RecordSource(
        model=cfg.model.name, data_fingerprint=f"train crops of {cfg.data.root} (seed {cfg.run.seed})",
        model_kwargs=dict(cfg.model.kwargs), seed=cfg.run.seed, input_size=tuple(cfg.data.crop_size),
        image_mean=tuple(v / 255 for v in cfg.data.mean), image_std=tuple(v / 255 for v in cfg.data.std),
    )  # fmt: skip
    return model, build_record(result, source)


def calibration_keys(size: int, seed: int, rank: int, world: int, count: int) -> list[tuple[int, int]]:
    """This rank's ``count`` calibration samples as (epoch, index) keys of the training set.

    Ranks take disjoint shards of one seeded permutation, so for ``count × world <= size`` the union
    over ranks is exactly what a single process would take with ``count × world`` images.

    >>> keys = calibration_keys(8, 0, 0, 1, 4)
    >>> sorted(calibration_keys(8, 0, 0, 2, 2) + calibration_keys(8, 0, 1, 2, 2)) == sorted(keys)
    True
    """
    stream = iter(InfiniteSampler(size, seed + 1, rank, world))
    return [(_CALIBRATION_EPOCH - epoch, index) for epoch, index in (next(stream) for _ in range(count))]


class _Normalized:
    """Re-iterable view of padded uint8 batches as normalized float batches on the device."""

    def __init__(self, batches: list[PaddedBatch], cfg: TrainConfig, device: torch.device) -> None:
        self.batches, self.cfg, self.device = batches, cfg, device

    def __iter__(self) -> Iterator[torch.Tensor]:
        for b in self.batches:
            yield to_input(b.images.to(self.device), self.cfg.data, self.cfg.run.channels_last, b.sizes)
