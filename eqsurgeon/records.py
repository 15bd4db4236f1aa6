"""The typed records that cross stages: sites, moments and the calibration record.

Frozen dataclasses that hold names and numbers, never graph nodes or modules, so they outlive the graph
they were found in. A calibration record becomes JSON only at the file boundary (``eqsurgeon.io``).
Image mean/std in a record are on the 0–1 pixel scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

FORMAT_VERSION = 1
Status = Literal["ok", "skipped"]


@dataclass(frozen=True)
class Upsample:
    """An interpolation on a subject's way into the concat."""

    mode: str
    factor: tuple[float, ...]
    align_corners: bool | None = None


@dataclass(frozen=True)
class Subject:
    """One concat input: a channel range ``[start, stop)`` of the fusing layer's input."""

    channels: tuple[int, int]
    source: str
    upsample: Upsample | None = None

    @property
    def width(self) -> int:
        return self.channels[1] - self.channels[0]


@dataclass(frozen=True)
class FusionSite:
    """A fusing conv/linear and the concat inputs it mixes.

    Attributes:
        layer: qualified module name in the model (a node name for skipped functional calls).
        op: ``conv2d``, ``conv_transpose2d``, ``linear``...
        groups: the conv's groups (1 for linear).
        subjects: concat inputs in channel order.
        channel_dim: dim of the layer's input holding channels: 1, or -1 for channels-last linear.
        status: ``"ok"`` or ``"skipped"``; ``reason`` says why a site is skipped.
    """

    layer: str
    op: str
    groups: int
    subjects: tuple[Subject, ...]
    channel_dim: int = 1
    status: Status = "ok"
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class AddSite:
    """An upsample → add fusion (an FPN top-down path): reported, never changed.

    An add counts when an interpolation lies on one of its inputs' way in through scale-preserving ops
    only. A conv between the upsample and the add (torchvision's LR-ASPP classifies the upsampled branch
    before adding) makes it an add of two layers' outputs, which is not reported.
    """

    name: str
    inputs: tuple[Subject, ...]


@dataclass(frozen=True)
class UnsearchedLeaf:
    """A module that capture keeps opaque and that could not be searched for sites.

    Attributes:
        name: qualified module name in the model.
        reason: why neither frontend could trace it on the inputs it receives.
    """

    name: str
    reason: str


@dataclass(frozen=True)
class Moments:
    """Global statistics of one concat input.

    Attributes:
        count: elements seen.
        mean: global mean.
        var: global (population) variance.
        batches: forwards the statistics were pooled over.
        std_rel_se: relative standard error of ``std``, estimated across batches by the delta method
            from each batch's mean and variance (``inf`` with fewer than two batches).
    """

    count: int
    mean: float
    var: float
    batches: int = 1
    std_rel_se: float = math.inf

    @property
    def std(self) -> float:
        """√var; NaN stays NaN (a NaN feature must not read as a constant one)."""
        return math.sqrt(self.var) if self.var > 0 else self.var if math.isnan(self.var) else 0.0

    @property
    def std_rel_se_bound(self) -> float:
        """A 95% upper confidence bound on the true relative standard error of ``std``.

        ``std_rel_se`` is itself estimated from ``batches`` batches (a chi-square with batches − 1
        degrees of freedom), and a rule that stops at the first batch where it dips below a tolerance
        stops early on an underestimate. Calibrate stops on this bound instead: ×1.8 at 8 batches,
        ×1.3 at 30, ×1.1 at 300.

        >>> round(Moments(100, 0.0, 1.0, 8, 0.01).std_rel_se_bound, 4)
        0.018
        """
        k = self.batches - 1
        if k < 1 or not math.isfinite(self.std_rel_se):
            return math.inf
        # Wilson–Hilferty: the 5% quantile of chi-square(k), within 1% of the exact value for k >= 7.
        q = k * (1 - 2 / (9 * k) - 1.6449 * math.sqrt(2 / (9 * k))) ** 3
        return self.std_rel_se * math.sqrt(k / q) if q > 0 else math.inf


@dataclass(frozen=True)
class SliceGradient:
    """The fusing layer's weight gradient over one concat input's slice (``eqsurgeon.gradients``).

    Attributes:
        rms: root mean square of the gradient over the slice's weight elements.
        weight_rms: root mean square of the slice's weights.
    """

    rms: float
    weight_rms: float

    @property
    def rel(self) -> float:
        """``rms / weight_rms``: the relative size of a plain SGD step on this slice.

        >>> SliceGradient(0.01, 0.5).rel
        0.02
        """
        return self.rms / self.weight_rms if self.weight_rms > 0 else math.inf


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
