"""Recognize a fold-equalized fusing layer from its weights and its measured inputs alone.

A fold calibration divides input slice i of the fusing layer's weight by σ_i and leaves the features
unchanged. So in a folded layer the mean squared weight per input channel, w_i, is proportional to
1/v_i, where v_i = σ_i² is the input's measured variance; at initialization w_i is the same for every
slice up to noise (weights are drawn i.i.d.). Two explanations of the weights are compared:

    "not folded":  log w_i = c                 "folded":  log w_i + log v_i = c

each with the noise of log w_i, estimated from the spread of the squared weights inside slice i (its
relative standard error). A site counts as equalized when

1. the folded explanation fits better by ``EVIDENCE`` χ² units (the difference of the two weighted sums
   of squares; ~9 is "3 standard errors"), and
2. the weights remove most of the inputs' imbalance: log max/min of v_i·w_i is at most ``KEEP`` times
   log max/min of v_i, allowing ``Z`` standard errors of the weights' noise. Not "in equilibrium":
   measured on other images or at another size than at calibration, a folded site may be off balance
   (``check`` then says so), and it is still folded.

When the inputs are nearly balanced the two explanations coincide. Such a site is still recognized when
its weights are at a standard initialization (:data:`INITS`) but for the fold: a fold then leaves
w_i = w0 / v_i in every slice, where w0 is the mean squared weight that initialization draws (from the
layer's fans), while a fresh layer has w_i = w0 (:func:`judge_init`). The implied scales
s_i = sqrt(w_i / mean w) stand in for the record's folded 1/σ_i (var_ratio is scale-free, so only their
ratios matter).
docs/recognition.md says where this can be fooled.

>>> judge([4.0, 1.0], [0.25, 1.0], [0.02, 0.02]).equalized
True
>>> judge([4.0, 1.0], [1.0, 1.0], [0.02, 0.02]).equalized
False
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from eqsurgeon.errors import CheckpointError, EqSurgeonError
from eqsurgeon.records import FusionSite, Moments
from eqsurgeon.weight_slices import fans, slice_statistics

KEEP = 0.5  # at most this share of the inputs' log variance spread may remain once the weights count
EVIDENCE = 9.0  # χ² units by which the fold must explain the weights better than initialization
Z = 3.0  # standard errors of initialization noise
DRIFT = 0.2  # log units the variances measured now may differ from calibration's (other images, one batch)
# Standard initializations: the mean squared weight w0 they draw, from the weight's (fan_in, fan_out), and
# whether they draw uniformly (E[w⁴]/E[w²]² = 1.8) or normally (3); a fold scales a slice, not its shape.
INITS: dict[str, tuple[Callable[[int, int], float], bool]] = {
    "PyTorch's default, kaiming_uniform(a=√5)": (lambda fan_in, fan_out: 1 / (3 * fan_in), True),
    "kaiming_normal, fan_out (mmcv's ConvModule)": (lambda fan_in, fan_out: 2 / fan_out, False),
    "kaiming_normal, fan_in": (lambda fan_in, fan_out: 2 / fan_in, False),
}
UNIFORM_BELOW = 2.4  # kurtosis between a uniform draw's 1.8 and a normal draw's 3


@dataclass(frozen=True)
class Recognition:
    """What the weights of one site say about a fold.

    Attributes:
        scales: weight-implied input scales s_i (relative; 1 everywhere when the weights are balanced).
        raw_ratio: max/min input variance.
        weight_ratio: max/min mean squared weight per input channel over the slices.
        effective_ratio: max/min of v_i·s_i², the var_ratio once the weights are counted.
        noise: standard error of log(effective_ratio) from the initialization noise of the weights.
        evidence: χ²("all w_i equal") − χ²("w_i ∝ 1/v_i"): positive when the weights look folded.
        equalized: both conditions of the module docstring hold.
    """

    scales: tuple[float, ...]
    raw_ratio: float
    weight_ratio: float
    effective_ratio: float
    noise: float
    evidence: float
    equalized: bool

    def passes(self, max_ratio: float) -> bool:
        """Recognized, and its effective ratio is not above ``max_ratio`` by more than the noise allows."""
        return self.equalized and math.log(self.effective_ratio) <= math.log(max_ratio) + Z * self.noise


def judge(variances: Sequence[float], mean_squares: Sequence[float], rel_se: Sequence[float]) -> Recognition:
    """Decide whether per-slice weights compensate per-input variances (pure math; see module docstring).

    Args:
        variances: measured variance v_i of each concat input.
        mean_squares: mean squared weight per input channel w_i of each input's weight slice.
        rel_se: relative standard error of each w_i, from the spread of the squared weights in its slice.

    >>> r = judge([0.34, 0.085], [1.0, 4.1], [0.05, 0.05])
    >>> r.equalized, round(r.effective_ratio, 2)
    (True, 1.02)
    """
    parts = _logs(variances, mean_squares, rel_se)
    if parts is None:
        return _unusable(len(variances))
    log_v, log_w, se = parts
    precision = [1 / (x * x) for x in se]  # SE of log w_i ≈ relative SE of w_i
    terms = [a + b for a, b in zip(log_v, log_w, strict=True)]
    # How much better "w_i ∝ 1/v_i" explains the weights than "w_i all equal" (χ² difference)
    evidence = _scatter(log_w, precision) - _scatter(terms, precision)
    found = _recognition(log_v, log_w, se, evidence, equalized=False)
    # Both tests fail by themselves when the inputs are nearly balanced: the two explanations coincide.
    limit = KEEP * math.log(found.raw_ratio) + Z * found.noise
    return dataclasses.replace(
        found, equalized=evidence >= EVIDENCE and math.log(found.effective_ratio) <= limit
    )


def judge_init(
    variances: Sequence[float], mean_squares: Sequence[float], rel_se: Sequence[float], inits: Sequence[float]
) -> Recognition:
    """Decide whether the weights are one of the initializations drawing mean square ``inits``, folded.

    Fresh at init w0: w_i = w0 in every slice; folded from it: w_i·v_i = w0 in every slice; each within
    Z standard errors plus ``DRIFT``. When the weights are fresh at any of ``inits`` nothing is
    recognized, so a layer at its own initialization is never taken for another one folded. Otherwise
    the first folded fit wins; ``evidence`` is its χ² difference, fresh against folded.

    >>> judge_init([0.33, 0.36], [3.0, 2.8], [0.01, 0.01], inits=[1.0]).equalized  # folded by σ ≈ 0.58
    True
    >>> judge_init([0.33, 0.36], [1.0, 1.02], [0.01, 0.01], inits=[3.0, 1.0]).equalized  # fresh at 1.0
    False
    """
    parts = _logs(variances, mean_squares, rel_se)
    usable = [w0 for w0 in inits if w0 > 0 and math.isfinite(w0)]
    if parts is None or not usable:
        return _unusable(len(variances))
    log_v, log_w, se = parts
    allowed = [Z + DRIFT / s for s in se]  # in standard errors

    def misfit(logs: list[float], w0: float) -> list[float]:
        return [abs(x - math.log(w0)) / s for x, s in zip(logs, se, strict=True)]

    def fits(logs: list[float], w0: float) -> bool:
        return all(x <= a for x, a in zip(misfit(logs, w0), allowed, strict=True))

    terms = [v + w for v, w in zip(log_v, log_w, strict=True)]
    if not any(fits(log_w, w0) for w0 in usable):
        for w0 in usable:
            if fits(terms, w0):
                evidence = sum(x * x for x in misfit(log_w, w0)) - sum(x * x for x in misfit(terms, w0))
                return _recognition(log_v, log_w, se, evidence, equalized=True)
    return _recognition(log_v, log_w, se, -math.inf, equalized=False)


def _logs(
    variances: Sequence[float], mean_squares: Sequence[float], rel_se: Sequence[float]
) -> tuple[list[float], list[float], list[float]] | None:
    v, w, se = [float(x) for x in variances], [float(x) for x in mean_squares], [float(x) for x in rel_se]
    if len(v) < 2 or min(v) <= 0 or min(w) <= 0 or min(se) <= 0 or not all(map(math.isfinite, v + w + se)):
        return None
    return [math.log(x) for x in v], [math.log(x) for x in w], se


def _unusable(n: int) -> Recognition:
    return Recognition((1.0,) * n, math.inf, math.inf, math.inf, math.inf, -math.inf, False)


def _recognition(
    log_v: list[float], log_w: list[float], se: list[float], evidence: float, equalized: bool
) -> Recognition:
    mean_log_w = sum(log_w) / len(log_w)
    scales = tuple(math.exp((x - mean_log_w) / 2) for x in log_w)
    terms = [a + b for a, b in zip(log_v, log_w, strict=True)]
    hi, lo = terms.index(max(terms)), terms.index(min(terms))
    return Recognition(
        scales=scales,
        raw_ratio=math.exp(max(log_v) - min(log_v)),
        weight_ratio=math.exp(max(log_w) - min(log_w)),
        effective_ratio=math.exp(max(terms) - min(terms)),
        noise=math.hypot(se[hi], se[lo]),
        evidence=evidence,
        equalized=equalized,
    )


def _scatter(x: Sequence[float], precision: Sequence[float]) -> float:
    # weighted sum of squares around the weighted mean: the χ² of "all x_i are equal"
    mean = sum(a * p for a, p in zip(x, precision, strict=True)) / sum(precision)
    return sum(p * (a - mean) ** 2 for a, p in zip(x, precision, strict=True))


def recognize(
    model: nn.Module, sites: Sequence[FusionSite], moments: Mapping[str, Sequence[Moments]]
) -> dict[str, Recognition]:
    """Judge every measured ok site against ``model``'s current weights, by layer.

    >>> from eqsurgeon.records import Subject
    >>> conv = nn.Conv2d(64, 8, 1)
    >>> with torch.no_grad():
    ...     conv.weight[:, 32:] *= 2.0  # what folding σ = (1, 0.5) leaves
    >>> site = FusionSite("", "conv2d", 1, (Subject((0, 32), "a"), Subject((32, 64), "b")))
    >>> found = recognize(conv, [site], {"": (Moments(100, 0.0, 1.0), Moments(100, 0.0, 0.25))})
    >>> found[""].equalized, round(found[""].effective_ratio, 1)
    (True, 1.0)
    """
    out = {}
    for site in sites:
        measured = moments.get(site.layer)
        weight = _weight(model, site)
        if not site.ok or not measured or weight is None:
            continue
        stats = slice_statistics(weight, site.op, site.groups, [s.channels for s in site.subjects])
        variances = [m.var for m in measured]
        found = judge(variances, stats.means, stats.rel_se)
        if not found.equalized:  # nearly balanced inputs: a fold still moves the slices off their init
            fan_in, fan_out = fans(weight)
            uniform = [k < UNIFORM_BELOW for k in stats.kurtosis]
            inits = [w0(fan_in, fan_out) for w0, flat in INITS.values() if all(u == flat for u in uniform)]
            if inits:
                init_found = judge_init(variances, stats.means, stats.rel_se, inits)
                found = init_found if init_found.equalized else found
        out[site.layer] = found
    return out


def find_equalized(
    model: nn.Module, batch: torch.Tensor, bn_mode: str = "auto", frontend: str = "auto"
) -> tuple[list[FusionSite], dict[str, Recognition]]:
    """Find the sites on one batch, measure them on it, and judge each (calibrate's check before folding).

    >>> from fixtures.calibration import fuse_1x1
    >>> sites, found = find_equalized(fuse_1x1(), torch.randn(4, 3, 16, 16))
    >>> [r.equalized for r in found.values()]
    [False]
    """
    from eqsurgeon.measure import measure
    from eqsurgeon.sites import find_sites

    sites = find_sites(model, batch, frontend)
    measured = measure(model, sites, [batch], bn_mode)
    return sites, recognize(model, sites, measured.moments)


def refuse_recognized(
    model: nn.Module, batches: Iterable[torch.Tensor], bn_mode: str, frontend: str, label: str
) -> list[FusionSite]:
    """Raise when weights without a record look folded already; else return the sites found.

    Judged on the first batch, before anything is folded; calibrate hands the sites on to the
    calibration, which then captures no second time.

    Raises:
        CheckpointError: some site is recognized as equalized (``allow_equalized=True`` skips this check).
    """
    first = next(iter(batches), None)
    if first is None:
        raise EqSurgeonError("no batch to calibrate on; pass data= a folder with images")
    sites, found = find_equalized(model, first, bn_mode, frontend)
    folded = [(layer, r) for layer, r in found.items() if r.equalized]
    if folded:
        layer, r = folded[0]
        raise CheckpointError(
            f"{label} looks scale-equalized already, though it carries no calibration record: at {layer} "
            f"the weight slices are scaled against the input variances (var_ratio {r.raw_ratio:.2f}, "
            f"{r.effective_ratio:.2f} once the weights count; {len(folded)} site(s) like it), as a fold "
            "leaves them, so calibrating again would divide the weights by σ a second time. Calibrate the "
            "original weights, or pass allow_equalized=True to equalize on top"
        )
    return sites


def recognized_scales(found: Mapping[str, Recognition]) -> dict[str, tuple[float, ...]]:
    """The weight-implied scales of the sites recognized as equalized, by layer."""
    return {layer: r.scales for layer, r in found.items() if r.equalized}


def _weight(model: nn.Module, site: FusionSite) -> torch.Tensor | None:
    try:
        module = model.get_submodule(site.layer)
    except AttributeError:
        return None
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None
