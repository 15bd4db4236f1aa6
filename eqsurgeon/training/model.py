"""Build the recipe's model: a zoo name, ``file.py:factory``, ``package.module:factory`` or a
``save_pretrained`` folder (transformers, segmentation_models_pytorch)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from eqsurgeon.errors import RecipeError
from eqsurgeon.io import folder_model, read_checkpoint
from eqsurgeon.loading import load_model
from eqsurgeon.records import CalibrationRecord
from eqsurgeon.training.config import ModelConfig, factory_kwargs


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``[model]`` in train mode, with ``init`` weights loaded when set.

    A calibrated ``init`` checkpoint in insert mode gets its equalizer wrappers back (``load_model``).

    >>> build_model(ModelConfig(name="upernet_tiny", kwargs={"num_classes": 3})).training
    True
    """
    if not cfg.name:
        raise RecipeError("no model: set model.name in the recipe (a zoo name or file.py:factory)")
    model = load_model(cfg.name, factory_kwargs(cfg.kwargs), Path(cfg.init) if cfg.init else None).train()
    if cfg.drop_path_rate is not None:
        from eqsurgeon.training.drop_path import set_drop_path_rate

        set_drop_path_rate(model, cfg.drop_path_rate)
    return model


def init_record(cfg: ModelConfig) -> CalibrationRecord | None:
    """The calibration record of the starting weights: the ``init`` checkpoint's, else a model folder's."""
    if cfg.init:
        return read_checkpoint(cfg.init)[1]
    if cfg.name and Path(cfg.name).is_dir():
        return folder_model(Path(cfg.name))[2]
    return None
