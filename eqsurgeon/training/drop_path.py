"""Stochastic depth as a recipe states it: read and set a model's drop-path rate (timm's ``DropPath``).

timm (like MMSeg's backbones) spreads the rate linearly over the blocks, 0 at the first and
``drop_path_rate`` at the last, so the rate of a built model is its largest ``drop_prob``, and a new rate
rescales every block's probability by the same factor.
"""

from __future__ import annotations

from timm.layers import DropPath
from torch import nn

from eqsurgeon.errors import RecipeError


def drop_path_rate(model: nn.Module) -> float:
    """The model's drop-path rate: the largest ``DropPath.drop_prob`` (0.0 when it has none).

    >>> drop_path_rate(nn.Sequential(DropPath(0.1), DropPath(0.3)))
    0.3
    """
    return max((m.drop_prob for m in model.modules() if isinstance(m, DropPath)), default=0.0)


def set_drop_path_rate(model: nn.Module, rate: float) -> nn.Module:
    """Rescale every ``DropPath`` so that the last block's probability is ``rate``; returns ``model``.

    Raises:
        RecipeError: ``rate`` is outside [0, 1), or positive for a model built without drop path.

    >>> m = set_drop_path_rate(nn.Sequential(DropPath(0.1), DropPath(0.2)), 0.4)
    >>> [round(d.drop_prob, 3) for d in m]
    [0.2, 0.4]
    """
    if not 0.0 <= rate < 1.0:
        raise RecipeError(f"model.drop_path_rate = {rate}; use a value in [0, 1), e.g. 0.3")
    current = drop_path_rate(model)
    if current == rate:
        return model
    if current == 0.0:
        if rate == 0.0:
            return model
        raise RecipeError(
            f"model.drop_path_rate = {rate} but the model was built without drop path; "
            "build it with drop_path_rate in model.kwargs, or set model.drop_path_rate = []"
        )
    for m in model.modules():
        if isinstance(m, DropPath):
            m.drop_prob = m.drop_prob * rate / current
    return model
