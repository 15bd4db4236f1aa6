"""MMSegmentation's data pipeline as pure functions of an image, a mask and explicit random draws.

These functions are the semantics; ``transforms.py`` wraps them as ``torchvision.transforms.v2`` transforms
that draw the random numbers, and a batched (GPU) pipeline must compute the same thing from the same draws.
Each function names the mmcv/mmseg code it reproduces, and ``tests/test_parity_pipeline.py`` checks it against
that code on injected draws. Images are uint8 RGB ``[3, H, W]`` (mmseg works in BGR; every step here is
channel-order blind), masks uint8 ``[H, W]`` or ``[1, H, W]``.

    keep-ratio size ─ random_resize_size ─ random_crop_box ─ (flip) ─ photometric_distortion ─▶ dataset item
    items ─ pad_batch (uint8, mask with ignore) ─ normalize (then 0 where padded) ─▶ model input

The remaining deviations are listed in docs/parity.md: bilinear resizing (cv2's fixed point, here torch's
float: at most one level) and the pixels OpenCV's HSV→RGB rounds instead of truncating (one level).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def rescale_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """Size after fitting (h, w) into ``scale`` = (long edge, short edge), keeping the aspect ratio.

    mmcv's ``rescale_size``: one factor, min(long / max(h, w), short / min(h, w)), each side rounded half up.

    >>> rescale_size(375, 500, (2048, 512))
    (512, 683)
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def random_resize_size(height: int, width: int, scale: tuple[int, int], ratio: float) -> tuple[int, int]:
    """mmcv ``RandomResize(scale, ratio_range, keep_ratio=True)`` for a drawn ``ratio``.

    The target scale is truncated to integers first (``int(scale * ratio)``), then the keep-ratio size is
    computed from it, as mmcv does.

    >>> random_resize_size(375, 500, (2048, 512), 1.2345)
    (632, 843)
    """
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    return rescale_size(height, width, target)


