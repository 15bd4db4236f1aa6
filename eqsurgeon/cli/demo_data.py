"""``eqsurgeon demo-data DIR``: write a small synthetic segmentation dataset (generic folder layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqsurgeon.cli._common import console, handle_errors


@handle_errors
def demo_data(
    out: Annotated[Path, typer.Argument(help="folder to create (images/ and masks/)")],
    images: Annotated[int, typer.Option("--images", min=1, help="number of image/mask pairs")] = 48,
    size: Annotated[int, typer.Option("--size", min=32, max=4096, help="image side, a multiple of 8")] = 64,
    seed: Annotated[int, typer.Option("--seed", min=0, help="generator seed")] = 0,
    force: Annotated[bool, typer.Option("--force", help="write into a non-empty folder")] = False,
) -> None:
    """Synthetic data where a pixel's class needs local texture and the image's global tint (5 classes)."""
    from eqsurgeon.errors import OptionError
    from eqsurgeon.training.demo_data import NUM_CLASSES, make_demo_data

    if size % 8:
        raise OptionError("size", size, f"is not a multiple of 8; use e.g. --size {max(32, size // 8 * 8)}")
    root = make_demo_data(out, images=images, size=size, seed=seed, force=force)
    wrote = f"wrote {images} images of {size}x{size} with {NUM_CLASSES} classes to {root}"
    console.print(wrote, markup=False)
