"""Segmentation folders for the gradient probe: (image, mask) batches resized together.

A segmentation folder is ``DIR/images`` + ``DIR/masks`` (what ``eqsurgeon demo-data`` writes), or the
same under ``DIR/train``; mask ``masks/<stem>.png`` belongs to image ``images/<stem>.*`` and holds class
indices, 255 for "ignore". Images are read as :class:`eqsurgeon.images.ImageDataset` reads them (scaled
to cover the size, centre-cropped, normalized); masks take the same geometry with nearest-neighbour
resizing, so a label never blends two classes.

>>> import tempfile, numpy as np
>>> from PIL import Image
>>> root = Path(tempfile.mkdtemp())
>>> for d in ("images", "masks"):
...     (root / d).mkdir()
>>> Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
>>> Image.fromarray(np.ones((8, 8), np.uint8)).save(root / "masks" / "a.png")
>>> [(tuple(x.shape), tuple(m.shape)) for x, m in labeled_batches(root, (4, 4), 2)]
[((1, 3, 4, 4), (1, 4, 4))]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from eqsurgeon.errors import DataError
from eqsurgeon.image_files import IMAGE_EXTENSIONS, load_rgb
from eqsurgeon.images import IMAGENET_MEAN, IMAGENET_STD


def segmentation_dirs(root: Path | str) -> tuple[Path, Path] | None:
    """``(images dir, masks dir)`` when ``root`` is a segmentation folder, else None.

    >>> segmentation_dirs("/nonexistent") is None
    True
    """
    root = Path(root)
    for base in (root, root / "train"):
        if (base / "images").is_dir() and (base / "masks").is_dir():
            return base / "images", base / "masks"
    return None


def image_root(data: Path | str) -> Path | str:
    """The folder whose images are the model's inputs: ``images/`` of a segmentation folder, else ``data``.

    Scanning the whole of a segmentation folder would read its masks as images.
    """
    dirs = segmentation_dirs(data)
    return dirs[0] if dirs is not None else data


def labeled_batches(
    root: Path | str,
    size: tuple[int, int],
    batch_size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    max_images: int | None = None,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(images ``[n, 3, h, w]`` float32 normalized, masks ``[n, h, w]`` int64) batches of a folder.

    The files are taken in a seeded order (as :func:`eqsurgeon.images.image_loader` takes them), the
    first ``max_images`` of it.

    Raises:
        DataError: ``root`` is not a segmentation folder, an image has no mask, or a file is unreadable.
    """
    dirs = segmentation_dirs(root)
    if dirs is None:
        raise DataError(f"{root} has no images/ and masks/ folders; pass a segmentation folder")
    images_dir, masks_dir = dirs
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"no image in {images_dir}; pass a folder of jpg/png images with masks")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [images[i] for i in order][: max_images or None]
    pairs = [_read_pair(p, masks_dir / f"{p.stem}.png", size) for p in chosen]
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    batches = []
    for i in range(0, len(pairs), batch_size):
        group = pairs[i : i + batch_size]
        x = torch.stack([img for img, _ in group]).float().div(255).sub(m).div(s)
        batches.append((x, torch.stack([mask for _, mask in group]).long()))
    return batches


def _read_pair(image_path: Path, mask_path: Path, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    if not mask_path.is_file():
        raise DataError(f"image {image_path} has no mask (expected {mask_path}); add it or remove the image")
    try:
        image = tvf.pil_to_tensor(load_rgb(image_path))
        with Image.open(mask_path) as img:
            if img.mode not in ("L", "P"):
                raise DataError(f"mask {mask_path} has mode {img.mode}; masks are single-channel index PNGs")
            mask = torch.from_numpy(np.array(img, dtype=np.uint8))[None]
    except OSError as exc:
        raise DataError(f"cannot read {image_path.name} or its mask ({exc}); replace them") from None
    if image.shape[-2:] != mask.shape[-2:]:
        raise DataError(f"mask {mask_path} is not the size of its image {image_path.name}")
    h, w = size
    height, width = image.shape[-2:]
    scale = max(h / height, w / width)  # cover (h, w), keep the aspect ratio, crop the centre
    cover = [max(h, math.ceil(height * scale - 1e-6)), max(w, math.ceil(width * scale - 1e-6))]
    image = tvf.center_crop(tvf.resize(image, cover, antialias=True), [h, w])
    mask = tvf.center_crop(tvf.resize(mask, cover, interpolation=InterpolationMode.NEAREST), [h, w])
    return image, mask[0]