def random_crop_box(
    mask: torch.Tensor | None,
    crop: tuple[int, int],
    cat_max_ratio: float,
    ignore_index: int,
    draw_offsets: Callable[[int, int], tuple[int, int]],
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of mmseg's ``RandomCrop`` on a mask of size (h, w), for given draws.

    ``draw_offsets(max_top, max_left)`` returns one uniform draw from [0, max_top] × [0, max_left] (mmseg:
    two ``np.random.randint``). While one class covers ``cat_max_ratio`` or more of the crop's counted
    pixels (or it holds a single class), the crop is re-drawn, at most 10 times.

    >>> draws = iter([(0, 0), (0, 2)])
    >>> mask = torch.tensor([[0, 0, 1, 2]])
    >>> random_crop_box(mask, (1, 2), 0.75, 255, lambda h, w: next(draws))
    (0, 2, 1, 2)
    """
    assert mask is not None or cat_max_ratio >= 1.0, "the class test needs the mask"
    h, w = (mask.shape[-2], mask.shape[-1]) if mask is not None else (crop[0], crop[1])
    ch, cw = min(crop[0], h), min(crop[1], w)
    top, left = draw_offsets(max(h - crop[0], 0), max(w - crop[1], 0))
    if mask is not None and cat_max_ratio < 1.0:
        for _ in range(10):
            if not dominated(mask[..., top : top + ch, left : left + cw], cat_max_ratio, ignore_index):
                break
            top, left = draw_offsets(max(h - crop[0], 0), max(w - crop[1], 0))
    return top, left, ch, cw


def dominated(labels: torch.Tensor, cat_max_ratio: float, ignore_index: int) -> bool:
    """Whether a crop's labels fail mmseg's ``cat_max_ratio`` test (and the crop must be re-drawn).

    A crop passes when it holds more than one class (ignoring ``ignore_index``) and the largest covers
    less than ``cat_max_ratio`` of the counted pixels.

    >>> dominated(torch.tensor([0, 0, 0, 1]), 0.75, 255), dominated(torch.tensor([0, 0, 1, 1]), 0.75, 255)
    (True, False)
    """
    # bincount over every label (uint8 counts as is), then the few hundred counts in numpy: torch's
    # per-op overhead would cost more than the counting (workers run this for every crop they draw)
    counts = torch.bincount(labels.flatten()).cpu().numpy()
    if 0 <= ignore_index < len(counts):
        counts[ignore_index] = 0
    counts = counts[counts > 0]
    return not (len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio)


@dataclass(frozen=True)
class PhotometricDraws:
    """The random numbers of one mmseg ``PhotoMetricDistortion`` call; None means the step is skipped.

    Attributes:
        brightness: added to every channel, from U(-32, 32).
        contrast_first: mmseg's ``mode == 1``: contrast right after brightness, else after hue.
        contrast: multiplies every channel, from U(0.5, 1.5).
        saturation: multiplies S (0–255), from U(0.5, 1.5).
        hue: added to H on OpenCV's 0–180 scale, an integer in {-18, ..., 17} (numpy's ``randint(-18, 18)``).
    """

    brightness: float | None = None
    contrast_first: bool = False
    contrast: float | None = None
    saturation: float | None = None
    hue: int | None = None


def photometric_distortion(image: torch.Tensor, draws: PhotometricDraws) -> torch.Tensor:
    """mmseg ``PhotoMetricDistortion`` on a uint8 RGB image [3, H, W] for given draws; returns uint8.

    Every step ends in uint8 as in mmseg: brightness, contrast and saturation compute in float32 and
    truncate (``np.clip(...).astype(np.uint8)``); the saturation and hue steps each go through 8-bit HSV
    and back (:func:`rgb_to_hsv_u8`, :func:`hsv_to_rgb_u8`, OpenCV's arithmetic).

    >>> img = torch.tensor([[[100]], [[150]], [[200]]], dtype=torch.uint8)
    >>> photometric_distortion(img, PhotometricDraws(brightness=10.7)).flatten().tolist()
    [110, 160, 210]
    """
    img = image
    if draws.brightness is not None:
        img = _affine_u8(img, 1.0, draws.brightness)
    if draws.contrast_first and draws.contrast is not None:
        img = _affine_u8(img, draws.contrast, 0.0)
    if draws.saturation is not None:
        h, s, v = rgb_to_hsv_u8(img).unbind(-3)
        img = hsv_to_rgb_u8(torch.stack([h, _affine_u8(s, draws.saturation, 0.0), v], -3))
    if draws.hue is not None:
        h, s, v = rgb_to_hsv_u8(img).unbind(-3)
        h = ((h.to(torch.int64) + draws.hue) % 180).to(torch.uint8)
        img = hsv_to_rgb_u8(torch.stack([h, s, v], -3))
    if not draws.contrast_first and draws.contrast is not None:
        img = _affine_u8(img, draws.contrast, 0.0)
    return img


def _affine_u8(img: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    # mmseg's convert(): float32 arithmetic, clip to [0, 255], truncate to uint8.
    return (img.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


# OpenCV's RGB2HSV_b tables: 12-bit fixed-point reciprocals, rounded to nearest.
_HSV_SHIFT = 12
_SDIV = [0] + [round((255 << _HSV_SHIFT) / i) for i in range(1, 256)]
_HDIV = [0] + [round((180 << _HSV_SHIFT) / (6 * i)) for i in range(1, 256)]


def rgb_to_hsv_u8(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [..., 3, H, W] → uint8 HSV with H in [0, 180), exactly as OpenCV's ``COLOR_RGB2HSV``.

    Integer arithmetic with OpenCV's fixed-point tables; equal to ``cv2.cvtColor`` on all 2²⁴ colours.

    >>> rgb_to_hsv_u8(torch.tensor([[[255]], [[128]], [[0]]], dtype=torch.uint8)).flatten().tolist()
    [15, 255, 255]
    """
    r, g, b = image.to(torch.int64).unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * torch.tensor(_SDIV, device=image.device)[v] + half) >> _HSV_SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * torch.tensor(_HDIV, device=image.device)[diff] + half) >> _HSV_SHIFT
    h = torch.where(h < 0, h + 180, h)
    return torch.stack([h, s, v], -3).to(torch.uint8)


