"""The tensor a call transforms, whether it was passed by position or by keyword.

A fusing layer may be called ``conv(x)``, ``conv(input=x)`` or, for a subclass whose forward names its
input otherwise, ``layer(x=x)``; a function ``F.interpolate(input=x, ...)``. torch.export always records
the input first by position, symbolic tracing records the call as written. Site finding, the measuring
hooks and the inserted equalizers all read the input through :func:`first_input`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

# The name torch's own functions give their tensor input, for builtins without a Python signature.
_DEFAULT_NAMES = ("input", "self")


def first_input(
    args: Sequence[object], kwargs: Mapping[str, object], fn: Callable[..., object] | None = None
) -> object | None:
    """The first argument of a call to ``fn``: positional when given so, else the keyword its name has.

    Args:
        args: the call's positional arguments.
        kwargs: the call's keyword arguments.
        fn: the callable (a bound ``forward`` for a module); builtins fall back to ``input``/``self``.

    Returns:
        The argument, or ``None`` when the call does not pass it.

    >>> def forward(x, scale=1.0):
    ...     return x * scale
    >>> first_input((), {"x": 3, "scale": 2.0}, forward), first_input((4,), {}, forward)
    (3, 4)
    """
    key = input_key(args, kwargs, fn)
    if key is None:
        return None
    return args[0] if key == 0 else kwargs[str(key)]


def input_key(
    args: Sequence[object], kwargs: Mapping[str, object], fn: Callable[..., object] | None = None
) -> int | str | None:
    """Where a call to ``fn`` passes its first argument: ``0`` (by position), its keyword, or ``None``.

    >>> input_key((), {"x": 1}, lambda x: x), input_key((1,), {}, lambda x: x), input_key((), {}, None)
    ('x', 0, None)
    """
    if args:
        return 0
    return next((name for name in _names(fn) if name in kwargs), None)


def _names(fn: Callable[..., object] | None) -> tuple[str, ...]:
    # Not cached: a cache keyed on bound ``forward`` methods would keep their modules alive.
    if fn is None:
        return _DEFAULT_NAMES
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins such as torch.sum have no Python signature
        return _DEFAULT_NAMES
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    # ``*args`` (torch.ops callables, wrappers) names nothing: torch's own names are the best guess.
    return (params[0].name,) if params and params[0].kind in kinds else _DEFAULT_NAMES
