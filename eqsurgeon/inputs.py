"""From what the user named to what the stages run on: a module on its device, and batches.

The library calls in ``eqsurgeon.api`` accept a module, a spec or a ``ModelRef``, and an image folder,
a list of batches or None (synthetic input); this module turns them into an ``nn.Module`` (with its
checkpoint's calibration record) and an iterable of batches, resolving input size, normalization and
device from the options, the record and what the model declares, in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from eqsurgeon.errors import DataError, OptionError, check_range
from eqsurgeon.image_caps import MAX_ASPECT, MAX_PIXELS, ImageLimits
from eqsurgeon.images import IMAGENET_MEAN, IMAGENET_STD, LoaderOptions
from eqsurgeon.records import CalibrationRecord

MAX_SIDE = 16384  # a larger input side is a typo, and its activations would not fit in memory
MAX_INPUT_PIXELS = 2**26  # 64 MP per image (8192×8192): a batch of 8 is 6 GiB of input alone
MAX_SEED = 2**63 - 1  # torch.manual_seed's range


@dataclass(frozen=True)
class ModelRef:
    """A model as the commands name it: a spec, its factory's keyword arguments and a checkpoint.

    The spec may be a ``save_pretrained`` folder (transformers or smp); the checkpoint a ``.safetensors``,
    ``.pth``/``.pt``/``.bin`` file or such a folder (``eqsurgeon.io.formats``).

    >>> ModelRef("upernet_tiny", {"num_classes": 5}).spec
    'upernet_tiny'
    """

    spec: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    checkpoint_key: str | None = None  # the entry of a pickled checkpoint with the weights (state_dict_ema)


ModelLike = nn.Module | ModelRef | str
Data = Path | str | Iterable[torch.Tensor] | None


@dataclass(frozen=True)
class DataOptions:
    """How batches are made, for every call.

    Attributes:
        input_size: (height, width); None: the size the model declares, else 512×512.
        batch_size: images per forward.
        batches: forwards to measure over (analyze, check); calibrate and verify read the whole folder.
        max_images: read at most this many images of a folder.
        workers: image decoding worker processes.
        mean: per-channel input mean on the 0–1 scale; None: the model's declared mean, else ImageNet's.
        std: likewise for the std.
        seed: seeds model initialization, synthetic input and image sampling.
        device: "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
        max_pixels: images whose header declares more pixels are skipped before decoding.
        max_aspect: likewise for images longer than this on one side than the other.
    """

    input_size: tuple[int, int] | None = None
    batch_size: int = 8
    batches: int = 1
    max_images: int | None = None
    workers: int = 2
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0
    device: str = "auto"
    max_pixels: int = MAX_PIXELS
    max_aspect: float = MAX_ASPECT

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 0, 65536)
        check_range("batches", self.batches, 0)
        check_range("workers", self.workers, -1, 1025)
        if not 0 <= self.seed <= MAX_SEED:
            raise OptionError("seed", self.seed, "is out of range; use 0 to 2**63 - 1")
        if self.max_images is not None:
            check_range("max_images", self.max_images, 0)
        if self.input_size is not None and not (
            len(self.input_size) == 2 and all(1 <= s <= MAX_SIDE for s in self.input_size)
        ):
            raise OptionError("input_size", self.input_size, f"needs two sides from 1 to {MAX_SIDE}")
        if self.input_size is not None and self.input_size[0] * self.input_size[1] > MAX_INPUT_PIXELS:
            over = f"is over {MAX_INPUT_PIXELS / 1e6:.0f} MP per image; use fewer pixels"
            raise OptionError("input_size", self.input_size, over)
        ImageLimits(self.max_pixels, self.max_aspect)  # checks both

    @property
    def limits(self) -> ImageLimits:
        """The image caps as the image loader takes them."""
        return ImageLimits(self.max_pixels, self.max_aspect)


if TYPE_CHECKING:
    from eqsurgeon.io import Source


def synthetic_batches(
    size: tuple[int, int], batch_size: int, count: int = 1, seed: int = 0, device: str = "cpu"
) -> list[torch.Tensor]:
    """Normalized-image-like batches: i.i.d. N(0, 1) pixels, reproducible from ``seed``.

    >>> synthetic_batches((4, 4), 2, count=3)[2].shape
    torch.Size([2, 3, 4, 4])
    """
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, 3, *size, generator=gen).to(device) for _ in range(count)]


def materialize(
    model: ModelLike, opts: DataOptions
) -> tuple[nn.Module, CalibrationRecord | None, str, Source | None]:
    # (module on the device, its weights' record, the name reports show, where the weights came from)
    if isinstance(model, nn.Module):
        return model, None, type(model).__name__, None
    from eqsurgeon.loading import build

    ref = ModelRef(model) if isinstance(model, str) else model
    torch.manual_seed(opts.seed)  # a fresh model's initialization is part of what is measured
    built = build(ref.spec, ref.kwargs, ref.checkpoint, ref.checkpoint_key)
    return built.model.to(resolve_device(opts.device)), built.record, ref.spec, built.source


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
        limits=opts.limits,
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


def require_batch_for_bn(net: nn.Module, batch_size: int, bn_mode: str, images: int | None = None) -> None:
    """Refuse what BN on batch statistics cannot measure: one image per forward, or one image at all."""
    from eqsurgeon.measure import resolve_bn_mode

    if resolve_bn_mode(net, bn_mode) != "batch":
        return
    if batch_size < 2:
        raise OptionError(
            "batch_size", batch_size, "is too small: BN on batch statistics needs 2 images per forward; "
            "use 2 or more, or bn_mode=eval",
        )  # fmt: skip
    if images is not None and images < 2:
        raise DataError(
            f"the data has {images} usable image(s), but BN on batch statistics needs 2 per forward; "
            "add images, or pass bn_mode=eval"
        )


def model_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean/std a model declares for its input, or None when it declares none.

    Looks at ``eqsurgeon_cfg`` (zoo models), then timm's ``pretrained_cfg``/``default_cfg``, on the model
    first and then on its submodules in order (a zoo model's timm backbone carries timm's config).

    >>> m = nn.Identity(); m.eqsurgeon_cfg = {"mean": (0.5,) * 3, "std": (0.25,) * 3}
    >>> model_normalization(m)
    ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    """
    cfg = _declared_cfg(model, ("mean", "std"))
    return None if cfg is None else (tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"])))


def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The (h, w) input size a model declares (``input_size`` as (C, H, W) or (H, W)), or None.

    >>> m = nn.Identity(); m.eqsurgeon_cfg = {"input_size": (3, 512, 512)}
    >>> model_input_size(m)
    (512, 512)
    """
    cfg = _declared_cfg(model, ("input_size",))
    return None if cfg is None else (int(cfg["input_size"][-2]), int(cfg["input_size"][-1]))


def _declared_cfg(model: nn.Module, keys: tuple[str, ...]) -> dict | None:
    for module in model.modules():
        for attr in ("eqsurgeon_cfg", "pretrained_cfg", "default_cfg"):
            cfg = getattr(module, attr, None)
            if isinstance(cfg, dict) and all(cfg.get(k) is not None for k in keys):
                return cfg
    return None
