"""A synthetic segmentation dataset where a pixel's class needs local texture AND global context.

Each image has a background tinted warm or cool (the context) and 1–3 rectangles filled with one of two
gray textures, horizontal stripes or a checkerboard (the local cue). A rectangle's class is

    1 + texture + 2 × tint      (0 is background; 5 classes)

so the inside of a large rectangle, where no texture filter sees the background, can only be labelled
right by a network whose coarse branches carry the tint there: the fusion sites the paper equalizes.
Rectangle corners lie on an 8-pixel grid so an output stride of 4 can draw every boundary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from eqsurgeon.errors import OutputExistsError

NUM_CLASSES = 5
CLASS_NAMES = ("background", "stripes/warm", "checker/warm", "stripes/cool", "checker/cool")


def make_demo_data(root: Path, images: int = 48, size: int = 64, seed: int = 0, force: bool = False) -> Path:
    """Write ``images`` PNG images and index masks to ``root/images`` and ``root/masks``.

    Args:
        root: output folder (generic layout).
        images: number of image/mask pairs.
        size: side of the square images; a multiple of 8.
        seed: generator seed; the same seed writes the same files.
        force: write into an existing non-empty folder.

    Returns:
        ``root``.

    Raises:
        OutputExistsError: ``root`` holds files and ``force`` is False.

    >>> import tempfile
    >>> root = make_demo_data(Path(tempfile.mkdtemp()) / "demo", images=2, size=32)
    >>> sorted(p.name for p in (root / "masks").iterdir())
    ['demo_0000.png', 'demo_0001.png']
    """
    assert size % 8 == 0 and size >= 32, "size must be a multiple of 8, at least 32"
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"{root} is a file, not a folder; choose a folder to create")
    if root.exists() and any(root.iterdir()) and not force:
        raise OutputExistsError(f"{root} exists and is not empty; choose another folder or pass --force")
    before = set(root.iterdir()) if root.exists() else None
    try:
        _write(root, images, size, seed)
    except BaseException:  # a failed run (full disk, Ctrl-C) leaves the folder as it found it
        import shutil

        if root.is_dir():
            for path in set(root.iterdir()) - (before or set()):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            if before is None:
                root.rmdir()
        raise
    return root


def _write(root: Path, images: int, size: int, seed: int) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(images):
        image, mask = _draw(rng, size)
        Image.fromarray(image).save(root / "images" / f"demo_{i:04d}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"demo_{i:04d}.png")


def _draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    tint = int(rng.integers(2))
    warm, cool = np.array([150.0, 100.0, 70.0]), np.array([70.0, 100.0, 150.0])
    image = np.empty((size, size, 3))
    image[:] = warm if tint == 0 else cool
    image += rng.normal(0, 12, (size, size, 1))  # gray noise: the tint is the only colour cue
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    # stripes, checkerboard; 4-pixel cells stay distinct after the pipeline's 0.5× resize
    textures = (yy // 4) % 2, ((yy // 4) + (xx // 4)) % 2
    cells = size // 8
    for _ in range(int(rng.integers(1, 4))):
        h, w = (int(v) for v in rng.integers(2, cells // 2 + 2, 2))
        top, left = int(rng.integers(0, cells - h + 1)), int(rng.integers(0, cells - w + 1))
        texture = int(rng.integers(2))
        box = (slice(8 * top, 8 * (top + h)), slice(8 * left, 8 * (left + w)))
        level = 60 + 120 * textures[texture][box]  # dark/bright gray, same mean for both textures
        image[box] = level[..., None] + rng.normal(0, 8, (8 * h, 8 * w, 1))
        mask[box] = 1 + texture + 2 * tint
    return np.clip(image, 0, 255).astype(np.uint8), mask
