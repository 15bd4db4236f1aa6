"""Recognizing a fold from the weights, one function at a time, on hand-chosen numbers and tiny layers.

``judge`` and ``judge_init`` are checked field by field against values computed here (closed forms of
the χ² difference, the slice ratios); their boundaries are hit exactly in float64 by nudging an input
a few ulps. ``slice_statistics`` is checked on every layout against the slices cut by hand.
``recognize``, ``find_equalized`` and ``refuse_recognized`` are checked on hand-made sites and one tiny
fixture. See docs/recognition.md for the rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import pytest
import torch
from torch import nn

from eqsurgeon import api
from eqsurgeon.calibration import CalibrationOptions
from eqsurgeon.errors import CaptureError, CheckpointError, EqSurgeonError, OptionError
from eqsurgeon.measure import measure
from eqsurgeon.recognize import (
    DRIFT,
    EVIDENCE,
    KEEP,
    UNIFORM_BELOW,
    Recognition,
    Z,
    find_equalized,
    judge,
    judge_init,
    recognize,
    refuse_recognized,
)
from eqsurgeon.records import FusionSite, Moments, Subject
from eqsurgeon.sites import find_sites
from eqsurgeon.weight_slices import slice_statistics
from fixtures.calibration import fuse_1x1

INF = math.inf
T = TypeVar("T")


def _chi2(x: list[float], se: list[float]) -> float:
    """χ² of "all x_i equal" with weights 1/se², as Σp·x² − (Σp·x)²/Σp."""
    p = [1 / (s * s) for s in se]
    return sum(a * x_ * x_ for a, x_ in zip(p, x)) - sum(a * x_ for a, x_ in zip(p, x)) ** 2 / sum(p)


def _ulps(x: float, k: int) -> Iterator[float]:
    """``x`` and its neighbours up to ``k`` representable floats away on either side."""
    yield x
    up = down = x
    for _ in range(k):
        up, down = math.nextafter(up, INF), math.nextafter(down, 0.0)
        yield up
        yield down


def _first(candidates: Iterable[T], hit: Callable[[T], bool]) -> T:
    found = next((x for x in candidates if hit(x)), None)
    assert found is not None, "no float input lands exactly on the boundary"
    return found


# ---- judge: every field, and both conditions at their boundaries -------------------------------------


def test_judge_reports_scales_ratios_noise_and_evidence_of_a_fold() -> None:
    v, w, se = [0.5, 0.2, 0.05], [2.0, 5.5, 16.0], [0.05, 0.02, 0.04]
    r = judge(v, w, se)
    geo = (2.0 * 5.5 * 16.0) ** (1 / 3)
    assert r.scales == pytest.approx([math.sqrt(x / geo) for x in w])
    assert r.raw_ratio == pytest.approx(10.0)
    assert r.weight_ratio == pytest.approx(8.0)
    assert r.effective_ratio == pytest.approx(1.1 / 0.8)  # v·w = 1.0, 1.1, 0.8
    assert r.noise == pytest.approx(math.hypot(0.02, 0.04))  # the inputs at v·w's max (1.1) and min (0.8)
    log_w = [math.log(x) for x in w]
    folded = [math.log(a * b) for a, b in zip(v, w)]
    assert r.evidence == pytest.approx(_chi2(log_w, se) - _chi2(folded, se))
    assert r.evidence > EVIDENCE and r.equalized is True


def test_judge_of_fresh_weights_keeps_the_raw_ratio_and_is_no_fold() -> None:
    r = judge([0.5, 0.125], [1.0, 1.0], [0.1, 0.1])
    assert r.scales == (1.0, 1.0) and r.weight_ratio == 1.0
    assert r.raw_ratio == pytest.approx(4.0) and r.effective_ratio == pytest.approx(4.0)
    assert r.evidence == pytest.approx(-_chi2([math.log(0.5), math.log(0.125)], [0.1, 0.1]))
    assert r.equalized is False and not r.passes(100.0)


def test_evidence_exactly_at_the_threshold_counts_as_a_fold() -> None:
    # v·w balanced (v₁ = 1/w₁, v₂ = 1) and se = 0.5: evidence = (log w₁ − log w₂)² / (2·0.5²), 9 at w₁ ≈ 8.34
    se = [0.5, 0.5]
    pairs = ((w1, w2) for w1 in _ulps(math.exp(2 * math.sqrt(9 / 8)), 8) for w2 in _ulps(1.0, 40))
    w1, w2 = _first(pairs, lambda p: judge([1 / p[0], 1.0], [p[0], p[1]], se).evidence == EVIDENCE)
    r = judge([1 / w1, 1.0], [w1, w2], se)
    assert r.evidence == EVIDENCE and r.effective_ratio == pytest.approx(1.0)
    assert r.equalized is True


def test_weights_that_overcorrect_exactly_to_the_limit_still_count_as_a_fold() -> None:
    # v = (4, 1): the limit on log effective_ratio is KEEP·log 4 + Z·noise; weights over-correcting by
    # exactly that much (w₁ ≈ 4^-1.5·e^(-Z·noise)) sit on it
    se = [0.25, 0.25]

    def on_limit(w: tuple[float, float]) -> bool:
        r = judge([4.0, 1.0], w, se)
        return math.log(r.effective_ratio) == KEEP * math.log(r.raw_ratio) + Z * r.noise

    start = math.exp(-1.5 * math.log(4.0) - Z * math.hypot(*se))
    w = _first(((w1, w2) for w1 in _ulps(start, 8) for w2 in _ulps(1.0, 40)), on_limit)
    r = judge([4.0, 1.0], w, se)
    assert r.effective_ratio == pytest.approx(4.0**0.5 * math.exp(Z * math.hypot(*se)))
    assert r.evidence > EVIDENCE and r.equalized is True


def test_weights_that_overcorrect_far_beyond_the_imbalance_are_no_fold() -> None:
    # w = (1/64, 1) against v = (4, 1): strong evidence against "not folded", but v·w is 16:1 the other way
    r = judge([4.0, 1.0], [1 / 64, 1.0], [0.02, 0.02])
    assert r.effective_ratio == pytest.approx(16.0) and r.noise == pytest.approx(math.hypot(0.02, 0.02))
    assert r.evidence > 1000
    assert math.log(16.0) > KEEP * math.log(4.0) + Z * r.noise  # the second condition decides
    assert r.equalized is False


def test_passes_exactly_at_max_ratio_plus_the_noise_allowance() -> None:
    r = judge([9.0, 1.0], [0.25, 1.0], [0.02, 0.02])
    assert r.equalized and r.effective_ratio == pytest.approx(2.25)
    start = math.exp(math.log(r.effective_ratio) - Z * r.noise)
    bound = _first(_ulps(start, 40), lambda m: math.log(r.effective_ratio) == math.log(m) + Z * r.noise)
    assert r.passes(bound) is True
    assert r.passes(math.nextafter(bound, 0.0)) is False
    fresh = Recognition((1.0, 1.0), 2.0, 1.0, 2.0, 0.0, -5.0, False)
    assert fresh.passes(2.0) is False  # never without a recognized fold


# ---- inputs that make a site unusable -------------------------------------------------------------------

UNUSABLE = {
    "one input": ([0.5], [1.0], [0.1]),
    "zero variance": ([0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [0.1] * 3),
    "negative variance": ([-0.5, 0.5, 1.0], [1.0, 1.0, 1.0], [0.1] * 3),
    "zero weights": ([0.5, 0.5, 1.0], [1.0, 0.0, 1.0], [0.1] * 3),
    "zero standard error": ([0.5, 0.5, 1.0], [1.0, 2.0, 1.0], [0.1, 0.1, 0.0]),
    "negative standard error": ([0.5, 0.5, 1.0], [1.0, 2.0, 1.0], [0.1, -0.1, 0.1]),
    "infinite variance": ([INF, 0.5, 1.0], [1.0, 2.0, 1.0], [0.1] * 3),
    "NaN weights": ([0.5, 0.5, 1.0], [math.nan, 2.0, 1.0], [0.1] * 3),
    "infinite standard error (one weight per slice)": ([0.5, 0.5, 1.0], [1.0, 2.0, 1.0], [0.1, INF, 0.1]),
}


def _assert_unusable(r: Recognition, n: int) -> None:
    assert r.scales == (1.0,) * n
    assert (r.raw_ratio, r.weight_ratio, r.effective_ratio, r.noise) == (INF, INF, INF, INF)
    assert r.evidence == -INF and r.equalized is False
    assert not r.passes(1e300)


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_unusable_inputs_give_the_unusable_record(case: str) -> None:
    v, w, se = UNUSABLE[case]
    _assert_unusable(judge(v, w, se), len(v))
    _assert_unusable(judge_init(v, w, se, inits=[1.0]), len(v))


@pytest.mark.parametrize("inits", [[], [0.0], [-1.0], [INF], [math.nan], [0.0, -2.0, INF]])
def test_judge_init_without_a_usable_initialization_gives_the_unusable_record(inits: list[float]) -> None:
    _assert_unusable(judge_init([0.25, 0.5], [4.0, 2.0], [0.01, 0.01], inits), 2)


def test_unequal_lengths_are_refused_not_judged_on_a_prefix() -> None:
    v, w = [0.25, 0.5, 0.3], [4.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        judge(v, w, [0.01, 0.01])
    with pytest.raises(ValueError):
        judge_init(v, w, [0.01, 0.01], inits=[1.0])
    with pytest.raises(ValueError):
        judge(v[:2], w, [0.01] * 3)
    with pytest.raises(ValueError):
        judge_init(v[:2], w, [0.01] * 3, inits=[1.0])


# ---- judge_init: a fold of a standard initialization ----------------------------------------------------


def test_judge_init_reports_a_folded_initialization_with_its_evidence() -> None:
    v, se, w0 = [0.3, 0.4], [0.01, 0.02], 0.5
    w = [w0 / 0.3 * math.exp(0.15), w0 / 0.4 * math.exp(-0.1)]  # within DRIFT of w0 / v
    r = judge_init(v, w, se, inits=[2.0, w0])
    log_w0 = math.log(w0)
    fresh = sum(((math.log(x) - log_w0) / s) ** 2 for x, s in zip(w, se))
    folded = sum(((math.log(a * x) - log_w0) / s) ** 2 for a, x, s in zip(v, w, se))
    assert r.evidence == pytest.approx(fresh - folded)
    assert r.equalized is True
    assert r.scales == pytest.approx([math.sqrt(x / math.sqrt(w[0] * w[1])) for x in w])
    assert r.raw_ratio == pytest.approx(0.4 / 0.3) and r.weight_ratio == pytest.approx(w[0] / w[1])
    assert r.effective_ratio == pytest.approx(math.exp(0.25)) and r.noise == pytest.approx(math.hypot(*se))


def test_judge_init_allows_drift_in_log_units_not_in_standard_errors() -> None:
    se = [0.01, 0.01]  # Z·se = 0.03 in log units: the drift allowance (0.2) dominates
    folded = judge_init([0.3, 0.4], [math.exp(0.75 * DRIFT) / 0.3, 1 / 0.4], se, inits=[1.0])
    assert folded.equalized is True
    too_far = judge_init([0.3, 0.4], [math.exp(1.25 * DRIFT) / 0.3, 1 / 0.4], se, inits=[1.0])
    assert too_far.equalized is False and too_far.evidence == -INF


def test_judge_init_fit_exactly_at_its_allowance_counts() -> None:
    # input 1 is folded exactly (v·w = 1 = w0) and far from fresh; input 2's misfit sits on the bound
    s = 0.25
    allowed = Z + DRIFT / s
    w2 = _first(_ulps(math.exp(allowed * s), 30), lambda x: abs(math.log(x)) / s == allowed)
    assert judge_init([0.25, 1.0], [4.0, w2], [s, s], inits=[1.0]).equalized is True
    beyond = math.nextafter(w2, INF)
    assert judge_init([0.25, 1.0], [4.0, beyond], [s, s], inits=[1.0]).equalized is False


def test_judge_init_of_a_fresh_layer_has_no_evidence() -> None:
    r = judge_init([0.3, 0.4], [1.0, 1.01], [0.01, 0.01], inits=[1.0])
    assert r.equalized is False and r.evidence == -INF
    assert r.scales == pytest.approx([(1 / 1.01) ** 0.25, 1.01**0.25])
    assert r.raw_ratio == pytest.approx(0.4 / 0.3) and r.weight_ratio == pytest.approx(1.01)
    assert r.effective_ratio == pytest.approx(0.404 / 0.3)


# ---- slice_statistics: each layout, and the degenerate slices -------------------------------------------


def _expected(chunks: list[torch.Tensor]) -> tuple[list[float], list[float], list[float]]:
    sq = [c.detach().double().pow(2).reshape(-1) for c in chunks]
    means = [float(c.mean()) for c in sq]
    rel_se = [float(c.std()) / (m * math.sqrt(c.numel())) for c, m in zip(sq, means)]
    kurtosis = [float(c.pow(2).mean()) / m**2 for c, m in zip(sq, means)]
    return means, rel_se, kurtosis


def _assert_stats(weight: torch.Tensor, op: str, groups: int, ranges: list, chunks: list) -> None:
    stats = slice_statistics(weight, op, groups, ranges)
    for got, want in zip(stats, _expected(chunks)):
        assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_a_grouped_conv_with_a_kernel_is_read_per_group(dims: int) -> None:
    torch.manual_seed(dims)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](4, 6, 3, groups=2)
    w = conv.weight  # [6, 2, 3...]: input channel c is index c % 2 of group c // 2 (output rows 3g..3g+2)
    _assert_stats(w, f"conv{dims}d", 2, [(0, 2), (2, 4)], [w[0:3, 0:2], w[3:6, 0:2]])
    middle = torch.cat([w[0:3, 1].reshape(-1), w[3:6, 0].reshape(-1)])  # channels 1 and 2 straddle groups
    _assert_stats(w, f"conv{dims}d", 2, [(1, 3), (0, 1)], [middle, w[0:3, 0]])


@pytest.mark.parametrize("groups", [1, 2])
def test_a_conv_transpose_with_a_kernel_is_read_on_dim_0(groups: int) -> None:
    torch.manual_seed(groups)
    w = nn.ConvTranspose2d(4, 6, 3, groups=groups).weight  # [in=4, out/groups, 3, 3]
    _assert_stats(w, "conv_transpose2d", groups, [(0, 1), (1, 4)], [w[0:1], w[1:4]])


def test_one_weight_per_slice_has_an_infinite_standard_error_and_two_a_finite_one() -> None:
    w = torch.tensor([[0.5, 1.0, 2.0]])  # Linear [out=1, in=3]
    stats = slice_statistics(w, "linear", 1, [(0, 1), (1, 3)])
    assert stats.means == [0.25, 2.5] and stats.kurtosis == [1.0, pytest.approx(8.5 / 6.25)]
    two = torch.tensor([1.0, 4.0], dtype=torch.float64)  # the squares
    assert stats.rel_se[0] == INF
    assert stats.rel_se[1] == pytest.approx(float(two.std()) / (2.5 * math.sqrt(2)))


def test_an_all_zero_slice_has_mean_zero_and_infinite_error_and_kurtosis() -> None:
    w = torch.ones(3, 4)
    w[:, :2] = 0.0  # e.g. a pruned input
    stats = slice_statistics(w, "linear", 1, [(0, 2), (2, 4)])
    assert stats.means == [0.0, 1.0] and stats.rel_se == [INF, 0.0] and stats.kurtosis == [INF, 1.0]
    _assert_unusable(judge([0.5, 1.0], stats.means, stats.rel_se), 2)


# ---- recognize: which sites are judged, and the initialization fallback ---------------------------------

HALVES = (Subject((0, 32), "a"), Subject((32, 64), "b"))
MEASURED = (Moments(100, 0.0, 1.0), Moments(100, 0.0, 0.25))


class _MethodWeight(nn.Module):
    """Like torch.ao's quantized Linear: ``weight`` is a method that unpacks the tensor, not a tensor."""

    def weight(self) -> torch.Tensor:
        return torch.ones(2, 64)


