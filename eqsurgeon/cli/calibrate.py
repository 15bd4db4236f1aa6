"""``eqsurgeon calibrate``: measure on real images and write scale-equalized weights in the user's format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from eqsurgeon.cli import _common as c
from eqsurgeon.cli._progress import CalibrationBar
from eqsurgeon.cli._render import data_options, print_calibration, print_skipped, with_caps

ModeOpt = Annotated[
    Literal["fold", "insert"],
    typer.Option(
        "--mode",
        help="fold: rescale the fusing weights (same keys; balances the forward at init, not the weight "
        "gradients); insert: equalizer modules (balance both)",
    ),
]
BiasOpt = Annotated[
    Literal["auto", "on", "off"],
    typer.Option("--bias-correction", help="fold μ into the bias; auto: unless BN/InstanceNorm follows"),
]
ToleranceOpt = Annotated[
    float,
    typer.Option("--tolerance", help="stop when every σ's relative standard error is below this (95% sure)"),
]
AllowOpt = Annotated[
    bool,
    typer.Option("--allow-equalized", help="calibrate weights already equalized (divides by σ again)"),
]
AmpOpt = Annotated[bool, typer.Option("--amp", help="measure under bf16 autocast; faster, slightly noisier")]


@c.handle_errors
def calibrate(
    model: c.ModelArg,
    data: Annotated[Path, typer.Option("--data", help="folder of training images (searched recursively)")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="where to write the calibrated weights: .safetensors; .pth/.pt (MMSegmentation layout, "
            "keeping a .pth checkpoint's meta); or a folder, written by the model's own save_pretrained "
            "(transformers and smp models, --mode fold). The record travels inside each",
        ),
    ],
    arg: c.ArgOpt = None,
    checkpoint: c.CheckpointOpt = None,
    checkpoint_key: c.CheckpointKeyOpt = None,
    mode: ModeOpt = "fold",
    max_images: c.MaxImagesOpt = None,
    tolerance: ToleranceOpt = 0.005,
    batch_size: c.BatchSizeOpt = c.BATCH_SIZE,
    workers: c.WorkersOpt = c.WORKERS,
    device: c.DeviceOpt = "auto",
    amp: AmpOpt = False,
    input_size: c.InputSizeOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    bn_mode: c.BnModeOpt = "auto",
    bias_correction: BiasOpt = "auto",
    seed: c.SeedOpt = 0,
    max_megapixels: c.MaxMegapixelsOpt = c.MAX_MEGAPIXELS,
    max_aspect: c.MaxAspectOpt = c.MAX_ASPECT,
    force: c.ForceOpt = False,
    allow_equalized: AllowOpt = False,
    frontend: c.FrontendOpt = "auto",
    fmt: c.FormatOpt = "text",
    json_out: c.JsonOutOpt = None,
) -> None:
    """Measure each concat input's μ, σ on --data until σ converges, fold 1/σ into the fusing layers
    (or insert equalizers), and write --out with the same state-dict keys plus the calibration record.

    Weights already equalized are refused (exit 2): by their record, or, without one, when their fusing
    layers' weights are scaled against the measured input variances as a fold leaves them.
    """
    import torch

    from eqsurgeon import api
    from eqsurgeon.calibration import CalibrationOptions
    from eqsurgeon.io import write_json
    from eqsurgeon.report import calibration_to_dict

    c.check_outputs(json_out, force=force)  # fail before minutes of measuring, not after (--out: api)
    opts = data_options(input_size, batch_size, seed, device, max_images, workers, mean, std)
    opts = with_caps(opts, max_megapixels, max_aspect)
    options = CalibrationOptions(
        mode=mode, bias_correction=bias_correction, bn_mode=bn_mode, tolerance=tolerance,
        max_images=max_images, frontend=frontend, autocast_dtype=torch.bfloat16 if amp else None,
    )  # fmt: skip
    human = c.human(fmt)
    human.print(f"calibrating {model} on {data} ({mode} mode)", markup=False)
    with CalibrationBar(human, max_images) as bar:
        done = api.calibrate(
            c.model_ref(model, arg, checkpoint, checkpoint_key), data, out=out, options=options,
            data_options=opts, force=force, allow_equalized=allow_equalized, progress=bar.update,
        )  # fmt: skip
    print_skipped(c.err_console, done.skipped)
    print_calibration(human, done.result)
    human.print(f"wrote {out}", markup=False)
    if fmt == "json":
        c.emit_json(calibration_to_dict(done.record, out))
    if json_out is not None:
        write_json(json_out, calibration_to_dict(done.record, out))
        human.print(f"wrote {json_out}", markup=False)
