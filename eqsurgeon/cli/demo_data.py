"""``eqsurgeon demo-data DIR``: write a synthetic segmentation dataset (generic folder layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqsurgeon.cli._common import console, handle_errors

KINDS = ("demo", "multiscale")


@handle_errors
def demo_data(
    out: Annotated[Path, typer.Argument(help="folder to create (images/ and masks/)")],
    images: Annotated[int, typer.Option("--images", min=1, help="number of image/mask pairs")] = 48,
    size: Annotated[
        int | None,
        typer.Option("--size", min=32, max=4096, help="image side, a multiple of 8 (64; multiscale 512)"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="generator seed")] = 0,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="demo: 5 classes, texture + tint, one folder; multiscale: 9 classes, objects and textures "
            "at several scales, train/ and val/ splits",
        ),
    ] = "demo",
    force: Annotated[bool, typer.Option("--force", help="write into a non-empty folder")] = False,
) -> None:
    """Synthetic data where a pixel's class needs local texture and the image's global tint."""
    from eqsurgeon.errors import OptionError

    if kind not in KINDS:
        raise OptionError("kind", kind, f"is unknown; use {' or '.join(KINDS)}")
    side = size or (512 if kind == "multiscale" else 64)
    if side % 8 or (kind == "multiscale" and side < 64):
        raise OptionError("size", side, "must be a multiple of 8 (at least 64 with --kind multiscale)")
    if kind == "multiscale":
        from eqsurgeon.training.multiscale_data import NUM_CLASSES, make_multiscale_data

        root = make_multiscale_data(out, images=images, size=side, seed=seed, force=force)
        val = max(1, images // 4)
        console.print(f"wrote {images} + {val} images (train/, val/) of {side}x{side} with {NUM_CLASSES} "
                      f"classes to {root}", markup=False)  # fmt: skip
        return
    from eqsurgeon.training.demo_data import NUM_CLASSES, make_demo_data

    root = make_demo_data(out, images=images, size=side, seed=seed, force=force)
    wrote = f"wrote {images} images of {side}x{side} with {NUM_CLASSES} classes to {root}"
    console.print(wrote, markup=False)
