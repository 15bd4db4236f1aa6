"""Registries that teach capture and site finding about user and library code.

Instead of if-chains over types, everything the graph passes need to recognise is registered here:

* leaf modules: symbolic tracing keeps them as one call (timm's own no-trace modules are added
  automatically when timm is installed); capture then traces each one on its own inputs, so site
  finding still sees inside;
* autowrap functions: recorded as one call instead of being traced through;
* upsample functions: a registered callable (for example an autowrapped ``resize`` wrapper) counts as
  an interpolation whose mode is read from its keyword arguments;
* models: a factory registered with ``@register_model`` is accepted by name as MODEL. The registry never
  imports its entries: the zoo (and any plugin package) registers them when it is imported.

>>> import torch
>>> register_leaf_module(torch.nn.Identity)
<class 'torch.nn.modules.linear.Identity'>
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=type[nn.Module])
Fn = TypeVar("Fn", bound=Callable[..., object])

_LEAF_MODULES: set[type[nn.Module]] = set()
_AUTOWRAP_FUNCTIONS: set[Callable[..., object]] = set()
_UPSAMPLE_FUNCTIONS: dict[Callable[..., object], str] = {}


def register_leaf_module(cls: M) -> M:
    """Keep torch.fx from tracing into ``cls`` (usable as a class decorator)."""
    _LEAF_MODULES.add(cls)
    return cls


def register_autowrap_function(fn: Fn) -> Fn:
    """Record calls to ``fn`` as single graph nodes (usable as a decorator)."""
    _AUTOWRAP_FUNCTIONS.add(fn)
    return fn


def register_upsample_function(fn: Fn, default_mode: str = "nearest") -> Fn:
    """Treat calls to ``fn`` as an interpolation; its ``mode`` keyword (else ``default_mode``) names it.

    The function is also autowrapped, so symbolic tracing records the call instead of its insides.
    """
    _UPSAMPLE_FUNCTIONS[fn] = default_mode
    _AUTOWRAP_FUNCTIONS.add(fn)
    return fn


def leaf_modules() -> tuple[type[nn.Module], ...]:
    """Registered leaf module types, timm's no-trace modules included."""
    return tuple(_LEAF_MODULES | _timm_notrace()[0])


def autowrap_functions() -> tuple[Callable[..., object], ...]:
    """Registered autowrap functions, timm's no-trace functions included."""
    return tuple(_AUTOWRAP_FUNCTIONS | _timm_notrace()[1])


def upsample_functions() -> dict[Callable[..., object], str]:
    """Registered upsample-like functions and their default modes."""
    return dict(_UPSAMPLE_FUNCTIONS)


# Library blocks that symbolic tracing cannot enter, named so that their libraries stay optional. Swin's
# block builds its shifted-window mask by item assignment on a tensor. Capture still searches inside
# every leaf (eqsurgeon.leaves), so a leaf hides nothing from site finding.
_KNOWN_LEAVES = ("timm.models.swin_transformer.SwinTransformerBlock",)


def _timm_notrace() -> tuple[set[type[nn.Module]], set[Callable[..., object]]]:
    try:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    except ImportError:  # timm is optional for capture
        return set(), set()
    return set(get_notrace_modules()) | _known_leaves(), set(get_notrace_functions())


def _known_leaves() -> set[type[nn.Module]]:
    import importlib

    found = set()
    for path in _KNOWN_LEAVES:
        module, _, name = path.rpartition(".")
        try:
            found.add(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another version of the library: keep tracing into it
            continue
    return found

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


# Packages that register models when imported: the built-in zoo, then any installed plugin that
# declares an ``eqsurgeon.models`` entry point. Imported by name, so the registry depends on none of them.
_MODEL_PACKAGES = ("eqsurgeon.zoo",)
_loaded = False


def _import_zoo() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    from importlib.metadata import entry_points

    for name in _MODEL_PACKAGES:
        importlib.import_module(name)
    for ep in entry_points(group="eqsurgeon.models"):
        if ep.value not in _MODEL_PACKAGES:
            ep.load()


@contextmanager
def scoped() -> Iterator[None]:
    """Restore every registry (leaves, autowrap and upsample functions, models) on exit.

    For tests and notebooks that register things for a while:

    >>> from torch import nn
    >>> with scoped():
    ...     _ = register_leaf_module(nn.PixelShuffle)
    >>> nn.PixelShuffle in _LEAF_MODULES
    False
    """
    saved = (set(_LEAF_MODULES), set(_AUTOWRAP_FUNCTIONS), dict(_UPSAMPLE_FUNCTIONS), dict(_REGISTRY))
    try:
        yield
    finally:
        for live, old in zip((_LEAF_MODULES, _AUTOWRAP_FUNCTIONS, _UPSAMPLE_FUNCTIONS, _REGISTRY), saved):
            live.clear()
            live.update(old)  # type: ignore[attr-defined]