def _folded_conv() -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 8, 1)
    with torch.no_grad():
        conv.weight[:, 32:] *= 2.0  # what folding σ = (1, 0.5) leaves
    return conv


def test_recognize_skips_unjudgeable_sites_and_goes_on_to_the_next() -> None:
    good = _folded_conv()
    layers = {"skipped": _folded_conv(), "unmeasured": _folded_conv(), "relu": nn.ReLU()}
    model = nn.ModuleDict({**layers, "method": _MethodWeight(), "good": good})
    sites = [
        FusionSite("skipped", "conv2d", 1, HALVES, status="skipped", reason="runs twice per forward"),
        FusionSite("unmeasured", "conv2d", 1, HALVES),
        FusionSite("relu", "conv2d", 1, HALVES),  # no weight at all
        FusionSite("method", "linear", 1, HALVES),
        FusionSite("missing", "conv2d", 1, HALVES),  # no such module
        FusionSite("good", "conv2d", 1, HALVES),
    ]
    moments = {layer: MEASURED for layer in ("skipped", "relu", "method", "missing", "good")}
    found = recognize(model, sites, moments)
    assert list(found) == ["good"]
    w = good.weight.detach().double()
    m = [float(w[:, :32].pow(2).mean()), float(w[:, 32:].pow(2).mean())]
    r = found["good"]
    assert r.scales == pytest.approx([math.sqrt(x / math.sqrt(m[0] * m[1])) for x in m])
    assert r.raw_ratio == pytest.approx(4.0) and r.weight_ratio == pytest.approx(max(m) / min(m))
    assert r.effective_ratio == pytest.approx(max(m[0], m[1] / 4) / min(m[0], m[1] / 4))
    assert r.equalized is True


