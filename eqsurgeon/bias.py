"""Whether to fold a site's means into its fusing layer's bias (fold mode, ``bias_correction="auto"``).

The correction b' = b − Σ W_i μ_i/σ_i is pointless when the module run right after the fusing layer
removes a per-channel shift anyway (BatchNorm on batch statistics, InstanceNorm); which module runs next
is read from one forward, since execution order is what matters (a ConvModule may define its norm before
its conv).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eqsurgeon.measure import measuring_mode


def wants_bias(choice: str, next_module: nn.Module | None, bn_mode: str) -> tuple[bool, str | None]:
    """(fold the means into the bias?, why not when not) for ``bias_correction=choice``.

    >>> wants_bias("auto", nn.BatchNorm2d(2), "batch")
    (False, 'BatchNorm2d follows: batch statistics remove a per-channel shift')
    """
    if choice != "auto":
        return choice == "on", None if choice == "on" else "bias_correction=off"
    name = type(next_module).__name__
    if isinstance(next_module, nn.modules.batchnorm._BatchNorm) and bn_mode == "batch":
        return False, f"{name} follows: batch statistics remove a per-channel shift"
    if isinstance(next_module, nn.modules.instancenorm._InstanceNorm):
        return False, f"{name} follows: it removes a per-channel shift"
    return True, None  # BN on running statistics, LayerNorm and GroupNorm keep a per-channel shift


def next_modules(
    model: nn.Module, layers: Sequence[str], batch: torch.Tensor, bn_mode: str
) -> dict[str, nn.Module | None]:
    """The leaf module that runs right after each of ``layers`` in one forward of ``batch``."""
    calls: list[str] = []
    handles = [
        m.register_forward_hook(lambda _m, _a, _o, _n=name: calls.append(_n))
        for name, m in model.named_modules()
        if not any(True for _ in m.children())
    ]
    try:
        with measuring_mode(model, bn_mode), torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    follows: dict[str, nn.Module | None] = {}
    for layer in layers:
        if layer in calls and calls.index(layer) + 1 < len(calls):
            follows[layer] = model.get_submodule(calls[calls.index(layer) + 1])
    return follows
