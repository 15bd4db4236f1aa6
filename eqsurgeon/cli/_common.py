"""What every command shares: option aliases, the console, and the one place errors become exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from eqsurgeon.errors import EqSurgeonError, OutputExistsError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """Global flags set by the app callback."""

    debug: bool = False


def handle_errors(fn: F) -> F:
    """Turn known user errors into one line on stderr and exit code 2 (a traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EqSurgeonError as exc:
            if State.debug:
                raise
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


# Shared options, declared once and reused by every command that loads and measures a model.
ModelArg = Annotated[
    str,
    typer.Argument(
        help="file.py:factory, package.module:factory, torchvision:<name>, or a zoo name (eqsurgeon models)",
        show_default=False,
    ),
]
ArgOpt = Annotated[
    list[str] | None,
    typer.Option("--arg", help="factory keyword argument key=value (Python literal); repeatable"),
]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="state dict: .safetensors, or .pt/.pth (weights only)")
]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="folder of images to measure on (default: synthetic input)")
]
InputSizeOpt = Annotated[str, typer.Option("--input-size", help="input height x width, e.g. 512x512")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="images per forward")]
BatchesOpt = Annotated[int, typer.Option("--batches", min=1, help="forwards to measure over")]
# analyze and check measure the same way by default, so `check` passes exactly what `analyze` showed.
MEASURE_INPUT_SIZE = "256x256"
MEASURE_BATCH_SIZE = 4
MEASURE_BATCHES = 1
SeedOpt = Annotated[
    int, typer.Option("--seed", help="seed for model initialization, synthetic input and image sampling")
]
BnModeOpt = Annotated[
    str,
    typer.Option(
        "--bn-mode",
        help="auto: batch statistics when BN has never seen data, else eval; batch; eval",
        case_sensitive=False,
    ),
]
FrontendOpt = Annotated[str, typer.Option("--frontend", help="auto (fx, then torch.export), fx or export")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda when available), cpu or cuda")]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite existing output files")]
JsonOutOpt = Annotated[Path | None, typer.Option("--json", help="write the report as JSON to this file")]
# Image-folder options of calibrate and verify.
OptionalInputSizeOpt = Annotated[
    str | None, typer.Option("--input-size", help="HxW, e.g. 512x512 (default: the model's, else 512x512)")
]
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


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """``"0.5,0.5,0.5"`` → (0.5, 0.5, 0.5); a single value is repeated for the 3 channels."""
    try:
        values = tuple(float(v) for v in text.replace(" ", ",").split(",") if v)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise EqSurgeonError(f"{option} {text!r} is not 3 numbers; write e.g. {option} 0.485,0.456,0.406")
    return values


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` → (512, 1024); ``"512"`` → (512, 512)."""
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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise EqSurgeonError(f"--device {device!r} is unknown; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EqSurgeonError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return device


def measured_analysis(
    model_spec: str,
    arg: list[str] | None,
    checkpoint: Path | None,
    data: Path | None,
    input_size: str,
    batch_size: int,
    batches: int,
    seed: int,
    bn_mode: str,
    frontend: str,
    device: str = "cpu",
) -> tuple[Any, dict[str, str]]:
    """Load, capture, find and measure as the shared options say; returns (Analysis, checkpoint metadata)."""
    from eqsurgeon.analysis import analyze, synthetic_batches
    from eqsurgeon.loading import load_model_with_metadata, parse_kwargs
    from eqsurgeon.measure import BN_MODES

    if bn_mode not in BN_MODES:
        raise EqSurgeonError(f"--bn-mode {bn_mode!r} is unknown; use one of {', '.join(BN_MODES)}")
    size = parse_size(input_size)
    device = resolve_device(device)
    import torch

    torch.manual_seed(seed)  # a freshly initialized model is part of what is measured: make it repeatable
    model, metadata = load_model_with_metadata(model_spec, parse_kwargs(arg), checkpoint)
    model = model.to(device)
    if data is None:
        inputs = synthetic_batches(size, batch_size, batches, seed, device)
        source = "synthetic"
    else:
        from eqsurgeon.images import image_loader, model_normalization

        norm = model_normalization(model)
        mean, std = norm if norm else (None, None)
        loader, _ = image_loader(
            data,
            size=size,
            batch_size=batch_size,
            mean=mean,
            std=std,
            max_images=batch_size * batches,
            seed=seed,
        )
        inputs = (b.to(device) for b in loader)
        source = str(data)
    _require_batch_for_bn(model, batch_size, bn_mode)
    analysis = analyze(
        model, inputs, frontend=frontend, bn_mode=bn_mode, model_name=model_spec, source=source
    )
    if data is not None and loader.skipped:
        names = ", ".join(f"{s.path.name} ({s.reason})" for s in loader.skipped[:5])
        err_console.print(f"skipped {len(loader.skipped)} unreadable file(s): {names}", highlight=False)
    return analysis, metadata


def _require_batch_for_bn(model: Any, batch_size: int, bn_mode: str) -> None:
    from eqsurgeon.measure import resolve_bn_mode

    if batch_size < 2 and resolve_bn_mode(model, bn_mode) == "batch":
        raise EqSurgeonError(
            "BN on batch statistics needs at least 2 images per forward; use --batch-size 2 or --bn-mode eval"
        )


def check_outputs(*paths: Path | None, force: bool = False) -> None:
    """Refuse missing output folders and existing outputs (unless ``force``) before any work is done."""
    for path in paths:
        if path is None:
            continue
        if not path.parent.is_dir():
            raise EqSurgeonError(f"folder {path.parent} for {path.name} does not exist; create it first")
        if path.exists() and not force:
            raise OutputExistsError(f"{path} already exists; choose another path or pass --force")
