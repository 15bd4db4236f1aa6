"""Segmentation datasets: ADE20K, Cityscapes, VOC2012(+aug) and a generic images/ + masks/ folder.

A dataset is a list of (image, mask) file pairs found by :func:`find_samples`, read by
:class:`SegmentationDataset`. Items are indexed by ``(epoch, index)`` so the augmentation of a sample is
seeded by (seed, epoch, index) alone, whichever worker or rank reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from eqsurgeon.errors import DataError, one_line
from eqsurgeon.image_caps import ImageLimits, open_checked
from eqsurgeon.training.augment import reduce_zero_label
from eqsurgeon.training.transforms import sample_seed

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FORMATS = ("auto", "folder", "ade20k", "cityscapes", "voc")


@dataclass(frozen=True)
class SampleList:
    """The files of one split: what ``find_samples`` found.

    Attributes:
        format: the layout that was recognised.
        split: "train" or "val".
        images: image files, in a stable order.
        masks: the mask file of each image.
        reduce_zero_label: label 0 means "ignore" and the others shift down by one (ADE20K).
    """

    format: str
    split: str
    images: tuple[Path, ...]
    masks: tuple[Path, ...]
    reduce_zero_label: bool = False


def find_samples(root: Path, split: str, fmt: str = "auto") -> SampleList:
    """List the (image, mask) pairs of ``split`` ("train" or "val") under ``root``.

    Args:
        root: dataset folder.
        split: "train" or "val".
        fmt: "auto" (detect from the layout), "folder", "ade20k", "cityscapes" or "voc".

    Raises:
        DataError: the folder does not exist, matches no layout, is empty, or an image has no mask.

    >>> find_samples(Path("/nonexistent"), "train")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    eqsurgeon.errors.DataError: data folder /nonexistent does not exist ...
    """
    root = Path(root)
    if root.is_file():
        raise DataError(f"data folder {root} is a file; pass the dataset folder with --data")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass an existing folder with --data")
    if fmt not in FORMATS:
        raise DataError(f"unknown data.format {fmt!r}; use one of {', '.join(FORMATS)}")
    fmt = detect_format(root) if fmt == "auto" else fmt
    found = _FINDERS[fmt](root, split)
    if not found.images:
        raise DataError(f"no {split} images found in {root} ({fmt} layout); check --data and data.format")
    return found


class SegmentationDataset(torch.utils.data.Dataset):
    """Reads, checks and augments (image, mask) pairs.

    Items are ``(image uint8 [3, H, W], mask uint8 [H, W])``. The key is an index, or ``(epoch, index)``
    from :class:`~eqsurgeon.training.sampler.InfiniteSampler`; the transform then runs under a torch generator
    seeded by (seed, epoch, index).

    Args:
        samples: the files, from :func:`find_samples`.
        num_classes: labels must lie in [0, num_classes) or equal ``ignore_index``.
        ignore_index: label that counts for nothing (255 in every supported format).
        transform: joint image/mask transform (``transforms.train_pipeline`` or ``eval_pipeline``).
        seed: run seed mixed into each sample's augmentation seed.
        limits: pixel and aspect caps, checked on both headers before anything is decoded.

    Any failure to read a sample, in a loader worker or not, is a :class:`DataError` naming the file, so
    the run ends with the same one line either way.

    >>> import tempfile
    >>> from eqsurgeon.training.demo_data import make_demo_data
    >>> root = make_demo_data(Path(tempfile.mkdtemp()) / "d", images=2, size=32)
    >>> ds = SegmentationDataset(find_samples(root, "train"), num_classes=5)
    >>> [tuple(t.shape) for t in ds[0]]
    [(3, 32, 32), (32, 32)]
    """

    def __init__(
        self,
        samples: SampleList,
        num_classes: int,
        ignore_index: int = 255,
        transform: v2.Transform | None = None,
        seed: int = 0,
        limits: ImageLimits | None = None,
    ) -> None:
        self.limits = limits or ImageLimits()
        self.samples = samples
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, mask = self.read(index)
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask[None]))
            mask = mask[0]
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode sample ``index`` and check its mask: (uint8 [3, H, W], uint8 [H, W])."""
        pixels, mask = self.read_arrays(index)
        assert pixels is not None
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), mask

    def read_arrays(self, index: int, keep_jpeg: bool = False) -> tuple[np.ndarray | None, torch.Tensor]:
        """Sample ``index`` as (uint8 [H, W, 3] RGB in the decoder's layout, checked mask uint8 [H, W]).

        Both headers are checked against the caps and each other before anything is decoded, and each
        file is opened once. With ``keep_jpeg`` a JPEG image is left undecoded (None), for the GPU.
        """
        image_path, mask_path = self.samples.images[index], self.samples.masks[index]
        with open_checked(image_path, self.limits) as img, open_checked(mask_path, self.limits) as labels:
            if labels.size != img.size:  # on the headers: a mask must not cost more than its image
                raise DataError(
                    f"mask {mask_path} is {labels.size[0]}x{labels.size[1]} but its image {image_path.name} "
                    f"is {img.size[0]}x{img.size[1]}; masks must match their image's size"
                )
            pixels = None if keep_jpeg and img.format == "JPEG" else _decode_rgb(img, image_path)
            mask = _decode_mask(labels, mask_path)
        return pixels, self._checked(mask, mask_path)

    def _checked(self, mask: np.ndarray, mask_path: Path) -> torch.Tensor:
        if self.samples.reduce_zero_label:
            # ADE20K: 0 is "other", ignored; classes 1..150 become 0..149; 255 stays 255 (as in mmseg).
            mask = reduce_zero_label(torch.from_numpy(mask)).numpy()
        # numpy, not torch: several times faster on uint8 maps, and workers do this for every image
        if mask.max(initial=0) < self.num_classes:  # the usual case, in one pass
            return torch.from_numpy(mask)
        bad = (mask >= self.num_classes) & (mask != self.ignore_index)
        if bad.any():
            label = int(mask[bad][0])
            raise DataError(
                f"mask {mask_path} has label {label}, outside data.num_classes = {self.num_classes} and not "
                f"the ignore index {self.ignore_index}; fix the mask or set data.num_classes"
            )
        return torch.from_numpy(mask)


