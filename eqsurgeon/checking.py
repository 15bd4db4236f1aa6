"""Decide whether a model is in scale equilibrium: the verdict behind ``eqsurgeon check``.

The *effective* var_ratio of a site counts what the model will see in training: ``ScaleEqualizer``
modules already sit in the measured path, and scales folded into weights by ``calibrate`` multiply each
input's variance by scale². The scales come from the checkpoint's calibration record; without one, from
the weights themselves when ``eqsurgeon.recognize`` recognizes a fold there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from torch import nn

from eqsurgeon.recognize import Recognition
from eqsurgeon.records import Analysis, CalibrationRecord

DEFAULT_MAX_RATIO = 1.5


@dataclass(frozen=True)
class SiteVerdict:
    layer: str
    ratio: float | None  # effective var_ratio; None for a skipped site
    passed: bool
    equalized: bool  # folded scales were applied (from the record, or recognized from the weights)
    note: str
    scales_from: Literal["record", "weights"] | None = None


@dataclass(frozen=True)
class CheckResult:
    verdicts: tuple[SiteVerdict, ...]
    max_ratio: float

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)


def check(
    analysis: Analysis,
    max_ratio: float = DEFAULT_MAX_RATIO,
    record: CalibrationRecord | None = None,
    recognized: Mapping[str, Recognition] | None = None,
    allow_unsearched: bool = False,
) -> CheckResult:
    """Verdict per site: an equalizable site passes when its effective var_ratio ≤ ``max_ratio``.

    Skipped sites cannot be equalized and never fail the check. A site without recorded scales that
    ``recognized`` says is folded passes when its weight-implied effective ratio is within ``max_ratio``
    up to the weights' own noise (``Recognition.passes``). A leaf module that could not be searched may
    hide a site, so it fails unless ``allow_unsearched``.

    >>> from eqsurgeon.records import InputInfo
    >>> empty = Analysis("m", "fx", None, "eval", InputInfo("synthetic", 1, (8, 8)), (), ())
    >>> check(empty).passed
    True
    """
    folded = folded_scales(record)
    verdicts = []
    for site in analysis.sites:
        if not site.ok:
            verdicts.append(SiteVerdict(site.layer, None, True, False, f"skipped: {site.reason}"))
            continue
        scales = folded.get(site.layer)
        if scales is not None and len(scales) != len(site.subjects):
            scales = None  # a record from another model version: judge the raw scales
        found = (recognized or {}).get(site.layer)
        if scales is None and found is not None and found.equalized:
            ok = found.passes(max_ratio)
            note = "equilibrium" if ok else (
                f"var_ratio above {max_ratio:g} though the weights look folded: "
                "recalibrate the original weights"
            )  # fmt: skip
            verdicts.append(SiteVerdict(site.layer, found.effective_ratio, ok, True, note, "weights"))
            continue
        ratio = analysis.var_ratio(site, scales)
        ok = ratio is not None and math.isfinite(ratio) and ratio <= max_ratio
        note = "equilibrium" if ok else f"var_ratio above {max_ratio:g}: run `eqsurgeon calibrate`"
        verdicts.append(SiteVerdict(site.layer, ratio, ok, scales is not None, note, _origin(scales)))
    for leaf in analysis.unsearched:
        note = f"leaf module not searched for sites, a site inside is unknown ({leaf.reason})"
        verdicts.append(SiteVerdict(leaf.name, None, allow_unsearched, False, note))
    return CheckResult(tuple(verdicts), max_ratio)


def check_model(
    model: nn.Module,
    analysis: Analysis,
    max_ratio: float,
    record: CalibrationRecord | None,
    source: str,
    allow_unsearched: bool = False,
) -> CheckResult:
    """:func:`check` for a measured model: the record's folded scales, once the record is matched to the
    sites found, else the scales recognized from ``model``'s weights (``eqsurgeon.recognize``).

    Raises:
        CheckpointError: the record names other layers or channel ranges than the model's sites.

    >>> from eqsurgeon.records import InputInfo
    >>> empty = Analysis("m", "fx", None, "eval", InputInfo("synthetic", 1, (8, 8)), (), ())
    >>> check_model(nn.Identity(), empty, 1.5, None, "m").passed
    True
    """
    from eqsurgeon.io import check_record_fits
    from eqsurgeon.recognize import recognize

    if record is not None:
        check_record_fits(record, analysis.sites, source)
        return check(analysis, max_ratio, record, allow_unsearched=allow_unsearched)
    recognized = recognize(model, analysis.sites, analysis.moments)
    return check(analysis, max_ratio, None, recognized, allow_unsearched)


def _origin(scales: tuple[float, ...] | None) -> Literal["record"] | None:
    return None if scales is None else "record"


def folded_scales(record: CalibrationRecord | None) -> dict[str, tuple[float, ...]]:
    """Per-layer input scales folded into weights, from a calibration record (insert mode: none, since
    its equalizers are modules in the measured path)."""
    if record is None or record.mode != "fold":
        return {}
    return {site.layer: tuple(float(i.scale) for i in site.inputs) for site in record.equalized_sites}