def hsv_to_rgb_u8(hsv: torch.Tensor) -> torch.Tensor:
    """uint8 HSV (H in [0, 180)) [..., 3, H, W] → uint8 RGB, as OpenCV's vectorized ``COLOR_HSV2RGB``.

    float32 arithmetic, truncated to uint8 as OpenCV's SIMD loop does. OpenCV rounds instead in the
    scalar loop that handles what is left of a row after its vector chunks (how much depends on the CPU's
    vector width and on threading): those pixels can differ by one level (docs/parity.md).

    >>> hsv_to_rgb_u8(torch.tensor([[[15]], [[255]], [[255]]], dtype=torch.uint8)).flatten().tolist()
    [255, 127, 0]
    """
    h, s, v = hsv.float().unbind(-3)
    s, v = s * (1.0 / 255.0), v * (1.0 / 255.0)
    h = h * (6.0 / 180.0)
    sector = torch.trunc(h)
    h = h - sector
    tab0, tab1 = v, v * (1.0 - s)
    tab2, tab3 = v * (1.0 - s * h), v * (1.0 - s * (1.0 - h))
    b = torch.where(sector < 2, tab1, torch.where(sector == 2, tab3, torch.where(sector <= 4, tab0, tab2)))
    g = torch.where(sector < 1, tab3, torch.where(sector <= 2, tab0, torch.where(sector == 3, tab2, tab1)))
    r = torch.where(sector < 1, tab0, torch.where(sector == 1, tab2, torch.where(sector <= 3, tab1,
                    torch.where(sector == 4, tab3, tab0))))  # fmt: skip
    return (torch.stack([r, g, b], -3) * 255.0).trunc_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class PaddedBatch:
    """A training batch padded bottom/right to one size, as mmseg's ``stack_batch`` does.

    Attributes:
        images: uint8 [N, 3, H, W]; padded pixels are 0 here and become 0 after :func:`normalize`.
        masks: uint8 [N, H, W]; padded pixels are the ignore index.
        sizes: int64 [N, 2], each sample's (height, width) before padding.
    """

    images: torch.Tensor
    masks: torch.Tensor
    sizes: torch.Tensor

    def pin_memory(self) -> PaddedBatch:
        """Page-locked copies (the DataLoader calls this with ``pin_memory=True``)."""
        return PaddedBatch(self.images.pin_memory(), self.masks.pin_memory(), self.sizes.pin_memory())


def pad_batch(
    images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], size: tuple[int, int], ignore_index: int
) -> PaddedBatch:
    """Stack (image, mask) pairs, each padded bottom/right to at least ``size`` (mmseg ``stack_batch``).

    >>> image, mask = torch.ones(3, 2, 3, dtype=torch.uint8), torch.zeros(2, 3, dtype=torch.uint8)
    >>> b = pad_batch([image], [mask], (3, 4), 255)
    >>> b.masks[0].tolist(), b.sizes.tolist()
    ([[0, 0, 0, 255], [0, 0, 0, 255], [255, 255, 255, 255]], [[2, 3]])
    """
    sizes = torch.tensor([tuple(img.shape[-2:]) for img in images], dtype=torch.int64).view(-1, 2)
    h = max(size[0], int(sizes[:, 0].max()))
    w = max(size[1], int(sizes[:, 1].max()))
    out_images = images[0].new_zeros((len(images), images[0].shape[-3], h, w))
    out_masks = masks[0].new_full((len(masks), h, w), ignore_index)
    for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
        ih, iw = img.shape[-2:]
        out_images[i, :, :ih, :iw] = img
        out_masks[i, :ih, :iw] = mask.reshape(ih, iw)
    return PaddedBatch(out_images, out_masks, sizes)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """(image − mean) / std in float32, then 0 outside each sample's ``sizes`` (mmseg's data preprocessor).

    mmseg normalizes each image and then pads with 0, so a padded pixel enters the network as 0, not as
    the normalized value of a black pixel.

    >>> x = normalize(torch.full((1, 3, 1, 2), 255, dtype=torch.uint8), (0, 0, 0), (255, 255, 255),
    ...               torch.tensor([[1, 1]]))
    >>> x[0, 0].tolist()
    [[1.0, 0.0]]
    """
    mean_t = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    x = (images.float() - mean_t) / std_t
    if sizes is not None:
        h, w = x.shape[-2:]
        sizes = sizes.to(x.device)
        rows = torch.arange(h, device=x.device).view(1, h, 1) < sizes[:, 0].view(-1, 1, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w) < sizes[:, 1].view(-1, 1, 1)
        x = torch.where((rows & cols).unsqueeze(1), x, 0.0)
    return x


def reduce_zero_label(mask: torch.Tensor) -> torch.Tensor:
    """mmseg ``LoadAnnotations(reduce_zero_label=True)``: 0 → 255, k → k − 1, and 255 stays 255.

    >>> reduce_zero_label(torch.tensor([0, 1, 150, 255], dtype=torch.uint8)).tolist()
    [255, 0, 149, 255]
    """
    # in uint8 throughout: 0 - 1 wraps to 255, and 255 is put back
    return torch.where(mask == 255, mask, mask - 1)
