"""Image folders as batches of normalized tensors: discovery, decoding, resizing and a DataLoader.

The order of images is a pure function of the folder contents and the seed, so the same folder always
gives the same statistics. Corrupt files never crash a run:

- ``scan_images`` opens each file's header (cheap: PIL reads only the first bytes). Files that are not
  images or whose header is broken are skipped there, before any worker starts.
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

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

from eqsurgeon.errors import DataError, OptionError, check_range

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
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
    """

    size: tuple[int, int] = (512, 512)
    batch_size: int = 8
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    workers: int = 0
    max_images: int | None = None
    seed: int = 0
    pin_memory: bool | None = None

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


@dataclass(frozen=True)
class Skipped:
    """An image file that could not be used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ImageSource:
    """The usable images of a folder, in the order they are read, plus the files that were skipped.

    Attributes:
        paths: image files to read, deterministic order (sorted, then a seeded shuffle when sampled).
        skipped: files with an image extension whose header could not be read.
        root: the folder that was scanned.
    """

    paths: tuple[Path, ...]
    skipped: tuple[Skipped, ...] = ()
    root: Path | None = None

    def fingerprint(self) -> str:
        """A short hash of the images' relative paths and byte sizes: equal folders give equal hashes.

        >>> ImageSource((), ()).fingerprint()
        'e3b0c44298fc1c14'
        """
        digest = hashlib.sha256()
        for path in sorted(self.paths):  # the folder's identity, not the seeded reading order
            rel = path.relative_to(self.root) if self.root else path
            digest.update(f"{rel.as_posix()}\0{path.stat().st_size}\n".encode())
        return digest.hexdigest()[:16]


def scan_images(root: Path | str) -> ImageSource:
    """Find every image below ``root`` (recursively, sorted by relative path) and check its header.

    Args:
        root: folder to walk; extensions matched case-insensitively (jpg/jpeg/png/bmp/webp/tif/tiff).

    Returns:
        The readable images and the skipped files.

    Raises:
        DataError: the folder is missing, or holds no readable image.

    >>> scan_images("/nonexistent")
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.DataError: image folder /nonexistent not found; pass a folder of jpg/png images
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; pass a folder of jpg/png images")
    candidates = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    paths: list[Path] = []
    skipped: list[Skipped] = []
    for path in candidates:
        reason = _header_problem(path)
        if reason is None:
            paths.append(path)
        else:
            skipped.append(Skipped(path, reason))
    if not paths:
        what = f"{len(skipped)} unreadable file(s), e.g. {skipped[0].path.name}" if skipped else "no image"
        raise DataError(
            f"no usable image in {root} ({what}); pass a folder of "
            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images"
        )
    return ImageSource(tuple(paths), tuple(skipped), root)


def load_rgb(path: Path | str) -> Image.Image:
    """Decode an image file to 8-bit RGB: grayscale, RGBA, palette, CMYK and 16-bit all become RGB.

    16-bit data is scaled (65535 -> 255), not clipped; alpha is dropped (the stored colour is kept);
    EXIF orientation is applied so the pixels are the way a viewer shows them.
    """
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # PIL's convert("RGB") clips these to 255, so a 16-bit image would come out almost white.
            arr = np.asarray(img, dtype=np.float64) / 65535.0 * 255.0
            img = Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8), mode="L")
        elif img.mode == "F":
            arr = np.asarray(img, dtype=np.float64)
            # float images are taken as [0, 1] when they fit, else as [0, 255]
            arr = arr * 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else arr
            img = Image.fromarray(np.clip(np.nan_to_num(arr).round(), 0, 255).astype(np.uint8), mode="L")
        return img.convert("RGB")


class ImageDataset(Dataset):
    """Images as normalized float tensors [3, h, w]; a failed decode yields a ``(None, reason)`` sentinel."""

    def __init__(
        self, paths: Sequence[Path], size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.paths = list(paths)
        self.size = (int(size[0]), int(size[1]))
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
        try:
            image = tvf.pil_to_tensor(load_rgb(self.paths[index]))  # uint8 [3, H, W]
        except Exception as exc:  # any decoder error: PIL raises OSError, ValueError, SyntaxError...
            return None, f"{self.paths[index]}\0{type(exc).__name__}: {exc}"
        h, w = self.size
        height, width = image.shape[-2:]
        # Scale so the image covers (h, w) with its aspect ratio kept, then crop the centre.
        scale = max(h / height, w / width)
        cover = [max(h, math.ceil(height * scale - 1e-6)), max(w, math.ceil(width * scale - 1e-6))]
        image = tvf.resize(image, cover, antialias=True)
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
    source = root_or_source if isinstance(root_or_source, ImageSource) else scan_images(root_or_source)
    order = torch.randperm(len(source.paths), generator=torch.Generator().manual_seed(o.seed)).tolist()
    paths = tuple(source.paths[i] for i in order)[: o.max_images or None]
    source = ImageSource(paths, source.skipped, source.root)
    dataset = ImageDataset(paths, o.size, o.mean, o.std)
    loader = ImageLoader(
        dataset,
        source,
        batch_size=o.batch_size,
        shuffle=False,
        num_workers=o.workers,
        pin_memory=torch.cuda.is_available() if o.pin_memory is None else o.pin_memory,
    )
    return loader, source


def _collate_drop_failed(
    items: list[tuple[torch.Tensor | None, str]],
) -> tuple[torch.Tensor | None, list[tuple[str, str]]]:
    # Runs in the worker: drop sentinels, pass (path, reason) back to the main process with the batch.
    images = [image for image, _ in items if image is not None]
    failures = [tuple(why.split("\0", 1)) for image, why in items if image is None]
    return (torch.stack(images) if images else None), failures  # type: ignore[return-value]


def _header_problem(path: Path) -> str | None:
    # Image.open parses only the header; a zero-byte, non-image or header-broken file fails here.
    try:
        with Image.open(path) as img:
            width, height = img.size
        return None if width > 0 and height > 0 else "image has zero size"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
