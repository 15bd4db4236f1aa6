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
    """``load_state_dict(strict=True)`` with a one-line error naming the keys that do not fit.

    Refused as well, since loading would hide them: integer or bool tensors where the model holds
    floats (``load_state_dict`` would cast them without a word), and NaN or infinite values (a diverged
    run's weights evaluate to a normal-looking but meaningless mIoU).

    >>> state = {"weight": torch.ones(1, 1, dtype=torch.int64), "bias": torch.ones(1)}
    >>> fit_state_dict(nn.Linear(1, 1), state, "w.pt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.CheckpointError: checkpoint w.pt stores weight as torch.int64 where the model holds ...
    """
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
    check_tensors(state, own, source, {name for name, _ in model.named_parameters()})
    model.load_state_dict(state, strict=True)


def check_tensors(
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    source: Path | str,
    parameters: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Refuse a checkpoint whose dtypes cannot stand for the model's, or which holds NaN anywhere or inf
    in a parameter (buffers may hold ±inf on purpose, e.g. attention masks)."""
    for key, tensor in state.items():
        mine = own[key].dtype
        exact = tensor.dtype.is_floating_point or tensor.dtype.is_complex
        if tensor.dtype != mine and not exact and (tensor.dtype == torch.bool or not _is_integer(mine)):
            raise CheckpointError(
                f"checkpoint {source} stores {key} as {tensor.dtype} where the model holds {mine}; "
                "loading would cast it silently: save the weights as floating point"
            )
    bad = [
        k for k, t in state.items()
        if _is_real(t) and (t.isnan().any() or (k in parameters and not t.isfinite().all()))
    ]  # fmt: skip
    if bad:
        raise CheckpointError(
            f"checkpoint {source} holds NaN or infinite values in {len(bad)} tensor(s) (e.g. "
            f"{', '.join(bad[:3])}); it comes from a diverged or damaged run: use an earlier checkpoint"
        )


def _is_real(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
