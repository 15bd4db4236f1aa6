"""eqsurgeon: find and repair scale disequilibrium at the feature-fusion sites of segmentation networks.

The library calls (``analyze``, ``check``, ``calibrate``, ``verify``) and the stages they are made of
are imported on first use, so ``import eqsurgeon`` (and ``eqsurgeon --help``) imports no torch. The
measuring stage is the subpackage ``eqsurgeon.measure`` (``from eqsurgeon.measure import measure``).

>>> import eqsurgeon
>>> [n for n in eqsurgeon.__all__ if n in ('analyze', 'find_sites', 'calibrate', 'load')]
['analyze', 'calibrate', 'find_sites', 'load']
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS = {
    "analyze": "eqsurgeon.api",
    "check": "eqsurgeon.api",
    "calibrate": "eqsurgeon.api",
    "verify": "eqsurgeon.api",
    "ModelRef": "eqsurgeon.api",
    "DataOptions": "eqsurgeon.api",
    "MeasureOptions": "eqsurgeon.api",
    "CalibrationOptions": "eqsurgeon.calibration",
    "AddSite": "eqsurgeon.records",
    "CalibrationRecord": "eqsurgeon.records",
    "FusionSite": "eqsurgeon.records",
    "Moments": "eqsurgeon.records",
    "Subject": "eqsurgeon.records",
    "Upsample": "eqsurgeon.records",
    "Measurement": "eqsurgeon.measure",
    "MomentHooks": "eqsurgeon.measure",
    "find_sites": "eqsurgeon.sites",
    "load": "eqsurgeon.io",
    "load_model": "eqsurgeon.loading",
    "ScaleEqualizer": "eqsurgeon.modules",
    "register_autowrap_function": "eqsurgeon.registry",
    "register_leaf_module": "eqsurgeon.registry",
    "register_model": "eqsurgeon.registry",
    "register_upsample_function": "eqsurgeon.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eqsurgeon' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