def _sparse_linear(every: int, nonzero: int, value: float) -> nn.Linear:
    """A Linear(48, 128) whose squared weights are value² at ``nonzero`` of each ``every`` columns, else 0:
    kurtosis every / nonzero in both input halves."""
    linear = nn.Linear(48, 128)
    sign = torch.where(torch.arange(128) % 2 == 0, 1.0, -1.0)[:, None]
    with torch.no_grad():
        linear.weight.copy_(sign * value * (torch.arange(48) % every < nonzero).double()[None, :])
    return linear


def test_kurtosis_exactly_at_the_uniform_bound_reads_as_a_normal_draw() -> None:
    # Balanced inputs (v = 0.25, 0.25): only the initialization fallback can tell a fold. The mean squared
    # weight is ≈ 4·w0 of PyTorch's default (a uniform draw, w0 = 1/(3·48)) folded by σ = 0.5, and far
    # from both kaiming_normal scales (2/48, 2/128), folded or not.
    halves = (Subject((0, 24), "a"), Subject((24, 48), "b"))
    site = FusionSite("", "linear", 1, halves)
    measured = {"": (Moments(100, 0.0, 0.25), Moments(100, 0.0, 0.25))}
    at_bound = _sparse_linear(12, 5, 0.25)  # kurtosis 12/5
    stats = slice_statistics(at_bound.weight, "linear", 1, [(0, 24), (24, 48)])
    assert stats.kurtosis == [UNIFORM_BELOW, UNIFORM_BELOW]
    normal = recognize(at_bound, [site], measured)[""]
    assert normal.equalized is False and normal.evidence == 0.0  # judge's χ² difference: identical slices
    assert normal.scales == (1.0, 1.0) and normal.effective_ratio == 1.0
    below = _sparse_linear(2, 1, math.sqrt(0.0625 * 5 / 6))  # kurtosis 2: the same mean square, uniform
    uniform = recognize(below, [site], measured)[""]
    se = slice_statistics(below.weight, "linear", 1, [(0, 24)]).rel_se[0]
    w0, w = 1 / (3 * 48), 0.0625 * 5 / 12  # two equal slices: twice one slice's fresh − folded misfit²
    assert uniform.equalized is True
    assert uniform.evidence == pytest.approx(2 * (math.log(w / w0) ** 2 - math.log(w / 4 / w0) ** 2) / se**2)


