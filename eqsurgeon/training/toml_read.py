"""TOML text into frozen dataclasses, with one-line errors naming the file and the key.

Used by the training recipe (:mod:`eqsurgeon.training.config`): reading a file, applying a
``section.key=value`` override, and checking each table's keys and value types against a dataclass.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Optim:
...     lr: float = 0.1
...     betas: tuple[float, float] = (0.9, 0.999)
>>> raw = {}
>>> apply_override(raw, "optim.lr=1")
>>> build_table(Optim, "optim", raw["optim"], "recipe", {})
Optim(lr=1.0, betas=(0.9, 0.999))
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from eqsurgeon.errors import RecipeError


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file, with one-line errors for a missing file, a folder, non-UTF-8 text or bad TOML.

    >>> read_toml(Path("/nonexistent.toml"), "recipe")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.RecipeError: recipe /nonexistent.toml does not exist; pass a TOML file such as ...
    """
    if path.is_dir():
        raise RecipeError(f"{what} {path} is a folder; pass a TOML file such as train/recipes/demo.toml")
    try:
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text)
    except FileNotFoundError:
        raise RecipeError(
            f"{what} {path} does not exist; pass a TOML file such as train/recipes/demo.toml"
        ) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{what} {path} is not UTF-8 text (byte {exc.start}); TOML files are UTF-8: re-save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{what} {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise RecipeError(f"{what} {path} nests arrays or tables too deeply") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``section.key`` (or ``section.table.key``) in ``raw`` to the TOML value after ``=``."""
    key, sep, text = item.partition("=")
    if not sep or "." not in key:
        raise RecipeError(f"--set {item!r} must look like section.key=value, e.g. --set optim.lr=1e-4")
    section, name = key.strip().split(".", 1)
    try:
        parsed = tomllib.loads(f"v = {text.strip()}")
        value = parsed["v"] if list(parsed) == ["v"] else text.strip()
    except (tomllib.TOMLDecodeError, RecursionError):
        value = text.strip()  # a bare word is a string: --set model.name=upernet_tiny
    *parents, leaf = name.split(".")  # model.kwargs.num_classes=5 sets one factory argument
    table: Any = raw
    for i, part in enumerate([section, *parents]):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            where = ".".join([section, *parents][: i + 1])
            raise RecipeError(f"--set {item!r}: {where} is not a table, so it has no key {leaf!r}")
    table[leaf] = value


def build_table(
    cls: type, section: str, table: dict[str, Any], source: str, choices: dict[str, tuple[str, ...]]
) -> Any:
    """The dataclass ``cls`` from one TOML table: unknown keys, wrong types and bad choices refused."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in table.items():
        if key not in hints:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {section}.{close[0]}?" if close else f"keys are {', '.join(names)}"
            raise RecipeError(f"{source}: unknown key {section}.{key}; {hint}")
        values[key] = coerce(value, hints[key], f"{section}.{key}", source)
        allowed = choices.get(f"{section}.{key}")
        if allowed and values[key] not in allowed:
            raise RecipeError(f"{source}: {section}.{key} = {value!r}; choose one of {', '.join(allowed)}")
    return cls(**values)


def coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` as the type ``hint`` (tuples, dicts, optionals, int to float), or a RecipeError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # only "X | None" occurs: an empty list means None
        if value == [] or value is None:
            return None
        return coerce(value, next(a for a in args if a is not type(None)), key, source)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{source}: {key} must be a list, got {value!r}")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise RecipeError(f"{source}: {key} must have {len(args)} items, got {len(value)}")
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(coerce(v, t, key, source) for v, t in zip(value, item_types, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: {key} must be a table, e.g. {{ num_classes = 5 }}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise RecipeError(f"{source}: {key} must be {hint.__name__}, got {value!r} ({type(value).__name__})")
