"""``eqsurgeon verify``: re-measure a calibrated checkpoint on (held-out) images, effective statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from eqsurgeon.cli import _common as c
from eqsurgeon.cli.calibrate import _check_json_path, prepare, print_skipped


@c.handle_errors
def verify(
    model: c.ModelArg,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="checkpoint written by calibrate")],
    data: Annotated[Path, typer.Option("--data", help="folder of images, ideally held out")],
    arg: c.ArgOpt = None,
    max_images: c.MaxImagesOpt = None,
    batch_size: c.BatchSizeOpt = 8,
    workers: c.WorkersOpt = 2,
    device: c.DeviceOpt = "auto",
    input_size: c.OptionalInputSizeOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    bn_mode: Annotated[
        str | None, typer.Option("--bn-mode", help="auto, batch or eval (default: as calibrated)")
    ] = None,
    seed: c.SeedOpt = 0,
    json_out: c.JsonOutOpt = None,
) -> None:
    """Print each input's effective mean and variance, (x − μ)/σ, and each site's effective var_ratio.

    Input size and normalization default to the ones recorded at calibration.
    """
    from eqsurgeon.checkpoint import read_checkpoint
    from eqsurgeon.errors import CheckpointError
    from eqsurgeon.report import write_json
    from eqsurgeon.verification import verify as run_verify

    _check_json_path(json_out)
    meta = read_checkpoint(checkpoint)[1]
    if meta is None:
        raise CheckpointError(f"{checkpoint} has no eqsurgeon metadata; pass a file written by calibrate")
    mode = bn_mode or meta.bn_mode
    job = prepare(model, arg, checkpoint, data, input_size, mean, std, batch_size, workers, max_images,
                  seed, device, mode, force=True, defaults=meta)  # fmt: skip
    result = run_verify(job.model, (b.to(job.device) for b in job.loader), meta, mode)
    print_skipped(job.loader.skipped)
    c.console.print(
        f"verified {escape(str(checkpoint))} ({meta.mode} mode) on {result.images} image(s) at "
        f"{job.size[0]}x{job.size[1]}, BN on {result.bn_mode} statistics",
        highlight=False,
    )
    for site in result.sites:
        table = Table(
            title=escape(f"{site.layer}  effective var_ratio {site.var_ratio:.4f}"), title_justify="left"
        )
        for col in ("input", "channels", "source", "eff. mean", "eff. var"):
            table.add_column(col, justify="right" if col.startswith("eff") else "left")
        for i, inp in enumerate(site.inputs):
            table.add_row(
                str(i), f"{inp.channels[0]}:{inp.channels[1]}", escape(inp.source),
                f"{inp.mean:+.4f}", f"{inp.var:.4f}",
            )  # fmt: skip
        c.console.print(table)
    if json_out is not None:
        write_json(
            {
                "checkpoint": str(checkpoint),
                "mode": meta.mode,
                "bn_mode": result.bn_mode,
                "images": result.images,
                "sites": [
                    {
                        "layer": s.layer,
                        "var_ratio": s.var_ratio,
                        "inputs": [
                            {"channels": list(i.channels), "source": i.source, "mean": i.mean, "var": i.var}
                            for i in s.inputs
                        ],
                    }
                    for s in result.sites
                ],
            },
            json_out,
        )
        c.console.print(f"wrote {escape(str(json_out))}", highlight=False)
