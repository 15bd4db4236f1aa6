"""Fitting read weights to a model: strict loading with a one-line error, and key clean-up."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from eqsurgeon.errors import CheckpointError

DDP_PREFIX = "module."


def strip_ddp_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix a DDP- or DataParallel-wrapped model saves, when every key has it.

    >>> list(strip_ddp_prefix({"module.w": torch.ones(1)}))
    ['w']
    """
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        return {k[len(DDP_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the keys that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: {'; '.join(parts)}; "
            "pass the checkpoint that belongs to this model and its factory arguments"
        )
    model.load_state_dict(state, strict=True)
