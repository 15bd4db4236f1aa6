"""The verdict behind ``eqsurgeon check``, on hand-made analyses: the bound, folded scales, skipped sites."""

from __future__ import annotations

import math

import pytest

from eqsurgeon.checking import DEFAULT_MAX_RATIO, check, folded_scales
from eqsurgeon.records import (
    Analysis,
    CalibrationRecord,
    FusionSite,
    InputInfo,
    InputRecord,
    Moments,
    SiteRecord,
    Subject,
    UnsearchedLeaf,
)

SITE = FusionSite("fuse", "conv2d", 1, (Subject((0, 2), "a"), Subject((2, 4), "b")))


def _analysis(*variances: float, site: FusionSite = SITE, unsearched: tuple = ()) -> Analysis:
    moments = {site.layer: tuple(Moments(100, 0.0, v, 4) for v in variances)} if variances else {}
    info = InputInfo("synthetic", 4, (32, 32))
    return Analysis("m", "fx", None, "batch", info, (site,), (), moments, unsearched)


def _record(mode: str, scales: tuple[float, ...], layer: str = "fuse") -> CalibrationRecord:
    inputs = tuple(InputRecord((2 * i, 2 * i + 2), 0.0, 1.0, s) for i, s in enumerate(scales))
    site = SiteRecord(layer, "conv2d", 1, 1, "ok", inputs=inputs)
    return CalibrationRecord("m", mode, "batch", 8, "f", sites=(site,))


@pytest.mark.parametrize("max_ratio", [DEFAULT_MAX_RATIO, 2.0, 4.0])
def test_a_ratio_exactly_at_the_bound_passes_and_just_above_fails(max_ratio: float) -> None:
    (at,) = check(_analysis(max_ratio, 1.0), max_ratio).verdicts
    assert (at.ratio, at.passed, at.note) == (max_ratio, True, "equilibrium")
    (above,) = check(_analysis(max_ratio * (1 + 1e-9), 1.0), max_ratio).verdicts
    assert not above.passed and f"above {max_ratio:g}" in above.note
    assert check(_analysis(max_ratio, 1.0), max_ratio).passed
    assert not check(_analysis(max_ratio * (1 + 1e-9), 1.0), max_ratio).passed


def test_default_bound_is_one_and_a_half() -> None:
    assert check(_analysis(1.5, 1.0)).passed and not check(_analysis(1.51, 1.0)).passed
    assert check(_analysis(1.5, 1.0)).max_ratio == DEFAULT_MAX_RATIO == 1.5


def test_folded_scales_count_squared_and_only_in_fold_mode() -> None:
    analysis = _analysis(4.0, 1.0)  # raw ratio 4: fails
    (v,) = check(analysis, record=_record("fold", (0.5, 1.0))).verdicts  # 4 × 0.25 = 1
    assert (v.ratio, v.passed, v.equalized) == (1.0, True, True)
    (v,) = check(analysis, record=_record("insert", (0.5, 1.0))).verdicts  # equalizers are in the model
    assert (v.ratio, v.passed, v.equalized) == (4.0, False, False)
    (v,) = check(analysis, record=_record("fold", (0.5, 1.0, 1.0))).verdicts  # another model version
    assert (v.ratio, v.equalized) == (4.0, False)
    (v,) = check(analysis, record=_record("fold", (0.5, 1.0), layer="other")).verdicts
    assert (v.ratio, v.equalized) == (4.0, False)
    assert folded_scales(None) == {} == folded_scales(_record("insert", (2.0,)))
    assert folded_scales(_record("fold", (2.0, 3.0))) == {"fuse": (2.0, 3.0)}


def test_unmeasurable_sites_fail_and_skipped_sites_pass() -> None:
    (v,) = check(_analysis(0.0, 1.0)).verdicts  # a zero variance: the ratio is infinite
    assert v.ratio == math.inf and not v.passed
    (v,) = check(_analysis()).verdicts  # never measured (the layer did not run)
    assert v.ratio is None and not v.passed and "calibrate" in v.note
    skipped = FusionSite("fuse", "conv2d", 1, SITE.subjects, status="skipped", reason="runs twice")
    (v,) = check(_analysis(9.0, 1.0, site=skipped)).verdicts
    assert (v.layer, v.ratio, v.passed, v.equalized, v.note) == (
        "fuse",
        None,
        True,
        False,
        "skipped: runs twice",
    )
    later = FusionSite("head", "conv2d", 1, SITE.subjects)
    both = Analysis(
        "m", "fx", None, "batch", InputInfo("synthetic", 4, (32, 32)), (skipped, later), (),
        {"head": (Moments(100, 0.0, 9.0, 4), Moments(100, 0.0, 1.0, 4))},
    )  # fmt: skip
    verdicts = check(both).verdicts  # a skipped site does not end the check
    assert [(v.layer, v.passed, v.ratio) for v in verdicts] == [("fuse", True, None), ("head", False, 9.0)]


