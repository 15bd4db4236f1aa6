"""The typed records that cross stages: sites, moments, the calibration record, an analysis.

Frozen dataclasses that hold names and numbers, never graph nodes or modules, so they outlive the graph
they were found in. A calibration record becomes JSON only at the file boundary (``eqsurgeon.io``).
Image mean/std in a record are on the 0–1 pixel scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from eqsurgeon.records.calibration import (
    FORMAT_VERSION,
    CalibrationRecord,
    CalibrationResult,
    InputRecord,
    Progress,
    SiteCalibration,
    SiteRecord,
    validate_record,
)
from eqsurgeon.records.sites import (
    AddSite,
    FusionSite,
    Moments,
    SliceGradient,
    Status,
    Subject,
    UnsearchedLeaf,
    Upsample,
)

__all__ = [
    "FORMAT_VERSION",
    "AddSite",
    "Analysis",
    "CalibrationRecord",
    "CalibrationResult",
    "FusionSite",
    "InputInfo",
    "InputRecord",
    "Moments",
    "Progress",
    "SiteCalibration",
    "SiteRecord",
    "SliceGradient",
    "Status",
    "Subject",
    "UnsearchedLeaf",
    "Upsample",
    "validate_record",
]


@dataclass(frozen=True)
class InputInfo:
    """What an analysis measured on."""

    source: str  # "synthetic" or the image folder
    images: int
    size: tuple[int, int]


@dataclass(frozen=True)
class Analysis:
    """Sites of a model, the moments of every ok site's inputs and, when asked, their weight gradients."""

    model: str
    frontend: str
    fx_error: str | None
    bn_mode: str
    input: InputInfo
    sites: tuple[FusionSite, ...]
    add_sites: tuple[AddSite, ...]
    moments: Mapping[str, tuple[Moments, ...]] = field(default_factory=dict)
    unsearched: tuple[UnsearchedLeaf, ...] = ()  # opaque leaves site finding could not look inside
    gradients: Mapping[str, tuple[SliceGradient, ...]] = field(default_factory=dict)
    grad_loss: str | None = None  # the loss the gradients were measured with, when they were

    def grad_ratio(self, site: FusionSite) -> float | None:
        """max/min of the site's slice gradient RMS, when gradients were measured."""
        from eqsurgeon.stats import grad_ratio

        grads = self.gradients.get(site.layer)
        return None if grads is None else grad_ratio([g.rms for g in grads])

    def var_ratio(self, site: FusionSite, scales: tuple[float, ...] | None = None) -> float | None:
        """max/min input variance of a measured site; ``scales`` folded into weights count as x·s."""
        from eqsurgeon.stats import var_ratio

        if site.layer not in self.moments:
            return None
        return var_ratio([m.var for m in self.moments[site.layer]], scales)
