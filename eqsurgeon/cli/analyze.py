"""``eqsurgeon analyze``: find every fusion site and show how unequal its input scales are."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqsurgeon.cli import _common as c
from eqsurgeon.cli._render import print_capture, print_sites


@c.handle_errors
def analyze(
    model: c.ModelArg,
    arg: c.ArgOpt = None,
    checkpoint: c.CheckpointOpt = None,
    frontend: c.FrontendOpt = "auto",
    data: c.DataOpt = None,
    input_size: c.InputSizeOpt = c.MEASURE_INPUT_SIZE,
    batch_size: c.BatchSizeOpt = c.MEASURE_BATCH_SIZE,
    batches: c.BatchesOpt = c.MEASURE_BATCHES,
    seed: c.SeedOpt = 0,
    bn_mode: c.BnModeOpt = "auto",
    device: c.DeviceOpt = "cpu",
    json_out: c.JsonOutOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="bar chart of input variances (PNG)")] = None,
    force: c.ForceOpt = False,
) -> None:
    """Find every upsample → concat → conv/linear site and measure its input scales."""
    from eqsurgeon.report import analysis_to_dict, write_json, write_plot

    c.check_outputs(json_out, plot, force=force)
    analysis, _ = c.measured_analysis(
        model, arg, checkpoint, data, input_size, batch_size, batches, seed, bn_mode, frontend, device
    )
    print_capture(analysis)
    print_sites(analysis)
    if json_out is not None:
        write_json(analysis_to_dict(analysis), json_out)
        c.console.print(f"wrote {json_out}", highlight=False)
    if plot is not None:
        write_plot(analysis, plot)
        c.console.print(f"wrote {plot}", highlight=False)
