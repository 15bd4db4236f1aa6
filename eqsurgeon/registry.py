"""Registries that teach capture and site finding about user and library code.

Instead of if-chains over types, everything the graph passes need to recognise is registered here:

* leaf modules: symbolic tracing does not step into them (timm's own no-trace modules are added
  automatically when timm is installed);
* autowrap functions: recorded as one call instead of being traced through;
* upsample functions: a registered callable (for example an autowrapped ``resize`` wrapper) counts as
  an interpolation whose mode is read from its keyword arguments.

>>> import torch
>>> register_leaf_module(torch.nn.Identity)
<class 'torch.nn.modules.linear.Identity'>
"""

from __future__ import annotations

from collections.abc import Callable
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


# Library blocks that symbolic tracing cannot enter and that hold no fusion site, named so that their
# libraries stay optional. Swin's block builds its shifted-window mask by item assignment on a tensor.
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
