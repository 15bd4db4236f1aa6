"""Pure statistics over numbers: no tensors, no models.

>>> round(BN_RELU_VAR, 4), round(BN_RELU_MEAN, 4)
(0.3408, 0.3989)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

BN_RELU_MEAN = 1 / math.sqrt(2 * math.pi)  # mean of ReLU(N(0, 1))
BN_RELU_VAR = (math.pi - 1) / (2 * math.pi)  # variance of ReLU(N(0, 1)): the reference scale


def var_ratio(variances: Sequence[float], scales: Sequence[float] | None = None) -> float:
    """Largest over smallest variance; ``nan`` when one is NaN, ``inf`` when one is zero or infinite.

    Args:
        variances: one variance per concat input.
        scales: per-input factors already applied to the inputs (folded 1/σ): each variance counts ×s².

    >>> var_ratio([0.34, 0.2])
    1.7
    >>> var_ratio([0.34, 0.2], scales=[1 / 0.34 ** 0.5, 1 / 0.2 ** 0.5])
    1.0
    >>> var_ratio([0.34, float("nan")]), var_ratio([0.34, 0.0])
    (nan, inf)
    """
    if scales is not None:
        variances = [v * s * s for v, s in zip(variances, scales, strict=True)]
    if any(math.isnan(v) for v in variances):
        return math.nan  # not measurable: NaN features must not read as an infinitely wide gap
    if not variances or not all(math.isfinite(v) for v in variances) or min(variances) <= 0:
        return math.inf
    return round(max(variances) / min(variances), 12)


def finite(data: Any) -> Any:
    """``data`` with NaN/inf floats replaced by None, recursively: JSON has neither.

    >>> finite({"a": [1.0, float("inf")]})
    {'a': [1.0, None]}
    """
    if isinstance(data, float):
        return data if data == data and abs(data) != float("inf") else None
    if isinstance(data, Mapping):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def grad_ratio(rms: Sequence[float]) -> float:
    """Largest over smallest weight-gradient RMS of a site's input slices; ``inf`` as in :func:`var_ratio`.

    >>> grad_ratio([0.5, 2.0])
    4.0
    """
    return var_ratio(rms)
