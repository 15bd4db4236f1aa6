"""A harder synthetic segmentation dataset: objects and textures at several scales, classes needing context.

Each image has a background tinted warm or cool (the global context) under smooth low-frequency shading,
and 3–8 objects, rectangles or ellipses, whose sides range from 16 pixels to half the image
(log-uniform). An object is filled with one of four gray textures — horizontal stripes, vertical
stripes, a checkerboard, dots — whose period (4 to 32 pixels) grows with the object, so fine textures
sit in small objects and coarse ones in large objects. Every texture has the same mean gray, so only its
pattern tells it apart. An object's class is

    1 + texture + 4 × tint      (0 is background; 9 classes)

so a small object needs the fine, high-resolution features (its texture), and the inside of a large one
needs the coarse branches' context (the tint, visible only around it): the fusion sites the paper
equalizes have work to do at every scale. Later objects are drawn over earlier ones.

    OUT/train/images/ms_0000.png  OUT/train/masks/ms_0000.png ...   the generic folder layout, per split
    OUT/val/images/...            OUT/val/masks/...                 a quarter as many, another seed stream
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from eqsurgeon.errors import OutputExistsError

NUM_CLASSES = 9
TEXTURES = ("hstripes", "vstripes", "checker", "dots")
CLASS_NAMES = ("background", *(f"{t}/{tint}" for tint in ("warm", "cool") for t in TEXTURES))


def make_multiscale_data(
    root: Path, images: int = 200, size: int = 512, seed: int = 0, force: bool = False
) -> Path:
    """Write ``images`` training pairs and ``max(1, images // 4)`` validation pairs under ``root``.

    Args:
        root: output folder (``train/`` and ``val/``, each with ``images/`` and ``masks/``).
        images: training image/mask pairs.
        size: side of the square images; a multiple of 8, at least 64.
        seed: generator seed; the same seed writes the same files.
        force: write into an existing non-empty folder.

    Raises:
        OutputExistsError: ``root`` holds files and ``force`` is False.

    >>> import tempfile
    >>> root = make_multiscale_data(Path(tempfile.mkdtemp()) / "ms", images=1, size=64)
    >>> sorted(p.name for p in (root / "val" / "masks").iterdir())
    ['ms_0000.png']
    """
    assert size % 8 == 0 and size >= 64, "size must be a multiple of 8, at least 64"
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not force:
        raise OutputExistsError(f"{root} exists and is not empty; choose another folder or pass --force")
    for split, count, stream in (("train", images, 0), ("val", max(1, images // 4), 1)):
        rng = np.random.default_rng([seed, stream])
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = draw(rng, size)
            Image.fromarray(image).save(root / split / "images" / f"ms_{i:04d}.png", compress_level=1)
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"ms_{i:04d}.png")
    return root


def draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 [size, size, 3], mask uint8 [size, size]) pair."""
    tint = int(rng.integers(2))
    colour = np.array([150.0, 105.0, 70.0]) if tint == 0 else np.array([70.0, 105.0, 150.0])
    image = np.empty((size, size, 3))
    image[:] = colour + _shading(rng, size)[..., None]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        h, w = (int(v) for v in np.exp(rng.uniform(np.log(16), np.log(size // 2), 2)))
        top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        y, x = np.mgrid[0:h, 0:w]  # the object's box only
        inside = np.ones((h, w), bool)
        if rng.random() < 0.5:  # an ellipse in the box
            inside = ((y + 0.5 - h / 2) / (h / 2)) ** 2 + ((x + 0.5 - w / 2) / (w / 2)) ** 2 <= 1
        texture = int(rng.integers(len(TEXTURES)))
        period = int(np.clip(2 ** round(np.log2(min(h, w) / 4)), 4, 32))
        gray = 60 + 120 * _texture(texture, y, x, period) + rng.normal(0, 8, (h, w))
        box = (slice(top, top + h), slice(left, left + w))
        image[box][inside] = gray[inside][:, None]
        mask[box][inside] = 1 + texture + len(TEXTURES) * tint
    image += rng.normal(0, 6, (size, size, 1))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _texture(kind: int, y: np.ndarray, x: np.ndarray, period: int) -> np.ndarray:
    # 0/1 patterns with the same mean (1/2), so the mean gray says nothing about the class
    half = period // 2
    if kind == 0:
        return (y // half) % 2
    if kind == 1:
        return (x // half) % 2
    if kind == 2:
        return ((y // half) + (x // half)) % 2
    # dots: a disc of area ≈ half the cell in each period × period cell
    cy, cx = (y % period) - period / 2 + 0.5, (x % period) - period / 2 + 0.5
    return (cy * cy + cx * cx <= period * period / (2 * np.pi)).astype(np.int64)


def _shading(rng: np.random.Generator, size: int) -> np.ndarray:
    # smooth ±25 gray-level shading from a coarse random grid, upsampled: context is not one flat colour
    coarse = rng.normal(0, 12, (5, 5))
    img = Image.fromarray(coarse.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float64)
