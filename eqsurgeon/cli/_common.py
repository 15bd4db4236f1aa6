"""What every command shares: option aliases, the consoles, parsers of option text; the error boundary
(``_errors``) is re-exported here.

Nothing here imports torch: ``eqsurgeon --help`` and every ``COMMAND --help`` stay fast. Commands import
the library inside their function body.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from eqsurgeon.cli._errors import (  # the error boundary, re-exported: commands reach it as c.NAME
    EXIT_BUG as EXIT_BUG,
)
from eqsurgeon.cli._errors import (
    EXIT_FAILED as EXIT_FAILED,
)
from eqsurgeon.cli._errors import (
    EXIT_INPUT as EXIT_INPUT,
)
from eqsurgeon.cli._errors import (
    EXIT_INTERRUPTED as EXIT_INTERRUPTED,
)
from eqsurgeon.cli._errors import (
    LIBRARY_OPTIONS as LIBRARY_OPTIONS,
)
from eqsurgeon.cli._errors import (
    State as State,
)
from eqsurgeon.cli._errors import (
    describe as describe,
)
from eqsurgeon.cli._errors import (
    fail as fail,
)
from eqsurgeon.cli._errors import (
    flag as flag,
)
from eqsurgeon.cli._errors import (
    handle_errors as handle_errors,
)
from eqsurgeon.cli._errors import (
    in_flags as in_flags,
)
from eqsurgeon.cli._errors import (
    interrupted_message as interrupted_message,
)
from eqsurgeon.cli._errors import (
    os_message as os_message,
)
from eqsurgeon.cli._errors import (
    printable as printable,
)
from eqsurgeon.cli._errors import (
    say_error as say_error,
)
from eqsurgeon.errors import EqSurgeonError

console = Console(highlight=False)  # human output: stdout, or stderr when JSON goes to stdout
err_console = Console(stderr=True, highlight=False)


# Shared options, declared once. Defaults are the same on every command that takes the option.
ModelArg = Annotated[
    str,
    typer.Argument(
        help="a zoo name (eqsurgeon models), file.py:factory, package.module:factory, torchvision:<name>, or "
        "a save_pretrained folder (transformers, segmentation_models_pytorch). Nothing is downloaded: "
        "torchvision models get weights=None and smp factories encoder_weights=None unless --arg sets them",
        show_default=False,
    ),
]
ArgOpt = Annotated[
    list[str] | None,
    typer.Option("--arg", help="factory keyword argument key=value (Python literal); repeatable"),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="weights: .safetensors, .pth/.pt (read weights-only; MMSegmentation/mmengine files too), or a "
        "save_pretrained folder; a 'module.' prefix is removed",
    ),
]
CheckpointKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoint-key",
        help="entry of a .pth/.pt checkpoint that holds the weights, e.g. state_dict_ema or model_ema "
        "(default: the file itself, else 'state_dict', else 'model')",
    ),
]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="folder of images to measure on (default: synthetic input)")
]
InputSizeOpt = Annotated[
    str | None,
    typer.Option("--input-size", help="HxW, e.g. 512x512 (default: the model's or record's, else 512x512)"),
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="images per forward")]
BatchesOpt = Annotated[int, typer.Option("--batches", min=1, help="forwards to measure over")]
MaxImagesOpt = Annotated[int | None, typer.Option("--max-images", min=1, help="use at most this many images")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="image decoding worker processes")]
MeanOpt = Annotated[
    str | None,
    typer.Option("--mean", help="per-channel mean in [0,1], e.g. 0.485,0.456,0.406 (default: model's)"),
]
StdOpt = Annotated[
    str | None,
    typer.Option("--std", help="per-channel std in [0,1], e.g. 0.229,0.224,0.225 (default: model's)"),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="seed for model initialization, synthetic input and image sampling")
]
BnMode = Literal["auto", "batch", "eval"]
BnModeOpt = Annotated[
    BnMode,
    typer.Option("--bn-mode", help="auto: batch statistics when a BN layer has never seen data, else eval"),
]
FrontendOpt = Annotated[
    Literal["auto", "fx", "export"], typer.Option("--frontend", help="auto: torch.fx, then torch.export")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda when available), cpu, cuda or cuda:N")]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite existing output files")]
JsonOutOpt = Annotated[Path | None, typer.Option("--json", help="also write the report as JSON to this file")]
MaxMegapixelsOpt = Annotated[
    float, typer.Option("--max-megapixels", help="skip images whose header declares more pixels (undecoded)")
]
MaxAspectOpt = Annotated[
    float, typer.Option("--max-aspect", help="skip images whose long side exceeds this × their short side")
]
MAX_MEGAPIXELS = 40.0  # eqsurgeon.images.MAX_PIXELS / 1e6, repeated so --help imports no torch
MAX_ASPECT = 50.0
Format = Literal["text", "json"]
FormatOpt = Annotated[Format, typer.Option("--format", help="text (tables) or json (to stdout)")]

BATCH_SIZE = 8
BATCHES = 1
WORKERS = 2


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` → (0.5, 0.5, 0.5); a single value is repeated for the 3 channels."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", ",").split(",") if v)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise EqSurgeonError(f"{option} {text!r} is not 3 numbers; write e.g. {option} 0.485,0.456,0.406")
    return values


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"512x1024"`` → (512, 1024); ``"512"`` → (512, 512)."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise EqSurgeonError(f"--input-size {text!r} is not HxW; write e.g. --input-size 512x512")
    return size  # type: ignore[return-value]


def model_ref(spec: str, arg: list[str] | None, checkpoint: Path | None, key: str | None = None) -> Any:
    """The ``ModelRef`` the shared MODEL/--arg/--checkpoint/--checkpoint-key options name."""
    from eqsurgeon.api import ModelRef
    from eqsurgeon.loading import parse_kwargs

    return ModelRef(spec, parse_kwargs(arg), checkpoint, key)


def human(fmt: str) -> Console:
    """Where human-readable text goes: stdout, or stderr when machine output takes stdout."""
    return err_console if fmt != "text" else console


def emit_json(data: Any) -> None:
    """Machine output: one JSON document on stdout (NaN/inf as null)."""
    from eqsurgeon.stats import finite

    typer.echo(json.dumps(finite(data), indent=2))


def check_outputs(*paths: Path | None, force: bool = False) -> None:
    """Refuse missing folders, folders, unwritable places and existing outputs before any work."""
    from eqsurgeon.errors import OutputExistsError
    from eqsurgeon.io import check_output

    named = [p for p in paths if p is not None]
    if len({os.path.abspath(p) for p in named}) < len(named):
        raise OutputExistsError(f"the same output file is named twice ({', '.join(map(str, named))})")
    for path in named:
        check_output(path, force)
