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
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write every class's IoU and accuracy, by name, to FILE")
    ] = None,
) -> None:
    """Evaluate CHECKPOINT with RECIPE's model, data and eval settings (whole or sliding window)."""
    from eqsurgeon.io import write_json
    from eqsurgeon.training.classes import recipe_class_names
    from eqsurgeon.training.evaluate import evaluate_checkpoint
    from eqsurgeon.training.metrics import metrics_json

    cfg = load_config(recipe, recipe_overrides(set_, data=data))
    metrics = evaluate_checkpoint(cfg, checkpoint)
    names = recipe_class_names(cfg.data)
    if json_out is not None:
        write_json(json_out, {"checkpoint": str(checkpoint), **metrics_json(metrics, names)})
    console.print(iou_table(metrics, names, full_table=str(json_out) if json_out else "--json FILE"))
    console.print(f"mIoU {100 * metrics.miou:.2f}  ({cfg.eval.mode}, {metrics.pixels} labelled pixels)")
