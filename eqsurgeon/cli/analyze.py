"""``eqsurgeon analyze``: find every fusion site and show how unequal its input scales are."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqsurgeon.cli import _common as c
from eqsurgeon.cli._render import data_options, measure_options, print_analysis, print_skipped, with_caps


@c.handle_errors
def analyze(
    model: c.ModelArg,
    arg: c.ArgOpt = None,
    checkpoint: c.CheckpointOpt = None,
    checkpoint_key: c.CheckpointKeyOpt = None,
    frontend: c.FrontendOpt = "auto",
    data: c.DataOpt = None,
    input_size: c.InputSizeOpt = None,
    batch_size: c.BatchSizeOpt = c.BATCH_SIZE,
    batches: c.BatchesOpt = c.BATCHES,
    seed: c.SeedOpt = 0,
    max_megapixels: c.MaxMegapixelsOpt = c.MAX_MEGAPIXELS,
    max_aspect: c.MaxAspectOpt = c.MAX_ASPECT,
    bn_mode: c.BnModeOpt = "auto",
    device: c.DeviceOpt = "auto",
    fmt: c.FormatOpt = "text",
    json_out: c.JsonOutOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="bar chart of input variances (PNG)")] = None,
    gradients: Annotated[
        bool,
        typer.Option(
            "--gradients",
            help="also run a backward and measure each input's weight-gradient RMS (cross-entropy with "
            "--data images/ + masks/, else a random projection of the logits)",
        ),
    ] = False,
    force: c.ForceOpt = False,
) -> None:
    """Find every upsample → concat → conv/linear site and measure its input scales."""
    from eqsurgeon import api
    from eqsurgeon.io import write_json
    from eqsurgeon.report import analysis_to_dict, write_plot

    c.check_outputs(json_out, plot, force=force)
    opts = data_options(input_size, batch_size, seed, device, batches=batches)
    opts = with_caps(opts, max_megapixels, max_aspect)
    ref = c.model_ref(model, arg, checkpoint, checkpoint_key)
    done = api.analyze(ref, data, opts, measure_options(bn_mode, frontend, gradients))
    out = c.human(fmt)
    print_skipped(c.err_console, done.skipped)
    print_analysis(out, done.analysis)
    if fmt == "json":
        c.emit_json(analysis_to_dict(done.analysis))
    if json_out is not None:
        write_json(json_out, analysis_to_dict(done.analysis))
        out.print(f"wrote {json_out}", markup=False)
    if plot is not None:
        write_plot(done.analysis, plot)
        out.print(f"wrote {plot}", markup=False)
