"""Build the recipe's model: a zoo name, ``file.py:factory`` or ``package.module:factory``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from eqsurgeon.checkpoint import METADATA_KEY
from eqsurgeon.errors import RecipeError
from eqsurgeon.loading import load_model
from eqsurgeon.training.config import ModelConfig


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``[model]`` in train mode, with ``init`` weights loaded when set.

    A calibrated ``init`` checkpoint in insert mode gets its equalizer wrappers back (``load_model``).

    >>> build_model(ModelConfig(name="upernet_tiny", kwargs={"num_classes": 3})).training
    True
    """
    if not cfg.name:
        raise RecipeError("no model: set model.name in the recipe (a zoo name or file.py:factory)")
    return load_model(cfg.name, dict(cfg.kwargs), Path(cfg.init) if cfg.init else None).train()


def init_record(cfg: ModelConfig) -> dict[str, Any] | None:
    """The calibration record in the ``init`` checkpoint's metadata, if it is a calibrated safetensors."""
    if not cfg.init or not cfg.init.endswith(".safetensors"):
        return None
    from safetensors import safe_open

    with safe_open(cfg.init, framework="pt") as f:
        metadata = f.metadata() or {}
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None
