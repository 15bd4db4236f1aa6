"""The recipe's datasets: training set (MMSeg training pipeline) and evaluation set (test-time resize)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from eqsurgeon.image_caps import ImageLimits
from eqsurgeon.training.config import TrainConfig
from eqsurgeon.training.segmentation import SegmentationDataset, find_samples
from eqsurgeon.training.synthetic import SyntheticDataset
from eqsurgeon.training.transforms import eval_pipeline, train_pipeline


def make_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """The recipe's training set (MMSeg training pipeline) and evaluation set (test-time resize)."""
    d = cfg.data
    if d.format == "synthetic":  # random crops in memory: benchmarks and smoke tests
        data = SyntheticDataset(d.crop_size, d.num_classes, seed=cfg.run.seed)
        return data, data
    pipeline = train_pipeline(
        d.crop_size, d.scale, d.ratio_range, d.cat_max_ratio, d.flip_prob, d.photometric, d.ignore_index
    )
    limits = ImageLimits(d.max_pixels, d.max_aspect)
    train_set = SegmentationDataset(
        find_samples(Path(d.root), "train", d.format),
        d.num_classes,
        d.ignore_index,
        pipeline,
        cfg.run.seed,
        limits,
    )
    val_set = SegmentationDataset(
        find_samples(Path(d.root), cfg.eval.split, d.format),
        d.num_classes,
        d.ignore_index,
        eval_pipeline(cfg.eval.scale),
        limits=limits,
    )
    return train_set, val_set
