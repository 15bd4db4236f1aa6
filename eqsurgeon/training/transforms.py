"""MMSegmentation's training pipeline as joint image/mask ``torchvision.transforms.v2`` transforms.

    RandomResize(scale, ratio 0.5–2.0) → RandomCrop(cat_max_ratio 0.75) → RandomFlip → PhotoMetricDistortion
    → PadTo(crop)

Images are ``tv_tensors.Image`` (uint8, CHW, RGB) and masks ``tv_tensors.Mask`` (uint8, 1HW) travelling
together, so every geometric op moves both and the colour ops touch only the image. All randomness comes
from torch's global generator; the dataset seeds it per (seed, epoch, sample index) around the call, so a
sample's augmentation does not depend on which worker draws it. Normalization happens on the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# torchvision's own HSV conversion (float images in [0, 1]); the public adjust_saturation/adjust_hue blend
# differently from MMSeg's HSV arithmetic, which the paper recipes use.
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv


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
        ignore_index: label of pixels that count for nothing; also the mask's padding value.

    >>> t = train_pipeline((32, 32), (64, 32), (0.5, 2.0), 0.75, 0.5, True, 255)
    >>> img, mask = t(tv_tensors.Image(torch.zeros(3, 40, 50, dtype=torch.uint8)),
    ...               tv_tensors.Mask(torch.zeros(1, 40, 50, dtype=torch.uint8)))
    >>> tuple(img.shape), tuple(mask.shape)
    ((3, 32, 32), (1, 32, 32))
    """
    steps: list[v2.Transform] = [
        RandomResize(scale, ratio_range),
        RandomCrop(crop_size, cat_max_ratio, ignore_index),
        v2.RandomHorizontalFlip(flip_prob),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps.append(PadTo(crop_size, ignore_index))
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
    # The mask goes in as a plain tensor: with an Image present, v2 passes plain tensors through untouched.
    return v2.Compose([KeepRatioResize(scale)] if scale else [v2.Identity()])


def rescale_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """Size after fitting (h, w) into ``scale`` = (long edge, short edge), keeping the aspect ratio (mmcv)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RandomResize(v2.Transform):
    """Resize to ``scale`` × r, r ~ U(ratio_range), keeping aspect (bilinear image, nearest mask)."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.ratio_range
        ratio = lo + (hi - lo) * torch.rand(()).item()
        h, w = _size(flat_inputs)
        return {"size": list(rescale_size(h, w, (self.scale[0] * ratio, self.scale[1] * ratio)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # antialias=False matches cv2's INTER_LINEAR, which MMSeg uses.
        return F.resize(inpt, params["size"], antialias=False)


class KeepRatioResize(RandomResize):
    """Deterministic keep-ratio resize to ``scale`` (MMSeg's test-time Resize)."""

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
        h, w = _size(flat_inputs)
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        top, left = self._draw(h, w, ch, cw)
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(10):
                labels = mask[..., top : top + ch, left : left + cw]
                counts = torch.bincount(labels[labels != self.ignore_index].flatten().long())
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                top, left = self._draw(h, w, ch, cw)
        return {"top": top, "left": left, "height": ch, "width": cw}

    def _draw(self, h: int, w: int, ch: int, cw: int) -> tuple[int, int]:
        top = int(torch.randint(0, h - ch + 1, ()).item())
        left = int(torch.randint(0, w - cw + 1, ()).item())
        return top, left

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, **params)


class PhotoMetricDistortion(v2.Transform):
    """MMSeg's colour jitter, each step with probability 0.5, on the uint8 image only.

    brightness + U(-32, 32); contrast × U(0.5, 1.5) (before or after the HSV steps, at random);
    saturation × U(0.5, 1.5); hue + U{-18..18} on OpenCV's 0–180 hue scale.
    """

    _transformed_types = (tv_tensors.Image,)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def maybe(draw: float) -> float | None:
            return draw if torch.rand(()).item() < 0.5 else None

        # Draw in a fixed order so the stream of random numbers is the same for every image.
        return {
            "brightness": maybe(-32 + 64 * torch.rand(()).item()),
            "contrast_first": torch.rand(()).item() < 0.5,
            "contrast": maybe(0.5 + torch.rand(()).item()),
            "saturation": maybe(0.5 + torch.rand(()).item()),
            "hue": maybe(float(torch.randint(-18, 19, ()).item())),
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        img = inpt.as_subclass(torch.Tensor).float()
        if params["brightness"] is not None:
            img = (img + params["brightness"]).clamp_(0, 255)
        if params["contrast_first"] and params["contrast"] is not None:
            img = (img * params["contrast"]).clamp_(0, 255)
        if params["saturation"] is not None or params["hue"] is not None:
            hsv = _rgb_to_hsv(img / 255.0)
            if params["saturation"] is not None:
                hsv[1].mul_(params["saturation"]).clamp_(0, 1)
            if params["hue"] is not None:
                hsv[0].add_(params["hue"] / 180.0).remainder_(1.0)
            img = _hsv_to_rgb(hsv) * 255.0
        if not params["contrast_first"] and params["contrast"] is not None:
            img = (img * params["contrast"]).clamp_(0, 255)
        # Back to uint8 by truncation, as MMSeg's astype does.
        return tv_tensors.wrap(img.clamp_(0, 255).to(torch.uint8), like=inpt)


class PadTo(v2.Transform):
    """Pad bottom/right up to ``size``: the image with 0, the mask with ``ignore_index``."""

    def __init__(self, size: tuple[int, int], ignore_index: int) -> None:
        super().__init__()
        self.size = tuple(size)
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _size(flat_inputs)
        return {"padding": [0, 0, max(self.size[1] - w, 0), max(self.size[0] - h, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
        return F.pad(inpt, params["padding"], fill=fill)


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
