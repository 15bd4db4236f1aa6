"""The CLI's one error boundary: exit codes, one plain line per failure, library words re-worded as flags.

Nothing here imports torch.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from eqsurgeon.errors import EqSurgeonError, OptionError, one_line, unwrap_worker

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
