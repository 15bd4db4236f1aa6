"""Decide whether a model is in scale equilibrium: the verdict behind ``eqsurgeon check``.

The *effective* var_ratio of a site counts what the model will see in training: ``ScaleEqualizer``
modules already sit in the measured path, and scales folded into weights by ``calibrate`` (recorded in
the checkpoint's ``eqsurgeon`` metadata) multiply each input's variance by scale².
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from eqsurgeon.analysis import Analysis

DEFAULT_MAX_RATIO = 1.5
METADATA_KEY = "eqsurgeon"


@dataclass(frozen=True)
class SiteVerdict:
    layer: str
    ratio: float | None  # effective var_ratio; None for a skipped site
    passed: bool
    equalized: bool  # folded scales from the checkpoint were applied
    note: str


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
    metadata: Mapping[str, str] | None = None,
    allow_unsearched: bool = False,
) -> CheckResult:
    """Verdict per site: an equalizable site passes when its effective var_ratio ≤ ``max_ratio``.

    Skipped sites cannot be equalized and never fail the check. A leaf module that could not be searched
    may hide a site, so it fails unless ``allow_unsearched``.

    >>> from eqsurgeon.analysis import InputInfo
    >>> empty = Analysis("m", "fx", None, "eval", InputInfo("synthetic", 1, (8, 8)), (), ())
    >>> check(empty).passed
    True
    """
    folded = folded_scales(metadata or {})
    verdicts = []
    for site in analysis.sites:
        if not site.ok:
            verdicts.append(SiteVerdict(site.layer, None, True, False, f"skipped: {site.reason}"))
            continue
        scales = folded.get(site.layer)
        if scales is not None and len(scales) != len(site.subjects):
            scales = None  # metadata from another model version: judge the raw scales
        ratio = analysis.var_ratio(site, scales)
        ok = ratio is not None and math.isfinite(ratio) and ratio <= max_ratio
        note = "equilibrium" if ok else f"var_ratio above {max_ratio:g}: run `eqsurgeon calibrate`"
        verdicts.append(SiteVerdict(site.layer, ratio, ok, scales is not None, note))
    for leaf in analysis.unsearched:
        note = f"leaf module not searched for sites, a site inside is unknown ({leaf.reason})"
        verdicts.append(SiteVerdict(leaf.name, None, allow_unsearched, False, note))
    return CheckResult(tuple(verdicts), max_ratio)


def folded_scales(metadata: Mapping[str, str]) -> dict[str, list[float]]:
    """Per-layer input scales folded into weights, read from a calibrated checkpoint's metadata."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    info = json.loads(raw)
    if info.get("mode") != "fold":
        return {}  # insert mode: the equalizers are modules and are measured directly
    return {
        site["layer"]: [float(inp["scale"]) for inp in site["inputs"]]
        for site in info.get("sites", [])
        if site.get("status", "ok") == "ok"
    }
