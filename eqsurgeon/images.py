"""Image folders as batches of normalized tensors: resize, normalize, and a DataLoader that skips bad files.

The order of images is a pure function of the folder contents and the seed, so the same folder always
gives the same statistics. Corrupt files never crash a run:

- ``scan_images`` (in ``eqsurgeon.image_files``) opens each file's header (cheap: PIL reads only the
  first bytes). Files that are not images or whose header is broken are skipped there, before any worker
  starts, and so are images over the pixel or aspect cap (:class:`ImageLimits`): a 370-byte PNG can
  declare 1×100000 pixels, whose resize to cover 512×512 would take gigabytes. The caps are checked
  again before each decode.
- A file whose header is fine but whose pixel data is broken (a truncated JPEG, a bad PNG chunk) only
  fails when decoded, inside a loader worker. The dataset returns a sentinel instead of raising, the
  collate function drops it and passes its path along, and ``ImageLoader`` records it in ``skipped``.
  Verifying every file at discovery would decode the whole folder twice, which is what ``max_images``
  exists to avoid.

>>> import tempfile, numpy as np
>>> from PIL import Image
>>> root = Path(tempfile.mkdtemp())
>>> Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a.png")
>>> loader, source = image_loader(root, LoaderOptions(size=(4, 4), batch_size=2))
>>> [tuple(x.shape) for x in loader], len(source.paths)
([(1, 3, 4, 4)], 1)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

from eqsurgeon.errors import DataError, OptionError, check_range, one_line
from eqsurgeon.image_caps import MAX_COVER, ImageLimits, header_size
from eqsurgeon.image_files import ImageSource, Skipped, load_rgb, scan_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LoaderOptions:
    """How :func:`image_loader` reads a folder.

    Attributes:
        size: (height, width) of every image tensor.
        batch_size: images per batch (a batch can be smaller when files fail to decode).
        mean: per-channel mean, in [0, 1] units. See ``eqsurgeon.inputs.model_normalization``.
        std: per-channel std, in [0, 1] units.
        workers: loader worker processes (0 decodes in this process).
        max_images: keep only this many images.
        seed: seeds the shuffle of the sorted file list, so a ``max_images`` subset is a random sample of
            the folder rather than its alphabetically first files, and equal seeds give equal orders.
        pin_memory: pin batches for faster host-to-GPU copies; default: when CUDA is available.
        limits: pixel and aspect caps, checked on each header before decoding.
    """

    size: tuple[int, int] = (512, 512)
    batch_size: int = 8
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    workers: int = 0
    max_images: int | None = None
    seed: int = 0
    pin_memory: bool | None = None
    limits: ImageLimits = field(default_factory=ImageLimits)

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 0)
        check_range("workers", self.workers, -1)
        if self.max_images is not None:
            check_range("max_images", self.max_images, 0)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise OptionError(name, values, "needs 3 finite values, e.g. 0.485,0.456,0.406")
        if min(self.std) <= 0:
            raise OptionError("std", self.std, "needs positive values, e.g. 0.229,0.224,0.225")


class ImageDataset(Dataset):
    """Images as normalized float tensors [3, h, w]; a failed decode yields a ``(None, reason)`` sentinel."""

    def __init__(
        self,
        paths: Sequence[Path],
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        limits: ImageLimits | None = None,
    ) -> None:
        self.paths = list(paths)
        self.size = (int(size[0]), int(size[1]))
        self.limits = limits or ImageLimits()
        self.finish = v2.Compose(
            [
                v2.CenterCrop(list(self.size)),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(mean), std=list(std)),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str]:
        path = self.paths[index]
        try:
            width, height = header_size(path, self.limits)  # caps first: nothing decoded yet
            # either orientation: EXIF may turn the image
            needed = max(math.prod(_cover(self.size, hw)) for hw in ((height, width), (width, height)))
            if needed > MAX_COVER * self.limits.max_pixels:
                raise DataError(
                    f"{width}x{height} pixels would be resized to {needed / 1e6:.0f} MP to cover the input "
                    f"size {self.size[0]}x{self.size[1]}; use a smaller input size"
                )
            image = tvf.pil_to_tensor(load_rgb(path, self.limits))  # uint8 [3, H, W]
        except Exception as exc:  # any decoder error: PIL raises OSError, ValueError, SyntaxError...
            return None, f"{path}\0{type(exc).__name__}: {one_line(exc)}"
        # Scale so the image covers (h, w) with its aspect ratio kept, then crop the centre.
        image = tvf.resize(image, _cover(self.size, tuple(image.shape[-2:])), antialias=True)
        return self.finish(image), ""


class ImageLoader(DataLoader):
    """A DataLoader that yields plain image tensors and records files that failed to decode.

    Attributes:
        source: the scanned folder.
        failed: files that failed to decode during the last iteration.
        images_seen: images yielded during the last iteration.
    """

    def __init__(self, dataset: ImageDataset, source: ImageSource, **kwargs: object) -> None:
        super().__init__(dataset, collate_fn=_collate_drop_failed, **kwargs)
        self.source = source
        self.failed: list[Skipped] = []
        self.images_seen = 0

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """Files skipped at discovery plus the ones that failed to decode so far."""
        return (*self.source.skipped, *self.failed)

    def __iter__(self) -> Iterator[torch.Tensor]:  # type: ignore[override]
        self.failed, self.images_seen = [], 0
        for images, failures in super().__iter__():
            self.failed.extend(Skipped(Path(p), why) for p, why in failures)
            if images is not None:
                self.images_seen += images.shape[0]
                yield images
        if self.images_seen == 0:
            raise DataError(
                f"none of the {len(self.dataset)} image(s) from {self.source.root} could be decoded (e.g. "
                f"{self.failed[0].path.name}: {self.failed[0].reason}); pass a folder of valid images"
            )


def image_loader(
    root_or_source: Path | str | ImageSource, options: LoaderOptions | None = None
) -> tuple[ImageLoader, ImageSource]:
    """A loader over a folder's images, resized to cover ``size``, centre-cropped and normalized.

    Args:
        root_or_source: folder to scan, or the result of ``scan_images``.
        options: size, batch size, normalization, workers, sampling (see :class:`LoaderOptions`).

    Returns:
        The loader (yields float32 tensors [n, 3, h, w]) and the source it reads, in reading order.

    >>> image_loader("/nonexistent")
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.DataError: image folder /nonexistent not found; pass a folder of jpg/png images
    """
    o = options or LoaderOptions()
    source = (
        root_or_source if isinstance(root_or_source, ImageSource) else scan_images(root_or_source, o.limits)
    )
    order = torch.randperm(len(source.paths), generator=torch.Generator().manual_seed(o.seed)).tolist()
    paths = tuple(source.paths[i] for i in order)[: o.max_images or None]
    source = ImageSource(paths, source.skipped, source.root)
    dataset = ImageDataset(paths, o.size, o.mean, o.std, o.limits)
    loader = ImageLoader(
        dataset,
        source,
        batch_size=o.batch_size,
        shuffle=False,
        num_workers=o.workers,
        pin_memory=torch.cuda.is_available() if o.pin_memory is None else o.pin_memory,
    )
    return loader, source


def _cover(size: tuple[int, int], image: tuple[int, int]) -> list[int]:
    # The (h, w) an image of (height, width) is resized to so it covers ``size`` with its aspect kept.
    (h, w), (height, width) = size, image
    scale = max(h / height, w / width)
    return [max(h, math.ceil(height * scale - 1e-6)), max(w, math.ceil(width * scale - 1e-6))]


def _collate_drop_failed(
    items: list[tuple[torch.Tensor | None, str]],
) -> tuple[torch.Tensor | None, list[tuple[str, str]]]:
    # Runs in the worker: drop sentinels, pass (path, reason) back to the main process with the batch.
    images = [image for image, _ in items if image is not None]
    failures = [tuple(why.split("\0", 1)) for image, why in items if image is None]
    return (torch.stack(images) if images else None), failures  # type: ignore[return-value]
