"""The options and results of the library calls in :mod:`eqsurgeon.api` (importable from there too).

``MeasureOptions`` says how ``analyze`` and ``check`` measure; ``Analyzed``, ``Checked``, ``Calibrated`` and
``Verified`` are what the four calls return.

>>> MeasureOptions(frontend="fx").gradients
False
>>> MeasureOptions(frontend="jit")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
eqsurgeon.errors.OptionError: frontend='jit' ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from eqsurgeon.calibration import CalibrationResult
from eqsurgeon.capture import FRONTENDS
from eqsurgeon.checking import CheckResult
from eqsurgeon.errors import check_choice
from eqsurgeon.image_files import Skipped
from eqsurgeon.records import Analysis, CalibrationRecord
from eqsurgeon.verification import Verification


@dataclass(frozen=True)
class MeasureOptions:
    """How analyze and check measure: BN mode, capture frontend, and whether to measure gradients.

    Attributes:
        bn_mode: "auto", "batch" or "eval" (see :func:`eqsurgeon.measure.measure`).
        frontend: "auto", "fx" or "export".
        gradients: also run a backward and measure each input's weight-gradient RMS
            (:func:`eqsurgeon.gradients.measure_gradients`): cross-entropy when the data is a
            segmentation folder (images/ + masks/), else a random projection of the logits.
    """

    bn_mode: str = "auto"
    frontend: str = "auto"
    gradients: bool = False

    def __post_init__(self) -> None:
        from eqsurgeon.measure import BN_MODES

        check_choice("bn_mode", self.bn_mode, BN_MODES)
        check_choice("frontend", self.frontend, FRONTENDS)


@dataclass(frozen=True)
class Analyzed:
    """What :func:`analyze` and :func:`check` measured, with the checkpoint's record and skipped files."""

    analysis: Analysis
    record: CalibrationRecord | None = None
    skipped: tuple[Skipped, ...] = ()


@dataclass(frozen=True)
class Checked(Analyzed):
    """:func:`check`'s verdict on top of the analysis."""

    result: CheckResult | None = None


@dataclass(frozen=True)
class Calibrated:
    """What :func:`calibrate` did, and where it wrote the weights (None when ``out`` was not given)."""

    result: CalibrationResult
    record: CalibrationRecord
    model: nn.Module
    out: Path | None
    skipped: tuple[Skipped, ...] = ()


@dataclass(frozen=True)
class Verified:
    """:func:`verify`'s effective statistics and the record they were computed against."""

    verification: Verification
    record: CalibrationRecord
    size: tuple[int, int]
    skipped: tuple[Skipped, ...] = ()
