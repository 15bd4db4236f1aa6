"""Caps on what an image may declare in its header, checked before a pixel is decoded.

A PNG of a few hundred bytes can declare 1×100000 pixels (resized to cover 512×512 that is 26 G pixels)
or 13000×13000 (0.5 GB decoded): the header alone says so, and PIL reads it without decoding. Calibration
(``eqsurgeon.images``) and the trainer's datasets check every file here first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from eqsurgeon.errors import DataError, check_range, one_line

MAX_PIXELS = 40_000_000  # 40 MP, a 7700×5200 photo: 120 MB decoded as RGB
MAX_ASPECT = 50.0  # longer side over shorter side
MAX_COVER = 8  # a resize to cover the input size may take at most this many times max_pixels


@dataclass(frozen=True)
class ImageLimits:
    """What an image may declare in its header before it is decoded: caps on memory, checked cheaply.

    Attributes:
        max_pixels: width × height at most this.
        max_aspect: longer side / shorter side at most this.

    >>> ImageLimits().problem(1, 100_000)
    '1x100000 pixels have aspect 1:100000, over the 1:50 cap (max_aspect)'
    """

    max_pixels: int = MAX_PIXELS
    max_aspect: float = MAX_ASPECT

    def __post_init__(self) -> None:
        check_range("max_pixels", self.max_pixels, 0)
        check_range("max_aspect", self.max_aspect, 0.999999)

    def problem(self, width: int, height: int) -> str | None:
        """Why an image of this size is refused, or None."""
        if width < 1 or height < 1:
            return "image has zero size"
        if width * height > self.max_pixels:
            return (
                f"{width}x{height} pixels are {width * height / 1e6:.1f} MP, over the "
                f"{self.max_pixels / 1e6:g} MP cap (max_pixels)"
            )
        if max(width, height) / min(width, height) > self.max_aspect:
            return (
                f"{width}x{height} pixels have aspect 1:{max(width, height) / min(width, height):.0f}, "
                f"over the 1:{self.max_aspect:g} cap (max_aspect)"
            )
        return None


def open_image(path: Path | str) -> Image.Image:
    """``Image.open`` (reads the header only) without PIL's DecompressionBombWarning: the caps here are
    :class:`ImageLimits`, and a warning would be a second line next to the one-line error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def open_checked(path: Path | str, limits: ImageLimits | None = None) -> Image.Image:
    """The opened image (header read, nothing decoded) once its size is within ``limits``; else a
    DataError, as :func:`header_size` says it. Decode it with ``load``/``convert`` and close it.

    >>> open_checked("/nonexistent.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.DataError: cannot read image /nonexistent.png (FileNotFoundError: ...
    """
    try:
        img = open_image(path)
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: {one_line(exc)})") from None
    problem = (limits or ImageLimits()).problem(*img.size)
    if problem is not None:
        img.close()
        raise DataError(f"image {path}: {problem}; remove it or raise the cap")
    return img


def header_size(path: Path | str, limits: ImageLimits | None = None) -> tuple[int, int]:
    """(width, height) from an image's header, without decoding it; over ``limits``: a DataError.

    >>> header_size("/nonexistent.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.DataError: cannot read image /nonexistent.png (FileNotFoundError: ...
    """
    try:
        with open_image(path) as img:
            width, height = img.size
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: {one_line(exc)})") from None
    problem = (limits or ImageLimits()).problem(width, height)
    if problem is not None:
        raise DataError(f"image {path}: {problem}; remove it or raise the cap")
    return width, height
