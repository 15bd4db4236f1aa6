"""What every command shares: option aliases, the consoles, and the one error boundary.

Nothing here imports torch: ``eqsurgeon --help`` and every ``COMMAND --help`` stay fast. Commands import
the library inside their function body.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console

from eqsurgeon.errors import EqSurgeonError, OptionError, one_line, unwrap_worker

console = Console(highlight=False)  # human output: stdout, or stderr when JSON goes to stdout
err_console = Console(stderr=True, highlight=False)

EXIT_FAILED = 1  # check found a site out of equilibrium
EXIT_INPUT = 2  # bad input or a bad environment (missing file, full disk, ...)
EXIT_BUG = 3  # an unexpected exception: a bug in eqsurgeon or a library it calls
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """Global flags set on the command line, and what a command wants said when it is interrupted."""

    debug: bool = False
    # () -> the Ctrl-C message; a command sets it once it knows (train: how to resume)
    on_interrupt: Callable[[], str] | None = None


def handle_errors(fn: F) -> F:
    """The error boundary: one plain line on stderr and a documented exit code for any failure.

    Expected failures (eqsurgeon's errors, and OS errors such as a full or read-only disk) exit 2;
    Ctrl-C exits 130; anything else is a bug and exits 3 with how to see the traceback. ``--debug``
    re-raises instead. Messages are printed verbatim, never as markup.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        State.on_interrupt = None
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if State.debug:
                raise
            code, message = describe(exc)
            fail(message, code)
        except KeyboardInterrupt:
            if State.debug:
                raise
            fail(interrupted_message(), EXIT_INTERRUPTED)
        finally:
            State.on_interrupt = None

    return wrapper  # type: ignore[return-value]


def interrupted_message() -> str:
    """What Ctrl-C says: the command's own words (train: how to resume), else that outputs are whole."""
    default = "interrupted; outputs already written are complete (writes are atomic)"
    if State.on_interrupt is None:
        return default
    try:
        return State.on_interrupt()
    except Exception:  # the message must never turn Ctrl-C into a traceback
        return default


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an exception reaching the boundary."""
    if isinstance(exc, OptionError):
        return EXIT_INPUT, in_flags(exc.render(flag(exc.name)))
    if isinstance(exc, EqSurgeonError):  # our own messages are one line already, paths and all
        return EXIT_INPUT, in_flags(unwrap_worker(str(exc)))
    if isinstance(exc, typer.TyperException):  # a command's own BadParameter
        return EXIT_INPUT, exc.format_message()
    if isinstance(exc, OSError):
        return EXIT_INPUT, os_message(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return EXIT_INPUT, (
            f"out of memory ({one_line(exc, limit=120)}); use a smaller --batch-size or --input-size "
            "(train: data.batch_size, data.crop_size)"
        )
    return EXIT_BUG, (
        f"internal error (a bug), {type(exc).__name__}: {one_line(exc)}; "
        "rerun with --debug for the traceback and report it"
    )


# errno → (what happened, the fix) for OS errors reaching the boundary
_OS_PROBLEMS = {
    errno.ENOSPC: ("no space left on the device", "free some space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "write elsewhere"),
    errno.EACCES: ("permission denied", "check the permissions or write elsewhere"),
    errno.EPERM: ("operation not permitted", "check the permissions or write elsewhere"),
    errno.EISDIR: ("is a folder where a file is expected", "name a file"),
    errno.ENOTDIR: ("a part of the path is a file where a folder is expected", "check the path"),
    errno.ENOENT: ("does not exist", "check the path"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
}


def os_message(exc: OSError) -> str:
    """One line for an OS error: the file, what happened, and the fix.

    >>> os_message(OSError(errno.ENOSPC, "No space left on device", "/mnt/x.safetensors"))
    '/mnt/x.safetensors: no space left on the device; free some space or write elsewhere'
    """
    where = f"{exc.filename}: " if exc.filename else ""
    problem, fix = _OS_PROBLEMS.get(
        exc.errno or -1, (exc.strerror or one_line(exc), "check the path, free space and permissions")
    )
    return f"{where}{problem}; {fix}"


def fail(message: str, code: int) -> None:
    """Print ``error: message`` verbatim on stderr, on one line, and exit with ``code``."""
    say_error(message)
    raise typer.Exit(code)


def say_error(message: str) -> None:
    """Write ``error: message`` on stderr as one plain line (never rich markup): line breaks and other
    control characters, in a file name say, are shown escaped."""
    sys.stderr.write(f"error: {printable(message.strip())}\n")
    sys.stderr.flush()


def printable(text: str) -> str:
    """``text`` safe for any terminal: control characters and undecodable bytes of file names are escaped.

    >>> printable("a\\x1b[31mb \\udcff.png")
    'a\\\\x1b[31mb \\\\xff.png'
    """
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        data = text.encode("utf-8", "backslashreplace")
    text = data.decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


# Library parameter names whose flag is not simply --name-with-dashes.
_FLAGS = {"kwargs": "--arg", "allow_equalized": "--allow-equalized", "options": "--set"}


def in_flags(message: str) -> str:
    """A library message re-worded in flags: ``pass force=True`` → ``pass --force``, ``bn_mode=eval`` →
    ``--bn-mode eval`` (only for the library's option names, so other ``x=y`` text stays).

    >>> in_flags("use 2 or more, or bn_mode=eval; or pass force=True")
    'use 2 or more, or --bn-mode eval; or pass --force'
    """
    import re

    def word(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        if name not in LIBRARY_OPTIONS:
            return m.group(0)
        return flag(name).strip() if value == "True" else flag(name) + value

    return re.sub(r"\b([a-z_]+)=([\w.-]+)", word, message)


LIBRARY_OPTIONS = frozenset(
    {
        "allow_equalized",
        "batch_size",
        "batches",
        "bias_correction",
        "bn_mode",
        "checkpoint_key",
        "data",
        "device",
        "force",
        "frontend",
        "input_size",
        "max_images",
        "max_ratio",
        "mean",
        "min_batches",
        "mode",
        "seed",
        "std",
        "tolerance",
        "workers",
    }
)


def flag(name: str) -> str:
    """The flag a library parameter is set with, as a message prefix: ``bn_mode`` → ``--bn-mode ``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-")) + " "


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
