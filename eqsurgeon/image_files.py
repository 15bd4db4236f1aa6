"""Image files: finding them in a folder, checking their headers, and decoding them to 8-bit RGB.

``scan_images`` opens each file's header (cheap: PIL reads only the first bytes). Files that are not images
or whose header is broken are skipped with their reason, and so are images over the pixel or aspect cap
(:class:`~eqsurgeon.image_caps.ImageLimits`). ``load_rgb`` decodes one file whatever its mode.

>>> import tempfile, numpy as np
>>> root = Path(tempfile.mkdtemp())
>>> Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a.png")
>>> (root / "b.png").write_bytes(b"not a png")
9
>>> source = scan_images(root)
>>> [p.name for p in source.paths], [s.path.name for s in source.skipped]
(['a.png'], ['b.png'])
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from eqsurgeon.errors import DataError, one_line
from eqsurgeon.image_caps import ImageLimits, open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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
            # a file name's bytes: names need not be UTF-8 (os.fsencode restores the undecodable bytes)
            digest.update(os.fsencode(rel.as_posix()) + f"\0{path.stat().st_size}\n".encode())
        return digest.hexdigest()[:16]


def scan_images(root: Path | str, limits: ImageLimits | None = None) -> ImageSource:
    """Find every image below ``root`` (recursively, sorted by relative path) and check its header.

    Args:
        root: folder to walk; extensions matched case-insensitively (jpg/jpeg/png/bmp/webp/tif/tiff).
        limits: pixel and aspect caps; larger images are skipped, with the reason.

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
    if root.is_file():
        raise DataError(f"{root} is a file; pass the folder of jpg/png images that holds it")
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; pass a folder of jpg/png images")
    candidates = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    paths: list[Path] = []
    skipped: list[Skipped] = []
    for path in candidates:
        reason = _header_problem(path, limits or ImageLimits())
        if reason is None:
            paths.append(path)
        else:
            skipped.append(Skipped(path, reason))
    if not paths:
        what = (
            f"{len(skipped)} unreadable file(s), e.g. {skipped[0].path.name}: {skipped[0].reason}"
            if skipped
            else "no image"
        )
        raise DataError(
            f"no usable image in {root} ({what}); pass a folder of "
            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images"
        )
    return ImageSource(tuple(paths), tuple(skipped), root)


def load_rgb(path: Path | str, limits: ImageLimits | None = None) -> Image.Image:
    """Decode an image file to 8-bit RGB: grayscale, RGBA, palette, CMYK and 16-bit all become RGB.

    16-bit data is scaled (65535 -> 255), not clipped; alpha is dropped (the stored colour is kept);
    EXIF orientation is applied so the pixels are the way a viewer shows them. The header's size is
    checked against ``limits`` (default caps) before any pixel is decoded.
    """
    with open_image(path) as img:
        problem = (limits or ImageLimits()).problem(*img.size)
        if problem is not None:
            raise DataError(f"image {path}: {problem}")
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


def _header_problem(path: Path, limits: ImageLimits) -> str | None:
    # Image.open parses only the header; a zero-byte, non-image or header-broken file fails here.
    try:
        with open_image(path) as img:
            width, height = img.size
    except Exception as exc:
        return f"{type(exc).__name__}: {one_line(exc)}"
    return limits.problem(width, height)
