"""``eqsurgeon verify``: re-measure a calibrated checkpoint on (held-out) images, effective statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from eqsurgeon.cli import _common as c
from eqsurgeon.cli._render import data_options, print_skipped, text, with_caps


@c.handle_errors
def verify(
    model: c.ModelArg,
    data: Annotated[Path, typer.Option("--data", help="folder of images, ideally held out")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="weights written by calibrate (any format); default: MODEL itself, when it is a calibrated "
            "save_pretrained folder",
        ),
    ] = None,
    checkpoint_key: c.CheckpointKeyOpt = None,
    arg: c.ArgOpt = None,
    max_images: c.MaxImagesOpt = None,
    batch_size: c.BatchSizeOpt = c.BATCH_SIZE,
    workers: c.WorkersOpt = c.WORKERS,
    device: c.DeviceOpt = "auto",
    input_size: c.InputSizeOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    bn_mode: Annotated[
        Literal["auto", "batch", "eval"] | None,
        typer.Option("--bn-mode", help="auto, batch or eval (default: as calibrated)"),
    ] = None,
    seed: c.SeedOpt = 0,
    max_megapixels: c.MaxMegapixelsOpt = c.MAX_MEGAPIXELS,
    max_aspect: c.MaxAspectOpt = c.MAX_ASPECT,
    fmt: c.FormatOpt = "text",
    json_out: c.JsonOutOpt = None,
    force: c.ForceOpt = False,
) -> None:
    """Print each input's effective mean and variance, (x − μ)/σ, and each site's effective var_ratio.

    Input size and normalization default to the ones recorded at calibration.
    """
    from eqsurgeon import api
    from eqsurgeon.io import write_json
    from eqsurgeon.report import verification_to_dict

    c.check_outputs(json_out, force=force)
    opts = data_options(input_size, batch_size, seed, device, max_images, workers, mean, std)
    opts = with_caps(opts, max_megapixels, max_aspect)
    done = api.verify(c.model_ref(model, arg, checkpoint, checkpoint_key), data, opts, bn_mode)
    human = c.human(fmt)
    print_skipped(c.err_console, done.skipped)
    result = done.verification
    human.print(
        f"verified {checkpoint or model} ({done.record.mode} mode) on {result.images} image(s) at "
        f"{done.size[0]}x{done.size[1]}, BN on {result.bn_mode} statistics",
        markup=False,
    )
    for site in result.sites:
        title = text(f"{site.layer}  effective var_ratio {site.var_ratio:.4f}")
        table = Table(title=title, title_justify="left")
        for col in ("input", "channels", "source", "eff. mean", "eff. var"):
            table.add_column(col, justify="right" if col.startswith("eff") else "left")
        for i, inp in enumerate(site.inputs):
            table.add_row(
                str(i), f"{inp.channels[0]}:{inp.channels[1]}", text(inp.source), f"{inp.mean:+.4f}",
                f"{inp.var:.4f}",
            )  # fmt: skip
        human.print(table)
    document = verification_to_dict(str(checkpoint or model), done.record, result)
    if fmt == "json":
        c.emit_json(document)
    if json_out is not None:
        write_json(json_out, document)
        human.print(f"wrote {json_out}", markup=False)
