"""Exception types for user mistakes.

Every message names the problem and the fix in one line; the CLI prints it and exits with code 2.
Internal invariants use ``assert`` instead.
"""

from __future__ import annotations


class EqSurgeonError(ValueError):
    """A problem with what the user asked for (a file, a model, data, a checkpoint)."""


class ModelLoadError(EqSurgeonError):
    """The model spec, its factory or its checkpoint could not be turned into a module."""


class CaptureError(EqSurgeonError):
    """Neither torch.fx nor torch.export could capture the model's graph."""


class DataError(EqSurgeonError):
    """An image folder or dataset is missing, empty or unreadable."""


class CheckpointError(EqSurgeonError):
    """A checkpoint does not fit the model, or was already equalized."""


class RecipeError(EqSurgeonError):
    """A training recipe has an unknown key, a mistyped value, or does not match its run folder."""


class TrainingError(EqSurgeonError):
    """A training run cannot go on (the loss became NaN or inf); the message says what was kept."""


class OutputExistsError(EqSurgeonError):
    """An output file exists and ``--force`` was not given."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, whole sentences only, for a one-line error.

    Terminal escape codes are removed, also when their escape character was lost on the way.

    >>> one_line(ValueError("bad shape\\nTraceback..."))
    'bad shape'
    >>> one_line(ValueError("Caught DataError in DataLoader worker process 0.\\nOriginal Traceback (most "
    ...                      "recent call last):\\n  File x\\neqsurgeon.errors.DataError: mask m.png is bad"))
    'mask m.png is bad'
    >>> one_line(ValueError("\\x1b[1mdo this\\x1b[0m, or [1mthat[0m."))
    'do this, or that.'
    """
    import re

    raw = unwrap_worker(str(exc))
    clean = re.sub(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b?\[[0-9;]*m|\x1b\[[0-9;]*[A-Za-z]", "", raw)
    lines = [s for s in (ln.strip() for ln in clean.split("\n")) if s]
    text = lines[0] if lines else type(exc).__name__
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("; "))
    return cut[: end + 1] if end > limit // 3 else cut.rstrip() + "…"


def unwrap_worker(message: str) -> str:
    """A DataLoader worker's own message: torch re-raises a worker's exception in the main process with
    the worker's traceback as its message; the last line, less its ``module.Type: `` prefix, is what the
    worker said. Other messages come back unchanged.

    >>> unwrap_worker("Caught DataError in DataLoader worker process 0.\\nOriginal Traceback (most recent "
    ...               "call last):\\n  File x\\neqsurgeon.errors.DataError: mask m.png is bad")
    'mask m.png is bad'
    """
    import re

    lines = [s for s in (ln.strip() for ln in message.split("\n")) if s]
    if len(lines) > 2 and lines[1].startswith("Original Traceback") and "DataLoader worker" in lines[0]:
        return re.sub(r"^[\w.]*(Error|Exception|Warning|Interrupt|Exit)\w*: ", "", lines[-1])
    return message


class OptionError(EqSurgeonError):
    """An option of a library call has a value it cannot take.

    The message names the parameter as the API spells it (``bn_mode='x' is unknown; ...``); the CLI and
    the recipe loader re-word it with :meth:`render` as the flag or recipe key the user wrote.

    >>> str(OptionError("bn_mode", "x", "is unknown; use auto, batch or eval"))
    "bn_mode='x' is unknown; use auto, batch or eval"
    >>> OptionError("bn_mode", "x", "is unknown").render("--bn-mode ")
    "--bn-mode 'x' is unknown"
    """

    def __init__(self, name: str, value: object, problem: str) -> None:
        self.name, self.value, self.problem = name, value, problem
        super().__init__(self.render(f"{name}="))

    def render(self, label: str) -> str:
        """The message with ``label`` (a flag or recipe key) in place of ``name=``."""
        return f"{label}{self.value!r} {self.problem}"


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise :class:`OptionError` unless ``value`` is one of ``choices``.

    >>> check_choice("mode", "fold", ("fold", "insert"))
    """
    if value not in choices:
        raise OptionError(name, value, f"is unknown; use {', '.join(choices[:-1])} or {choices[-1]}")


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise :class:`OptionError` unless ``low < value < high`` (an open bound where given).

    >>> check_range("tolerance", 0.5, 0, 1)
    """
    if (low is not None and not value > low) or (high is not None and not value < high):
        where = " and ".join(
            p for p in (f"above {low:g}" if low is not None else "", f"below {high:g}" if high else "") if p
        )
        raise OptionError(name, value, f"is out of range; it must be {where}")
