"""MMSegmentation's data pipeline as pure functions of an image, a mask and explicit random draws.

These functions are the semantics; ``transforms.py`` wraps them as ``torchvision.transforms.v2`` transforms
that draw the random numbers, and a batched (GPU) pipeline must compute the same thing from the same draws.
Each function names the mmcv/mmseg code it reproduces, and ``tests/test_parity_mmseg.py`` checks it against
that code on injected draws. Images are uint8 RGB ``[3, H, W]`` (mmseg works in BGR; every step here is
channel-order blind), masks uint8 ``[H, W]`` or ``[1, H, W]``.

    keep-ratio size ─ random_resize_size ─ crop_box ─ (flip) ─ photometric_distortion ─▶ dataset item
    items ─ pad_batch (uint8, mask with ignore) ─ normalize (then 0 where padded) ─▶ model input

One documented deviation remains (docs/parity.md): the HSV steps of the photometric distortion run in
float32, where mmcv goes through OpenCV's 8-bit HSV (H in 180 steps, S and V in 256).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# torchvision's own HSV conversion (float images in [0, 1]).
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv


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


def crop_box(
    height: int, width: int, crop: tuple[int, int], offset_draws: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of mmseg's ``RandomCrop`` for drawn offsets.

    ``offset_draws`` are the two integers mmseg draws, uniform in [0, max(h - crop_h, 0)] and
    [0, max(w - crop_w, 0)]; a crop larger than the image is clipped to it.

    >>> crop_box(300, 700, (512, 512), (0, 17))
    (0, 17, 300, 512)
    """
    return offset_draws[0], offset_draws[1], min(crop[0], height), min(crop[1], width)


def dominated(labels: torch.Tensor, cat_max_ratio: float, ignore_index: int) -> bool:
    """Whether a crop's labels fail mmseg's ``cat_max_ratio`` test (and the crop must be re-drawn).

    A crop passes when it holds more than one class (ignoring ``ignore_index``) and the largest covers
    less than ``cat_max_ratio`` of the counted pixels.

    >>> dominated(torch.tensor([0, 0, 0, 1]), 0.75, 255), dominated(torch.tensor([0, 0, 1, 1]), 0.75, 255)
    (True, False)
    """
    counts = torch.bincount(labels[labels != ignore_index].flatten().long())
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
    """mmseg ``PhotoMetricDistortion`` on a uint8 image for given draws; returns uint8.

    Every step ends in uint8 as in mmseg: brightness, contrast and saturation compute in float and truncate
    (``np.clip(...).astype(np.uint8)``), and each HSV step converts back to RGB rounding to nearest, as
    OpenCV does. The HSV conversion itself is float32 (see the module docstring).

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
        hsv = _rgb_to_hsv(img.float() / 255.0)
        s = _affine_u8(hsv[..., 1:2, :, :] * 255.0, draws.saturation, 0.0)
        img = _hsv_to_rgb_u8(torch.cat([hsv[..., :1, :, :], s.float() / 255.0, hsv[..., 2:, :, :]], -3))
    if draws.hue is not None:
        hsv = _rgb_to_hsv(img.float() / 255.0)
        hue = (hsv[..., :1, :, :] + draws.hue / 180.0).remainder(1.0)
        img = _hsv_to_rgb_u8(torch.cat([hue, hsv[..., 1:, :, :]], -3))
    if not draws.contrast_first and draws.contrast is not None:
        img = _affine_u8(img, draws.contrast, 0.0)
    return img


def _affine_u8(img: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    # mmseg's convert(): float32 arithmetic, clip to [0, 255], truncate to uint8.
    return (img.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


def _hsv_to_rgb_u8(hsv: torch.Tensor) -> torch.Tensor:
    return (_hsv_to_rgb(hsv) * 255.0).round_().clamp_(0, 255).to(torch.uint8)


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
    return torch.where((mask == 0) | (mask == 255), 255, mask.to(torch.int64) - 1).to(torch.uint8)