# ---- find_equalized and refuse_recognized on a tiny fixture ---------------------------------------------


def _batch(seed: int) -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _fresh() -> nn.Module:
    torch.manual_seed(0)
    return fuse_1x1()  # its BN layers never saw data: auto measures on batch statistics


def _var_ratio(model: nn.Module, sites: list[FusionSite], batch: torch.Tensor, bn_mode: str) -> float:
    variances = [m.var for m in measure(model, sites, [batch], bn_mode).moments["fuse"]]
    return max(variances) / min(variances)


def test_find_equalized_defaults_to_auto_and_passes_bn_mode_and_frontend_on() -> None:
    net, batch = _fresh(), _batch(1)
    sites, found = find_equalized(net, batch)
    assert [s.layer for s in sites] == ["fuse"] and found["fuse"].equalized is False
    assert (sites, found) == find_equalized(net, batch, bn_mode="batch", frontend="fx")
    assert found["fuse"].raw_ratio == pytest.approx(_var_ratio(net, sites, batch, "batch"))
    _, in_eval = find_equalized(net, batch, bn_mode="eval")
    assert in_eval["fuse"].raw_ratio == pytest.approx(_var_ratio(net, sites, batch, "eval"))
    assert in_eval["fuse"].raw_ratio != pytest.approx(found["fuse"].raw_ratio)
    with pytest.raises(CaptureError, match="unknown frontend 'torchscript'"):
        find_equalized(net, batch, frontend="torchscript")
    with pytest.raises(OptionError, match="bn_mode='train' is unknown"):
        find_equalized(net, batch, bn_mode="train")


