"""Evaluate a model on a dataset split: dataset-level mIoU, all-reduced across ranks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from eqsurgeon.errors import CheckpointError, RecipeError
from eqsurgeon.training import distributed
from eqsurgeon.training.augment import normalize
from eqsurgeon.training.config import DataConfig, EvalConfig, TrainConfig
from eqsurgeon.training.inference import predict
from eqsurgeon.training.metrics import SegMetrics, area_counts, summarize


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    data: DataConfig,
    cfg: EvalConfig,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
) -> SegMetrics:
    """mIoU of ``model`` on ``dataset``; each rank runs its shard and the areas are summed over ranks.

    Predictions are made at the (test-resized) image size and resized back to the mask's size.

    Args:
        model: the segmentation model (eval mode is set here and the previous mode restored).
        dataset: evaluation set, with the eval pipeline as transform.
        data: the recipe's data table (classes, ignore index, normalization, workers).
        cfg: the recipe's eval table (whole/slide, crop, stride, max_images).
        device: where to run.
        amp: "none", "bf16" or "fp16".
        channels_last: feed channels-last inputs.
    """
    info_rank, info_world = _rank_world()
    size = len(dataset) if not cfg.max_images else min(cfg.max_images, len(dataset))
    indices = list(range(info_rank, size, info_world))
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=1,
        num_workers=min(data.workers, len(indices)),
        generator=torch.Generator(),  # never draw from the global RNG: training resumes bit-exactly
    )
    areas = torch.zeros(3, data.num_classes, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, amp):
        for image, mask in loader:
            x = to_input(image.to(device, non_blocking=True), data, channels_last)
            logits = predict(model, x, tuple(mask.shape[-2:]), cfg.mode, cfg.crop_size, cfg.stride)
            areas += area_counts(logits.argmax(1), mask.to(device), data.num_classes, data.ignore_index)
    model.train(was_training)
    return summarize(distributed.all_reduce_sum(areas).cpu())


def to_input(
    images: torch.Tensor,
    data: DataConfig,
    channels_last: bool = False,
    sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalize a uint8 [N, 3, H, W] batch on its device with the recipe's mean/std (0–255 scale).

    With ``sizes`` (each sample's unpadded (h, w), from ``PadCollate``) the padding becomes 0 after
    normalization, as in mmseg (``augment.normalize``).

    >>> cfg = DataConfig(mean=(0, 0, 0), std=(255, 255, 255))
    >>> to_input(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), cfg).flatten().tolist()
    [1.0, 1.0, 1.0]
    """
    x = normalize(images, data.mean, data.std, sizes)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """The autocast context for a recipe's ``run.amp`` ("none" disables it)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate_checkpoint(cfg: TrainConfig, checkpoint: Path) -> SegMetrics:
    """Build ``cfg``'s model, load ``checkpoint`` (safetensors) and evaluate it on ``cfg.eval.split``.

    A checkpoint written by an insert-mode run carries its equalizers' record in its metadata, which
    rebuilds them before the weights load.

    >>> # eqsurgeon eval train/recipes/demo.toml --checkpoint runs/demo/best.safetensors
    """
    from eqsurgeon.training.datasets import make_datasets
    from eqsurgeon.training.model import build_model

    d = cfg.data
    if not d.root and d.format != "synthetic":
        raise RecipeError("no dataset: set data.root in the recipe or pass --data DIR")
    if not Path(checkpoint).exists():
        raise CheckpointError(
            f"checkpoint {checkpoint} does not exist; pass a .safetensors from a run folder, a .pth or a "
            "save_pretrained folder"
        )
    dataset = make_datasets(cfg)[1]
    info = distributed.setup(cfg.run.device)
    try:
        # load_model rebuilds insert-mode equalizers from the checkpoint's metadata before loading it.
        model = build_model(dataclasses.replace(cfg.model, init=str(checkpoint))).eval()
        model.to(info.device)
        if cfg.run.channels_last:
            model.to(memory_format=torch.channels_last)
        return evaluate(model, dataset, d, cfg.eval, info.device, cfg.run.amp, cfg.run.channels_last)
    finally:
        distributed.cleanup()
