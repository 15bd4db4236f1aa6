"""``eqsurgeon convert-mmseg IN.pth --model NAME --out OUT.safetensors``: an mmseg checkpoint for the zoo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqsurgeon.cli._common import console, handle_errors


@handle_errors
def convert_mmseg(
    checkpoint: Annotated[Path, typer.Argument(help="MMSegmentation 1.x checkpoint (.pth)")],
    model: Annotated[str, typer.Option("--model", help="the zoo model it matches, e.g. upernet_swin_tiny")],
    out: Annotated[Path, typer.Option("--out", help="converted weights (.safetensors)")],
    force: Annotated[bool, typer.Option("--force", help="overwrite --out")] = False,
) -> None:
    """Convert an MMSegmentation checkpoint (Swin, ConvNeXt, Twins-SVT, ResNetV1c-D8) to a zoo model.

    The result loads with `--checkpoint OUT` in analyze, calibrate, check and as a recipe's model.init.
    """
    from eqsurgeon.zoo.convert_mmseg import convert_checkpoint

    path = convert_checkpoint(checkpoint, model, out, force=force)
    console.print(f"wrote {path} for {model}")
