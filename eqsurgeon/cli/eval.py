"""``eqsurgeon eval RECIPE --checkpoint FILE``: mIoU of a checkpoint on the recipe's evaluation split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqsurgeon.cli._common import console, handle_errors
from eqsurgeon.cli.train import DataDirOpt, RecipeArg, SetOpt, iou_table, recipe_overrides
from eqsurgeon.training.config import load_config


@handle_errors
def evaluate(
    recipe: RecipeArg,
    checkpoint: Annotated[
        Path,
        typer.Option("--checkpoint", help="weights: .safetensors, .pth/.pt or a save_pretrained folder"),
    ],
    data: DataDirOpt = None,
    set_: SetOpt = None,
) -> None:
    """Evaluate CHECKPOINT with RECIPE's model, data and eval settings (whole or sliding window)."""
    from eqsurgeon.training.evaluate import evaluate_checkpoint

    cfg = load_config(recipe, recipe_overrides(set_, data=data))
    metrics = evaluate_checkpoint(cfg, checkpoint)
    console.print(iou_table(metrics, cfg.data.class_names))
    console.print(f"mIoU {100 * metrics.miou:.2f}  ({cfg.eval.mode}, {metrics.pixels} labelled pixels)")