def test_an_unsearched_leaf_fails_unless_allowed() -> None:
    leaf = UnsearchedLeaf("backbone.block", "fx and export both failed")
    analysis = _analysis(1.0, 1.0, unsearched=(leaf,))
    result = check(analysis)
    assert [v.layer for v in result.verdicts] == ["fuse", "backbone.block"] and not result.passed
    leaf_verdict = result.verdicts[1]
    assert (leaf_verdict.ratio, leaf_verdict.passed, leaf_verdict.equalized) == (None, False, False)
    assert (
        leaf_verdict.note
        == "leaf module not searched for sites, a site inside is unknown (fx and export both failed)"
    )
    assert check(analysis, allow_unsearched=True).passed


def test_check_model_judges_with_the_records_scales_once_the_record_fits() -> None:
    """With a record its folded scales count (the weights are not consulted), against the caller's bound."""
    from torch import nn

    from eqsurgeon.checking import check_model
    from eqsurgeon.errors import CheckpointError

    leaf = UnsearchedLeaf("backbone.block", "fx and export both failed")
    analysis = _analysis(8.0, 1.0, unsearched=(leaf,))
    record = _record("fold", (0.5, 1.0))  # 8·0.25 = 2 against 1
    result = check_model(nn.Identity(), analysis, 2.0, record, "w.safetensors", allow_unsearched=True)
    assert result.max_ratio == 2.0 and result.passed
    fuse, block = result.verdicts
    assert (fuse.ratio, fuse.passed, fuse.equalized, fuse.scales_from) == (2.0, True, True, "record")
    assert (block.layer, block.passed) == ("backbone.block", True)
    strict = check_model(nn.Identity(), analysis, 1.5, record, "w.safetensors")
    assert [v.passed for v in strict.verdicts] == [False, False]  # above 1.5; the leaf not allowed
    with pytest.raises(
        CheckpointError,
        match=r"^the calibration record in w\.safetensors does not match the model: it equalized other,",
    ):
        check_model(nn.Identity(), analysis, 2.0, _record("fold", (0.5, 1.0), "other"), "w.safetensors")


def test_check_model_without_a_record_judges_the_raw_scales_of_fresh_weights() -> None:
    from torch import nn

    from eqsurgeon.checking import check_model

    leaf = UnsearchedLeaf("backbone.block", "fx and export both failed")
    result = check_model(nn.Identity(), _analysis(2.0, 1.0, unsearched=(leaf,)), 2.0, None, "m")
    fuse, block = result.verdicts
    assert (fuse.ratio, fuse.passed, fuse.equalized, fuse.scales_from) == (2.0, True, False, None)
    assert not block.passed
    allowed = check_model(nn.Identity(), _analysis(2.0, 1.0, unsearched=(leaf,)), 2.0, None, "m", True)
    assert allowed.passed


def test_weights_recognized_as_folded_are_judged_by_their_effective_ratio() -> None:
    from eqsurgeon.recognize import Recognition

    def found(effective: float, equalized: bool = True) -> Recognition:
        return Recognition((1.0, 0.5), 8.0, 4.0, effective, 0.0, 20.0, equalized)

    (ok,) = check(_analysis(8.0, 1.0), 1.5, recognized={"fuse": found(1.2)}).verdicts
    assert (ok.ratio, ok.passed, ok.equalized, ok.note, ok.scales_from) == (
        1.2,
        True,
        True,
        "equilibrium",
        "weights",
    )
    (high,) = check(_analysis(8.0, 1.0), 1.5, recognized={"fuse": found(3.0)}).verdicts
    assert (high.ratio, high.passed, high.scales_from) == (3.0, False, "weights")
    assert high.note == "var_ratio above 1.5 though the weights look folded: recalibrate the original weights"
    (raw,) = check(_analysis(8.0, 1.0), 1.5, recognized={"fuse": found(1.2, equalized=False)}).verdicts
    assert (raw.ratio, raw.passed, raw.equalized, raw.scales_from) == (8.0, False, False, None)
    recorded = check(_analysis(8.0, 1.0), 1.5, _record("fold", (0.5, 1.0)), {"fuse": found(3.0)})
    assert recorded.verdicts[0].scales_from == "record"  # a record's scales come before the weights


def test_a_site_judged_by_its_weights_does_not_end_the_verdicts() -> None:
    from eqsurgeon.recognize import Recognition

    head = FusionSite("head", "conv2d", 1, (Subject((0, 2), "c"), Subject((2, 4), "d")))
    moments = {"fuse": (Moments(100, 0.0, 8.0, 4), Moments(100, 0.0, 1.0, 4))}
    moments["head"] = (Moments(100, 0.0, 3.0, 4), Moments(100, 0.0, 1.0, 4))
    info = InputInfo("synthetic", 4, (32, 32))
    analysis = Analysis("m", "fx", None, "batch", info, (SITE, head), (), moments)
    folded = Recognition((1.0, 0.5), 8.0, 4.0, 1.2, 0.0, 20.0, True)
    verdicts = check(analysis, 1.5, recognized={"fuse": folded}).verdicts
    assert [(v.layer, v.ratio, v.scales_from) for v in verdicts] == [
        ("fuse", 1.2, "weights"),
        ("head", 3.0, None),
    ]
