"""What every command shares: option aliases, the console, and the one place errors become exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from eqsurgeon.errors import EqSurgeonError

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
        help="file.py:factory, package.module:factory, torchvision:<name>, or a zoo name (`eqsurgeon models`)",
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
SeedOpt = Annotated[int, typer.Option("--seed", help="seed for synthetic input and sampling")]
BnModeOpt = Annotated[
    str,
    typer.Option(
        "--bn-mode",
        help="auto: batch statistics when BN has never seen data, else eval; batch; eval",
        case_sensitive=False,
    ),
]
FrontendOpt = Annotated[str, typer.Option("--frontend", help="auto (fx, then torch.export), fx or export")]