def _decode_rgb(img: Image.Image, path: Path) -> np.ndarray:
    try:
        return np.array(img) if img.mode == "RGB" else np.array(img.convert("RGB"))
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        why = f"{type(exc).__name__}: {one_line(exc)}"
        raise DataError(f"cannot decode image {path} ({why}); remove or replace it") from None


def _decode_mask(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode not in ("L", "P"):
        raise DataError(
            f"mask {path} has mode {img.mode}; masks must be single-channel index PNGs (mode L or P)"
        )
    try:
        return np.array(img, dtype=np.uint8)
    except Exception as exc:  # a truncated or corrupt file: PIL raises OSError, ValueError, SyntaxError...
        raise DataError(
            f"cannot decode mask {path} ({type(exc).__name__}: {one_line(exc)}); remove or replace it"
        ) from None


def detect_format(root: Path) -> str:
    """The layout of the dataset folder ``root``: "ade20k", "cityscapes", "voc" or "folder".

    Raises:
        DataError: no known layout.

    >>> detect_format(Path("/nonexistent"))  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    eqsurgeon.errors.DataError: /nonexistent matches no known dataset layout ...
    """
    if (root / "ADEChallengeData2016").is_dir() or (root / "annotations" / "training").is_dir():
        return "ade20k"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "JPEGImages").is_dir() or (root / "VOCdevkit").is_dir():
        return "voc"
    if (root / "images").is_dir() or (root / "train" / "images").is_dir():
        return "folder"
    raise DataError(
        f"{root} matches no known dataset layout: expected images/ + masks/ (generic), "
        "ADEChallengeData2016/, leftImg8bit/ + gtFine/, or JPEGImages/ + SegmentationClass[Aug]/; "
        "see the README, eqsurgeon train, Data"
    )


def _folder(root: Path, split: str) -> SampleList:
    # Either root/<split>/{images,masks} or one root/{images,masks} for every split (e.g. demo-data).
    base = root / split if (root / split / "images").is_dir() else root
    images_dir, masks_dir = base / "images", base / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DataError(f"{d} is missing: the generic layout is DIR/images/*.jpg|png + DIR/masks/*.png")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    masks = [masks_dir / f"{p.stem}.png" for p in images]
    _check_masks_exist(images, masks)
    return SampleList("folder", split, tuple(images), tuple(masks))


def _ade20k(root: Path, split: str) -> SampleList:
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    sub = {"train": "training", "val": "validation"}[split]
    images_dir = base / "images" / sub
    if not images_dir.is_dir():
        raise DataError(f"{images_dir} is missing: ADE20K needs ADEChallengeData2016/images/{sub}/")
    images = sorted(images_dir.glob("*.jpg"))
    masks = [base / "annotations" / sub / f"{p.stem}.png" for p in images]
    _check_masks_exist(images, masks)
    return SampleList("ade20k", split, tuple(images), tuple(masks), reduce_zero_label=True)


def _cityscapes(root: Path, split: str) -> SampleList:
    images_dir = root / "leftImg8bit" / split
    if not images_dir.is_dir():
        raise DataError(f"{images_dir} is missing: Cityscapes needs leftImg8bit/{split}/<city>/")
    images = sorted(images_dir.glob("*/*_leftImg8bit.png"))
    masks = [
        root
        / "gtFine"
        / split
        / p.parent.name
        / p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
        for p in images
    ]
    _check_masks_exist(
        images, masks, hint="create *_labelTrainIds.png with cityscapesscripts' createTrainIdLabelImgs"
    )
    return SampleList("cityscapes", split, tuple(images), tuple(masks))


def _voc(root: Path, split: str) -> SampleList:
    base = root / "VOCdevkit" / "VOC2012" if (root / "VOCdevkit").is_dir() else root
    sets = base / "ImageSets" / "Segmentation"
    if split == "train" and (base / "SegmentationClassAug").is_dir():
        list_file = next((p for p in (sets / "train_aug.txt", sets / "aug.txt") if p.is_file()), None)
        mask_dir = base / "SegmentationClassAug"
        if list_file is None:
            raise DataError(f"{sets}/train_aug.txt is missing: VOC2012+aug needs the list of 10582 train ids")
    else:
        list_file, mask_dir = sets / f"{split}.txt", base / "SegmentationClass"
        if not list_file.is_file():
            raise DataError(f"{list_file} is missing: VOC2012 needs ImageSets/Segmentation/{split}.txt")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    images = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
    masks = [mask_dir / f"{i}.png" for i in ids]
    missing = next((p for p in images if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"image {missing} listed in {list_file.name} does not exist; check the VOC download")
    _check_masks_exist(images, masks)
    return SampleList("voc", split, tuple(images), tuple(masks))


def _check_masks_exist(images: list[Path], masks: list[Path], hint: str = "") -> None:
    for image, mask in zip(images, masks, strict=True):
        if not mask.is_file():
            fix = hint or "add the mask or remove the image"
            raise DataError(f"image {image} has no mask (expected {mask}); {fix}")


_FINDERS = {"folder": _folder, "ade20k": _ade20k, "cityscapes": _cityscapes, "voc": _voc}
