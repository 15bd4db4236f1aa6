"""Records of a calibration: the calibration record that travels with the weights, and the typed result
of ``eqsurgeon.calibration.calibrate`` it is built from. Image mean/std are on the 0–1 pixel scale."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from eqsurgeon.records.sites import FusionSite, Moments, Status

FORMAT_VERSION = 1


@dataclass(frozen=True)
class InputRecord:
    """One concat input of a site: channel range [start, stop), measured μ and σ, and the scale applied."""

    channels: tuple[int, int]
    mean: float
    std: float
    scale: float
    source: str = ""
    upsample: str | None = None


@dataclass(frozen=True)
class SiteRecord:
    """One fusion site: what was measured, and what was changed (nothing when ``status`` is "skipped")."""

    layer: str
    op: str
    groups: int
    channel_dim: int
    status: Status
    reason: str | None = None
    bias_corrected: bool = False
    note: str | None = None
    std_rel_se: float | None = None
    images: int | None = None
    var_ratio_before: float | None = None
    var_ratio_after: float | None = None
    inputs: tuple[InputRecord, ...] = ()


@dataclass(frozen=True)
class CalibrationRecord:
    """The ``eqsurgeon`` metadata of a calibrated checkpoint (DESIGN.md: "A calibrated .safetensors")."""

    model: str
    mode: str
    bn_mode: str
    images: int
    data_fingerprint: str
    model_kwargs: dict = field(default_factory=dict)
    bias_correction: str = "auto"
    tolerance: float | None = None
    converged: bool | None = None
    seed: int | None = None
    input_size: tuple[int, int] | None = None
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    skipped_files: int = 0
    sites: tuple[SiteRecord, ...] = ()
    tool_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def equalized_sites(self) -> tuple[SiteRecord, ...]:
        """The sites whose weights (fold) or modules (insert) were changed."""
        return tuple(s for s in self.sites if s.status == "ok")


def validate_record(record: CalibrationRecord) -> None:
    """Raise ValueError naming the first field of a (read) record that has the wrong type or value.

    A record comes from a file's metadata: a hand-edited or damaged one must be refused where it is read,
    not fail later as a TypeError deep inside equalization.

    >>> validate_record(CalibrationRecord("m", "fold", "eval", 8, ""))
    >>> validate_record(CalibrationRecord("m", "fold", "eval", "8", ""))
    Traceback (most recent call last):
    ...
    ValueError: images must be a count, not '8'
    """
    r = record
    _require(r.mode in ("fold", "insert"), "mode must be fold or insert", r.mode)
    _require(r.bn_mode in ("auto", "batch", "eval"), "bn_mode must be auto, batch or eval", r.bn_mode)
    _require(_is_int(r.images) and r.images >= 0, "images must be a count", r.images)
    _require(isinstance(r.model_kwargs, dict), "model_kwargs must be an object", r.model_kwargs)
    if r.input_size is not None:
        ok = len(r.input_size) == 2 and all(_is_int(v) and v > 0 for v in r.input_size)
        _require(ok, "input_size must be two positive integers", r.input_size)
    for name in ("image_mean", "image_std"):
        values = getattr(r, name)
        if values is not None:
            ok = len(values) == 3 and all(_is_number(v) and math.isfinite(v) for v in values)
            ok = ok and (name == "image_mean" or min(values) > 0)
            _require(ok, f"{name} must be 3 finite numbers", values)
    for site in r.sites:
        _validate_site(site)


def _validate_site(site: SiteRecord) -> None:
    where = f"site {site.layer}"
    named = isinstance(site.layer, str) and isinstance(site.op, str)
    _require(named, "a site's layer and op must be names", site.layer)
    _require(site.status in ("ok", "skipped"), f"{where}: status must be ok or skipped", site.status)
    _require(_is_int(site.channel_dim), f"{where}: channel_dim must be an integer", site.channel_dim)
    _require(_is_int(site.groups) and site.groups > 0, f"{where}: groups must be a count", site.groups)
    for i in site.inputs:
        ok = len(i.channels) == 2 and all(_is_int(c) for c in i.channels)
        ok = ok and 0 <= i.channels[0] < i.channels[1]
        _require(ok, f"{where}: channels must be [start, stop)", i.channels)
        for name in ("mean", "std", "scale"):
            value = getattr(i, name)
            ok = _is_number(value)
            if ok and site.status == "ok":  # applied numbers: finite, and std and scale not zero
                ok = math.isfinite(value) and (name == "mean" or value != 0)
            _require(ok, f"{where}: an input's {name} must be a finite number", value)


def _require(condition: bool, problem: str, value: object) -> None:
    if not condition:
        raise ValueError(f"{problem}, not {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)



@dataclass(frozen=True)
class Progress:
    """One progress report (after each batch) for a progress bar."""

    site: int  # index of the site being measured, 0-based
    sites: int
    layer: str
    images: int
    max_images: int | None
    std_rel_se_bound: float  # worst 95% bound over the site's inputs: what is compared with the tolerance


@dataclass(frozen=True)
class SiteCalibration:
    """One site after calibration: its moments, the scales applied (None when skipped) and why."""

    site: FusionSite
    moments: tuple[Moments, ...]
    scales: tuple[float, ...] | None
    status: Status
    reason: str | None = None
    images: int = 0
    bias_corrected: bool = False
    note: str | None = None

    @property
    def std_rel_se(self) -> float:
        return max((m.std_rel_se for m in self.moments), default=math.inf)

    @property
    def std_rel_se_bound(self) -> float:
        return max((m.std_rel_se_bound for m in self.moments), default=math.inf)

    @property
    def var_ratio_before(self) -> float | None:
        from eqsurgeon.stats import var_ratio

        return var_ratio([m.var for m in self.moments]) if self.moments else None

    @property
    def var_ratio_after(self) -> float | None:
        from eqsurgeon.stats import var_ratio

        return var_ratio([m.var for m in self.moments], self.scales) if self.scales else None


@dataclass(frozen=True)
class CalibrationResult:
    """Every site's calibration, and how the measurement went."""

    sites: tuple[SiteCalibration, ...]
    mode: str
    bn_mode: str
    bias_correction: str
    tolerance: float
    converged: bool  # every equalized site reached the tolerance (else max_images/data ran out)

    @property
    def images(self) -> int:
        """Images of the longest measuring pass (each site's pass re-reads from the first image)."""
        return max((s.images for s in self.sites), default=0)

    @property
    def equalized(self) -> tuple[SiteCalibration, ...]:
        return tuple(s for s in self.sites if s.status == "ok")
