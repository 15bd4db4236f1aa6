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
    """An upsample → add fusion (FPN top-down, LR-ASPP): reported, never changed."""

    name: str
    inputs: tuple[Subject, ...]


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
        return math.sqrt(self.var) if self.var > 0 else 0.0

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
