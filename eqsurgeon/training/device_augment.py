"""The training augmentation on a whole batch, on the device: resize + crop + flip in one sampling pass,
MMSegmentation's PhotoMetricDistortion, normalization, and the padding after it.

    worker (CPU): decode (or read the JPEG's bytes) → draw the plan → mask geometry   (device_data.py)
    device:       [decode_jpeg on CUDA] → resize∘crop∘flip (grid_sample) → photometric → normalize → 0-pad

Every random number is drawn in the worker, under the sample's own seed and in the per-sample pipeline's
order (``transforms.train_pipeline``); the device only applies the resulting *plan*, one row of
:data:`PLAN_COLUMNS` per sample. The colour steps are
:func:`eqsurgeon.training.augment.photometric_distortion`
per sample (uint8 after every step, OpenCV's 8-bit HSV), here with one parameter per sample.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from eqsurgeon.training.augment import hsv_to_rgb_u8, normalize, rgb_to_hsv_u8

# One row per sample. NaN in a colour column means "this step was not drawn to run".
PLAN_COLUMNS = (
    "resized_h", "resized_w",           # RandomResize's output size
    "top", "left", "crop_h", "crop_w",  # RandomCrop's window in the resized image
    "flip",                             # 1.0: horizontal flip
    "brightness",                       # added, in 0-255 units
    "contrast_first",                   # 1.0: contrast right after brightness, else last
    "contrast",                         # multiplied
    "saturation",                       # multiplies HSV S (0-255)
    "hue",                              # added to HSV H (0-179, OpenCV's 8-bit scale), modulo 180
)  # fmt: skip
COL = {name: i for i, name in enumerate(PLAN_COLUMNS)}


def plan_row(
    resized: tuple[int, int], crop: tuple[int, int, int, int], flip: bool, colour: object | None = None
) -> torch.Tensor:
    """One sample's plan as a float64 row of :data:`PLAN_COLUMNS`.

    Args:
        resized: (height, width) after RandomResize.
        crop: (top, left, height, width) of the crop in the resized image.
        flip: whether the crop is flipped horizontally.
        colour: the sample's :class:`~eqsurgeon.training.augment.PhotometricDraws` (None: no colour step).

    >>> from eqsurgeon.training.augment import PhotometricDraws
    >>> plan_row((8, 8), (0, 1, 4, 4), True, PhotometricDraws(hue=-3))[COL["hue"]].item()
    -3.0
    """
    row = [*resized, *crop, float(flip)]
    for name in PLAN_COLUMNS[len(row) :]:
        value = getattr(colour, name, None) if colour is not None else None
        row.append(math.nan if value is None else float(value))
    return torch.tensor(row, dtype=torch.float64)


def augment_batch(
    images: Sequence[torch.Tensor],
    plans: torch.Tensor,
    crop_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = False,
) -> torch.Tensor:
    """The model input for one batch: geometry, colour, normalization and padding on the images' device.

    Args:
        images: decoded source images, uint8 [3, H, W] each (sizes may differ), all on one device.
        plans: [N, len(PLAN_COLUMNS)], one row per image (:func:`plan_row`).
        crop_size: (height, width) of the batch; smaller crops are padded with 0 after normalizing.
        mean: per-channel mean (0–255 scale, RGB).
        std: per-channel std.
        channels_last: return channels-last memory.

    >>> from eqsurgeon.training.augment import PhotometricDraws
    >>> img = torch.full((3, 4, 6), 100, dtype=torch.uint8)
    >>> row = plan_row((8, 12), (0, 0, 4, 4), False, PhotometricDraws(brightness=20.0))
    >>> x = augment_batch([img], row[None], (6, 6), (100.0,) * 3, (10.0,) * 3)
    >>> x.shape, x[0, 0, 0, 0].item(), x[0, 0, 5, 5].item()  # (100 + 20 - 100) / 10 inside, 0 padded
    (torch.Size([1, 3, 6, 6]), 2.0, 0.0)
    """
    crops = photometric(resize_crop_flip(images, plans, crop_size), plans)
    sizes = plans[:, [COL["crop_h"], COL["crop_w"]]].to(torch.int64)
    x = normalize(crops, mean, std, sizes)  # mmseg: normalize, then pad with 0
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def resize_crop_flip(
    images: Sequence[torch.Tensor], plans: torch.Tensor, crop_size: tuple[int, int]
) -> torch.Tensor:
    """Each image resized (bilinear, no antialias), cropped and flipped as planned: uint8 [N, 3, h, w].

    Only the crop window is computed: one ``grid_sample`` per image samples the source at exactly the
    points ``F.interpolate(align_corners=False)`` followed by a crop would (border-clamped), so the cost is
    the crop's, however large the resized image. The rest of the canvas is 0.

    >>> img = torch.arange(16, dtype=torch.uint8).view(1, 4, 4).expand(3, 4, 4)
    >>> row = plan_row((4, 4), (1, 0, 2, 2), True)
    >>> resize_crop_flip([img], row[None], (3, 3))[0, 0].tolist()
    [[5, 4, 0], [9, 8, 0], [0, 0, 0]]
    """
    device = images[0].device
    out = torch.zeros(len(images), 3, *crop_size, dtype=torch.uint8, device=device)
    for i, (img, plan) in enumerate(zip(images, plans.tolist(), strict=True)):
        rh, rw, top, left, ch, cw, flip = (int(v) for v in plan[:7])
        ys = _grid_coords(top, ch, rh, device)
        xs = _grid_coords(left, cw, rw, device)
        if flip:  # the crop, read right to left
            xs = xs.flip(0)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        sampled = F.grid_sample(
            img[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        out[i, :, :ch, :cw] = sampled[0].round_().clamp_(0, 255).to(torch.uint8)
    return out


def photometric(images: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
    """MMSegmentation's PhotoMetricDistortion on a uint8 [N, 3, H, W] batch with per-sample parameters.

    Order: brightness, contrast (if first), saturation, hue, contrast (if last); a NaN parameter skips
    its step for that sample. Each step ends in uint8, as in ``augment.photometric_distortion``.

    >>> from eqsurgeon.training.augment import PhotometricDraws
    >>> img = torch.full((1, 3, 1, 1), 100, dtype=torch.uint8)
    >>> row = plan_row((1, 1), (0, 0, 1, 1), False, PhotometricDraws(brightness=10.7, contrast=1.5))
    >>> photometric(img, row[None]).flatten().tolist()  # (100 + 10.7 → 110) × 1.5 = 165
    [165, 165, 165]
    """
    p = plans.to(device=images.device, dtype=torch.float32)

    def column(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        value = p[:, COL[name]].view(-1, 1, 1, 1)
        return ~torch.isnan(value), torch.nan_to_num(value)

    x = images
    on, beta = column("brightness")
    if bool(on.any()):
        x = torch.where(on, _affine_u8(x, 1.0, beta), x)
    contrast_on, alpha = column("contrast")
    first = p[:, COL["contrast_first"]].view(-1, 1, 1, 1) > 0.5
    if bool((contrast_on & first).any()):
        x = torch.where(contrast_on & first, _affine_u8(x, alpha, 0.0), x)
    on, sat = column("saturation")
    if bool(on.any()):
        h, s, v = rgb_to_hsv_u8(x).unbind(-3)
        x = torch.where(on, hsv_to_rgb_u8(torch.stack([h, _affine_u8(s, sat[:, 0], 0.0), v], -3)), x)
    on, hue = column("hue")
    if bool(on.any()):
        h, s, v = rgb_to_hsv_u8(x).unbind(-3)
        h = (h.to(torch.int64) + hue[:, 0].to(torch.int64)).remainder(180).to(torch.uint8)
        x = torch.where(on, hsv_to_rgb_u8(torch.stack([h, s, v], -3)), x)
    if bool((contrast_on & ~first).any()):
        x = torch.where(contrast_on & ~first, _affine_u8(x, alpha, 0.0), x)
    return x


def decode_images(items: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decoded uint8 [3, H, W] images on ``device``.

    1-D byte tensors are JPEG files, decoded on the GPU (nvjpeg, batched) when ``device`` is CUDA, else on
    the CPU; 3-D tensors are decoded images in the decoder's [H, W, 3] layout (transposed on the device).

    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    >>> jpg = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    >>> hwc = torch.zeros(2, 5, 3, dtype=torch.uint8)
    >>> [tuple(t.shape) for t in decode_images([jpg, hwc], torch.device("cpu"))]
    [(3, 8, 8), (3, 2, 5)]
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [i for i, t in enumerate(items) if t.dim() == 1]
    decoded: dict[int, torch.Tensor] = {}
    if encoded:
        data = [items[i] for i in encoded]
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its codecs in favour of TorchCodec, which is not a dependency
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            except RuntimeError:  # nvjpeg refuses a few rare JPEG kinds (e.g. CMYK): decode those on the CPU
                images = [decode_jpeg(d, mode=ImageReadMode.RGB).to(device) for d in data]
        decoded = dict(zip(encoded, images, strict=True))
    return [
        decoded[i] if i in decoded else t.to(device, non_blocking=True).permute(2, 0, 1)
        for i, t in enumerate(items)
    ]


def _affine_u8(x: torch.Tensor, alpha: torch.Tensor | float, beta: torch.Tensor | float) -> torch.Tensor:
    # mmseg's convert(): float32 arithmetic, clip to [0, 255], truncate to uint8
    return (x.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


def _grid_coords(start: int, length: int, resized: int, device: torch.device) -> torch.Tensor:
    # Normalized grid coordinates (align_corners=False) of resized pixels start..start+length-1: the
    # source point of resized pixel i is (i + 0.5)·src/resized − 0.5, normalized 2·(i + 0.5)/resized − 1.
    i = torch.arange(start, start + length, device=device, dtype=torch.float64)
    return ((2 * (i + 0.5) / resized) - 1).float()
