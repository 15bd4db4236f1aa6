"""Test helpers for users who want scale equilibrium enforced in their own test suite."""

from __future__ import annotations

import torch
from torch import nn

from eqsurgeon.api import MeasureOptions, analyze
from eqsurgeon.checking import DEFAULT_MAX_RATIO, check


def assert_scale_equilibrium(
    model: nn.Module,
    example_input: torch.Tensor,
    max_ratio: float = DEFAULT_MAX_RATIO,
    bn_mode: str = "auto",
    frontend: str = "auto",
) -> None:
    """Fail with an ``AssertionError`` naming each fusion site whose var_ratio exceeds ``max_ratio``.

    ``ScaleEqualizer`` modules in the model count, because they sit in the measured path. The model
    is left bit-identical.

    >>> assert_scale_equilibrium(nn.Conv2d(3, 3, 1), torch.randn(2, 3, 8, 8))
    """
    done = analyze(model, [example_input], measure=MeasureOptions(bn_mode=bn_mode, frontend=frontend))
    result = check(done.analysis, max_ratio)
    failed = [v for v in result.verdicts if not v.passed]
    if failed:
        lines = ", ".join(f"{v.layer} (var_ratio {v.ratio:.3f})" for v in failed)
        raise AssertionError(f"scale disequilibrium above {max_ratio:g} at: {lines}")
