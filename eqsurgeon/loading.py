"""Turn a model spec string (and an optional checkpoint) into an ``nn.Module``.

Specs: ``path/to/file.py:factory``, ``package.module:factory``, ``torchvision:<name>`` (no weights), or a
zoo name (``eqsurgeon models``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqsurgeon.errors import ModelLoadError, one_line
from eqsurgeon.io import apply_checkpoint, read_checkpoint
from eqsurgeon.records import CalibrationRecord

SPEC_FORMS = "file.py:factory, package.module:factory, torchvision:<name> or a zoo name"


def load_model(
    spec: str, kwargs: Mapping[str, Any] | None = None, checkpoint: Path | None = None
) -> nn.Module:
    """Build the model a spec names and load a checkpoint into it.

    Args:
        spec: see the module docstring.
        kwargs: keyword arguments for the factory.
        checkpoint: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``
            (see ``eqsurgeon.io``).

    Raises:
        ModelLoadError: the spec cannot be resolved or the factory fails.
        CheckpointError: the checkpoint is missing, unreadable or does not fit.

    >>> load_model("torchvision:fcn_resnet50", {"num_classes": 3}).__class__.__name__
    'FCN'
    """
    return load_model_with_record(spec, kwargs, checkpoint)[0]


def load_model_with_record(
    spec: str, kwargs: Mapping[str, Any] | None = None, checkpoint: Path | None = None
) -> tuple[nn.Module, CalibrationRecord | None]:
    """``load_model``, also returning the checkpoint's calibration record (None without one).

    The checkpoint is read once; an insert-mode checkpoint gets its equalizer wrappers rebuilt first.
    """
    kwargs = dict(kwargs or {})
    factory, label = _resolve(spec)
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"factory {label} raised {type(exc).__name__}: {one_line(exc)}; check its keyword arguments"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"factory {label} returned {type(model).__name__}, not a torch.nn.Module")
    record = None
    if checkpoint is not None:
        state, record = read_checkpoint(checkpoint)
        apply_checkpoint(model, state, record, checkpoint)
    return model, record


def parse_kwargs(pairs: Sequence[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are Python literals, else kept as strings.

    >>> parse_kwargs(["num_classes=19", "backbone=resnet", "pool=(1, 2)"])
    {'num_classes': 19, 'backbone': 'resnet', 'pool': (1, 2)}
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ModelLoadError(f"factory argument {pair!r} is not key=value; write e.g. num_classes=19")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError):  # not a literal: the text itself
            out[key.strip()] = value
        except RecursionError:
            raise ModelLoadError(f"factory argument {key.strip()} nests too deeply; simplify it") from None
    return out


def main_output(out: Any) -> torch.Tensor:
    """The main logits of a forward: a tensor, ``dict["out"]``, ``.logits``, or a tuple's first item."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and "out" in out:
        return out["out"]
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ModelLoadError(
        f"cannot find logits in a forward output of type {type(out).__name__}; return a tensor, "
        "a dict with 'out', or an object with .logits"
    )


def _resolve(spec: str) -> tuple[Any, str]:
    if spec.startswith("torchvision:"):
        return _torchvision_factory(spec.split(":", 1)[1]), spec
    if ":" in spec:
        where, _, name = spec.rpartition(":")
        if not where.strip() or not name.strip():
            raise ModelLoadError(
                f"model spec {spec!r} needs a module or file before ':' and a factory after it; "
                f"write e.g. my_models.py:build or my_package.models:build ({SPEC_FORMS})"
            )
        module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
        factory = getattr(module, name, None)
        if not callable(factory):
            public = [
                n
                for n, v in vars(module).items()
                if callable(v) and not n.startswith("_") and getattr(v, "__module__", "") == module.__name__
            ]
            raise ModelLoadError(
                f"{where} has no factory {name!r}; callables there: {', '.join(sorted(public)[:8]) or 'none'}"
            )
        return factory, spec
    from eqsurgeon.registry import is_model, model_entry

    if is_model(spec):
        return model_entry(spec).factory, spec
    if spec.endswith(".py") or _exists(spec):
        raise ModelLoadError(f"model spec {spec!r} names no factory; write {spec}:factory_name")
    try:
        model_entry(spec)
    except KeyError as exc:
        raise ModelLoadError(f"{exc.args[0]} Model specs are {SPEC_FORMS}") from None
    raise AssertionError("unreachable")


def _exists(spec: str) -> bool:
    try:
        return Path(spec).exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte: not a file
        return False


def _import_file(path: Path) -> Any:
    if path.is_dir():
        raise ModelLoadError(f"model file {path} is a folder; name a .py file before ':factory'")
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist; check the path before ':factory'")
    name = f"eqsurgeon_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a script's own sys.exit() too
        del sys.modules[name]
        raise ModelLoadError(f"importing {path} raised {type(exc).__name__}: {one_line(exc)}") from exc
    return module


def _import_module(name: str) -> Any:
    if name.startswith(".") or not all(part.isidentifier() for part in name.split(".")):
        raise ModelLoadError(
            f"{name!r} is not a module name; write package.module:factory, or path/to/file.py:factory"
        )
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot import module {name!r} ({one_line(exc)}); install it or use path/to/file.py:factory"
        ) from exc
    except (Exception, SystemExit) as exc:  # the module's own code failed while importing
        raise ModelLoadError(f"importing {name} raised {type(exc).__name__}: {one_line(exc)}") from exc


def _torchvision_factory(name: str) -> Any:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        seg = ", ".join(torchvision.models.list_models(torchvision.models.segmentation))
        raise ModelLoadError(f"torchvision has no model {name!r}; segmentation models: {seg}")
    builder = torchvision.models.get_model_builder(name)
    params = inspect.signature(builder).parameters

    def factory(**kwargs: Any) -> nn.Module:
        kwargs.setdefault("weights", None)  # never download: weights come from --checkpoint
        if "weights_backbone" in params:
            kwargs.setdefault("weights_backbone", None)
        return builder(**kwargs)

    return factory