def test_refuse_recognized_needs_a_batch() -> None:
    with pytest.raises(EqSurgeonError) as refused:
        refuse_recognized(_fresh(), iter([]), "auto", "auto", "fuse_1x1")
    assert str(refused.value) == "no batch to calibrate on; pass data= a folder with images"


def test_refuse_recognized_returns_a_fresh_models_sites_found_as_asked() -> None:
    net, batch = _fresh(), _batch(1)
    sites = refuse_recognized(net, [batch, _batch(2)], "eval", "fx", "fuse_1x1")
    assert sites == find_sites(net, batch, "fx")
    with pytest.raises(CaptureError, match="unknown frontend 'torchscript'"):
        refuse_recognized(net, [batch], "batch", "torchscript", "fuse_1x1")


def test_refuse_recognized_explains_why_a_folded_model_is_refused() -> None:
    net = _fresh()
    options, data = CalibrationOptions(min_batches=4), api.DataOptions(batch_size=4, device="cpu")
    api.calibrate(net, [_batch(seed) for seed in range(2, 6)], options=options, data_options=data)
    batch = _batch(1)
    _, found = find_equalized(net, batch)
    r = found["fuse"]
    assert r.equalized is True
    with pytest.raises(CheckpointError) as refused:
        refuse_recognized(net, [batch], "auto", "auto", "fuse_1x1")
    assert str(refused.value) == (
        "fuse_1x1 looks scale-equalized already, though it carries no calibration record: at fuse the "
        "weight slices are scaled against the input variances "
        f"(var_ratio {r.raw_ratio:.2f}, {r.effective_ratio:.2f} once the weights count; 1 site(s) like it), "
        "as a fold leaves them, so calibrating again would divide the weights by σ a second time. "
        "Calibrate the original weights, or pass allow_equalized=True to equalize on top"
    )
