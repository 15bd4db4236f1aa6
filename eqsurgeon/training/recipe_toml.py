"""A resolved recipe as plain data and as TOML that ``load_config_text`` reads back to the same config
(the run folder's ``config.toml``, ``--resume``'s check, the comparison's JSON)."""

from __future__ import annotations

import dataclasses
from typing import Any

from eqsurgeon.training.config import TrainConfig, load_config_text  # noqa: F401  (doctest)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as nested plain data (tuples become lists), for JSON/TOML dumps and comparison."""
    return _plain(dataclasses.asdict(cfg))


def dump_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML that :func:`load_config` reads back to the same config.

    >>> load_config_text(dump_toml(TrainConfig())) == TrainConfig()
    True
    """
    lines: list[str] = []
    for section, table in config_to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            if value is None:
                value = []  # None (e.g. eval.scale) is written as an empty list, read back as None
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)  # TOML reads Python's repr of floats, nan and inf included
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)
