"""MMSegmentation's training pipeline as joint image/mask ``torchvision.transforms.v2`` transforms.

    RandomResize(scale, ratio 0.5–2.0) → RandomCrop(cat_max_ratio 0.75) → RandomFlip → PhotoMetricDistortion

Images are ``tv_tensors.Image`` (uint8, CHW, RGB) and masks ``tv_tensors.Mask`` (uint8, 1HW) travelling
together, so every geometric op moves both and the colour ops touch only the image. All randomness comes
from torch's global generator; the dataset seeds it per (seed, epoch, sample index) around the call, so a
sample's augmentation does not depend on which worker draws it. Each transform only draws its random
numbers; what it does with them is a pure function in :mod:`eqsurgeon.training.augment`.

Crops smaller than the crop size are not padded here: as in mmseg, the batch is padded after normalization
(:class:`PadCollate` stacks and records each size, ``augment.normalize`` zeroes the padding on the device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from eqsurgeon.training.augment import (
    PaddedBatch,
    PhotometricDraws,
    pad_batch,
    photometric_distortion,
    random_crop_box,
    random_resize_size,
    rescale_size,
)


def train_pipeline(
    crop_size: tuple[int, int],
    scale: tuple[int, int],
    ratio_range: tuple[float, float],
    cat_max_ratio: float,
    flip_prob: float,
    photometric: bool,
    ignore_index: int,
) -> v2.Compose:
    """The MMSeg training pipeline for one (image, mask) pair.

    Args:
        crop_size: (height, width) of the training crop.
        scale: MMSeg's resize scale (long edge, short edge) before the random ratio, e.g. (2048, 512).
        ratio_range: range of the random ratio applied to ``scale``.
        cat_max_ratio: a crop is re-drawn (up to 10 times) while one class covers more than this share.
        flip_prob: probability of a horizontal flip.
        photometric: apply PhotoMetricDistortion.
        ignore_index: label of pixels that count for nothing (the crop's class count skips it).

    Returns:
        The transform; its output is at most ``crop_size`` (:class:`PadCollate` pads the batch).

    >>> t = train_pipeline((32, 32), (64, 32), (0.5, 2.0), 0.75, 0.5, True, 255)
    >>> img, mask = t(tv_tensors.Image(torch.zeros(3, 40, 50, dtype=torch.uint8)),
    ...               tv_tensors.Mask(torch.zeros(1, 40, 50, dtype=torch.uint8)))
    >>> img.shape[-2] <= 32 and img.shape[-1] <= 32 and img.shape[-2:] == mask.shape[-2:]
    True
    """
    steps: list[v2.Transform] = [
        RandomResize(scale, ratio_range),
        RandomCrop(crop_size, cat_max_ratio, ignore_index),
        v2.RandomHorizontalFlip(flip_prob),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    return v2.Compose(steps)


def eval_pipeline(scale: tuple[int, int] | None) -> v2.Compose:
    """MMSeg's test pipeline: resize the image (keep ratio) to ``scale``; the mask keeps its size.

    Predictions are resized back to the mask, so the metric is computed at the original resolution.

    >>> t = eval_pipeline((64, 32))
    >>> img, mask = t(tv_tensors.Image(torch.zeros(3, 40, 50, dtype=torch.uint8)),
    ...               torch.zeros(1, 40, 50, dtype=torch.uint8))
    >>> tuple(img.shape), tuple(mask.shape)
    ((3, 32, 40), (1, 40, 50))
    """
    return v2.Compose([KeepRatioResize(scale)] if scale else [v2.Identity()])


class RandomResize(v2.Transform):
    """Resize to int(``scale`` × r), r ~ U(ratio_range), keeping aspect (bilinear image, nearest mask)."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.ratio_range
        ratio = lo + (hi - lo) * torch.rand(()).item()
        h, w = _size(flat_inputs)
        return {"size": list(random_resize_size(h, w, self.scale, ratio))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # antialias=False matches cv2's INTER_LINEAR, which MMSeg uses.
        return F.resize(inpt, params["size"], antialias=False)


class KeepRatioResize(RandomResize):
    """Deterministic keep-ratio resize of the image to ``scale`` (MMSeg's test-time Resize).

    Only the image: MMSeg's test pipeline loads the labels after resizing, so the metric is computed at
    the original resolution (the dataset hands the mask over as a ``tv_tensors.Mask``, which v2 would
    otherwise resize too).
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, scale: tuple[int, int]) -> None:
        super().__init__(scale, (1.0, 1.0))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _size(flat_inputs)
        return {"size": list(rescale_size(h, w, self.scale))}


class RandomCrop(v2.Transform):
    """Random crop; re-drawn up to 10 times while one class covers more than ``cat_max_ratio`` of it."""

    def __init__(self, crop_size: tuple[int, int], cat_max_ratio: float, ignore_index: int) -> None:
        super().__init__()
        self.crop_size = tuple(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        if mask is None:  # no class test without a mask: a plain random crop of the image
            mask = torch.zeros(_size(flat_inputs), dtype=torch.uint8)
        box = random_crop_box(mask, self.crop_size, self.cat_max_ratio, self.ignore_index, draw_offsets)
        return dict(zip(("top", "left", "height", "width"), box, strict=True))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, **params)


class PhotoMetricDistortion(v2.Transform):
    """MMSeg's colour jitter, each step with probability 0.5, on the uint8 image only.

    brightness + U(-32, 32); contrast × U(0.5, 1.5) (before or after the HSV steps, at random);
    saturation × U(0.5, 1.5); hue + U{-18..17} on OpenCV's 0–180 hue scale
    (:func:`~eqsurgeon.training.augment.photometric_distortion` applies them).
    """

    _transformed_types = (tv_tensors.Image,)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def maybe(draw: float) -> float | None:
            return draw if torch.rand(()).item() < 0.5 else None

        # Draw in a fixed order so the stream of random numbers is the same for every image.
        brightness = maybe(-32 + 64 * torch.rand(()).item())
        contrast_first = torch.rand(()).item() < 0.5
        contrast = maybe(0.5 + torch.rand(()).item())
        saturation = maybe(0.5 + torch.rand(()).item())
        hue = maybe(float(torch.randint(-18, 18, ()).item()))  # {-18..17}, numpy's randint(-18, 18)
        hue_step = None if hue is None else int(hue)
        return {"draws": PhotometricDraws(brightness, contrast_first, contrast, saturation, hue_step)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = photometric_distortion(inpt.as_subclass(torch.Tensor), params["draws"])
        return tv_tensors.wrap(out, like=inpt)


class PadCollate:
    """DataLoader ``collate_fn``: (image, mask) items → :class:`~eqsurgeon.training.augment.PaddedBatch`.

    Pads every item bottom/right to ``size`` (or the largest item), the mask with ``ignore_index``;
    ``augment.normalize`` then zeroes the padded pixels after normalization, as mmseg does.

    >>> collate = PadCollate((4, 4), 255)
    >>> batch = collate([(torch.ones(3, 3, 4, dtype=torch.uint8), torch.zeros(3, 4, dtype=torch.uint8))])
    >>> tuple(batch.images.shape), batch.sizes.tolist()
    ((1, 3, 4, 4), [[3, 4]])
    """

    def __init__(self, size: tuple[int, int], ignore_index: int) -> None:
        self.size = tuple(size)
        self.ignore_index = ignore_index

    def __call__(self, items: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> PaddedBatch:
        images, masks = zip(*items, strict=True)
        return pad_batch(images, masks, self.size, self.ignore_index)  # type: ignore[arg-type]


def draw_offsets(max_top: int, max_left: int) -> tuple[int, int]:
    """RandomCrop's draw: (top, left) uniform in [0, max_top] × [0, max_left], from torch's generator.

    >>> draw_offsets(0, 0)
    (0, 0)
    """
    top = int(torch.randint(0, max_top + 1, ()).item())
    return top, int(torch.randint(0, max_left + 1, ()).item())


def _size(flat_inputs: list[Any]) -> tuple[int, int]:
    h, w = flat_inputs[0].shape[-2:]
    return int(h), int(w)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation, independent of worker and rank.

    >>> sample_seed(0, 0, 1) != sample_seed(0, 1, 0)
    True
    """
    # SplitMix-style mixing of the three numbers; plain arithmetic so it is the same on every platform.
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 31)) % 2**63
