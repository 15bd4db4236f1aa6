"""From what the user named to what the stages run on: a module on its device, and batches.

The library calls in ``eqsurgeon.api`` accept a module, a spec or a ``ModelRef``, and an image folder,
a list of batches or None (synthetic input); this module turns them into an ``nn.Module`` (with its
checkpoint's calibration record) and an iterable of batches, resolving input size, normalization and
device from the options, the record and what the model declares, in that order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from eqsurgeon.errors import OptionError
from eqsurgeon.images import IMAGENET_MEAN, IMAGENET_STD, LoaderOptions, model_input_size, model_normalization
from eqsurgeon.records import CalibrationRecord

if TYPE_CHECKING:
    from eqsurgeon.api import Data, DataOptions, ModelLike


def synthetic_batches(
    size: tuple[int, int], batch_size: int, count: int = 1, seed: int = 0, device: str = "cpu"
) -> list[torch.Tensor]:
    """Normalized-image-like batches: i.i.d. N(0, 1) pixels, reproducible from ``seed``.

    >>> synthetic_batches((4, 4), 2, count=3)[2].shape
    torch.Size([2, 3, 4, 4])
    """
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, 3, *size, generator=gen).to(device) for _ in range(count)]


def materialize(model: ModelLike, opts: DataOptions) -> tuple[nn.Module, CalibrationRecord | None, str]:
    # (module on the device, its checkpoint's record, the name reports show)
    if isinstance(model, nn.Module):
        return model, None, type(model).__name__
    from eqsurgeon.api import ModelRef
    from eqsurgeon.loading import load_model_with_record

    ref = ModelRef(model) if isinstance(model, str) else model
    torch.manual_seed(opts.seed)  # a fresh model's initialization is part of what is measured
    net, record = load_model_with_record(ref.spec, ref.kwargs, ref.checkpoint)
    return net.to(resolve_device(opts.device)), record, ref.spec


def make_batches(
    net: nn.Module, data: Data, opts: DataOptions, record: CalibrationRecord | None, limit: int | None
) -> tuple[Iterable[torch.Tensor], str, Any]:
    # (batches on the device, the source for reports, the image loader when data is a folder)
    device = resolve_device(opts.device)
    if data is None:
        size = input_size(net, opts, record)
        return synthetic_batches(size, opts.batch_size, opts.batches, opts.seed, device), "synthetic", None
    if not isinstance(data, (str, Path)):
        return [b.to(device) for b in data], "batches", None
    from eqsurgeon.images import image_loader
    from eqsurgeon.labeled import image_root

    mean, std = normalization(net, opts, record)
    loader_options = LoaderOptions(
        size=input_size(net, opts, record), batch_size=opts.batch_size, mean=mean, std=std,
        workers=opts.workers, max_images=limit, seed=opts.seed, pin_memory=device.startswith("cuda"),
    )  # fmt: skip
    # a segmentation folder's images/ only: its masks are not inputs
    loader, _ = image_loader(image_root(data), loader_options)
    return _OnDevice(loader, device), str(data), loader


class _OnDevice:
    """Re-iterable view of a loader's batches, moved to a device."""

    def __init__(self, loader: Iterable[torch.Tensor], device: str) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Any:
        return (b.to(self.device, non_blocking=True) for b in self.loader)


def input_size(net: nn.Module, opts: DataOptions, record: CalibrationRecord | None) -> tuple[int, int]:
    """The option's size, else the record's, else the model's declared size, else 512×512."""
    if opts.input_size is not None:
        return opts.input_size
    if record is not None and record.input_size:
        return (int(record.input_size[0]), int(record.input_size[1]))
    return model_input_size(net) or (512, 512)


def normalization(
    net: nn.Module, opts: DataOptions, record: CalibrationRecord | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std (0–1 scale): the options', else the record's, else the model's, else ImageNet's."""
    declared = model_normalization(net)
    if record is not None and record.image_mean and record.image_std:
        declared = (tuple(record.image_mean), tuple(record.image_std))
    mean = opts.mean or (declared[0] if declared else IMAGENET_MEAN)
    std = opts.std or (declared[1] if declared else IMAGENET_STD)
    return tuple(map(float, mean)), tuple(map(float, std))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise OptionError("device", device, "is unknown; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("device", device, "was asked for, but no CUDA device is available; use cpu")
    return device


def require_batch_for_bn(net: nn.Module, batch_size: int, bn_mode: str) -> None:
    from eqsurgeon.measure import resolve_bn_mode

    if batch_size < 2 and resolve_bn_mode(net, bn_mode) == "batch":
        raise OptionError(
            "batch_size", batch_size, "is too small: BN on batch statistics needs 2 images per forward; "
            "use 2 or more, or bn_mode=eval",
        )  # fmt: skip
