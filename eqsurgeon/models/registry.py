"""Registry of built-in segmentation models (the zoo).

A factory registers itself with ``@register_model``; the CLI accepts any registered name as MODEL.

>>> from eqsurgeon.models import list_models
>>> isinstance(list_models(), list)
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its factory and what the listing shows about it."""

    name: str
    factory: Callable[..., nn.Module]
    paper_table: str = ""
    mmseg_config: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str | None = None, *, paper_table: str = "", mmseg_config: str = "", tags: tuple[str, ...] = ()
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` (the function's name by default)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        assert key not in _REGISTRY, f"model {key!r} registered twice"
        _REGISTRY[key] = ModelEntry(key, fn, paper_table, mmseg_config, tuple(tags))
        return fn

    return wrap


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered zoo model."""
    _import_zoo()
    return name in _REGISTRY


def list_models() -> list[str]:
    """Names of all registered zoo models, sorted."""
    _import_zoo()
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; raises ``KeyError`` naming close matches."""
    _import_zoo()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " Run `eqsurgeon models` to list them."
        raise KeyError(f"no zoo model named {name!r}.{hint}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the zoo model ``name`` with factory keyword arguments (``num_classes``, ``pretrained``...)."""
    return model_entry(name).factory(**kwargs)


def _import_zoo() -> None:
    # Importing the package registers every factory; done lazily so `import eqsurgeon` stays light.
    import eqsurgeon.models.zoo  # noqa: F401
