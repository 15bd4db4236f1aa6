"""Build the recipe's model: a zoo name, ``file.py:factory`` or ``package.module:factory``."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from eqsurgeon.errors import RecipeError
from eqsurgeon.training.config import ModelConfig


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``[model]``, with ``init`` weights loaded when set (train mode).

    >>> build_model(ModelConfig(name="torch.nn:Identity")).training
    True
    """
    if not cfg.name:
        raise RecipeError("no model: set model.name in the recipe (a zoo name or file.py:factory)")
    model = _load(cfg.name, dict(cfg.kwargs), Path(cfg.init) if cfg.init else None)
    return model.train()


def _load(spec: str, kwargs: dict, checkpoint: Path | None) -> nn.Module:
    try:
        from eqsurgeon.loading import load_model
    except ImportError:  # TEMPORARY until the lead's loading stage lands on main
        return _fallback_load(spec, kwargs, checkpoint)
    return load_model(spec, kwargs, checkpoint)


def _fallback_load(spec: str, kwargs: dict, checkpoint: Path | None) -> nn.Module:
    import importlib
    import importlib.util

    from eqsurgeon.models import create_model, is_model

    if is_model(spec):
        model = create_model(spec, **kwargs)
    else:
        where, _, factory = spec.rpartition(":")
        if where.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        model = getattr(module, factory)(**kwargs)
    if checkpoint is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(checkpoint)))
    return model
