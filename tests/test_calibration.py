"""Library-level calibration: fold ≡ insert, topological order, convergence, bias decisions, reduce."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from eqsurgeon.calibration import CalibrationOptions, calibrate
from eqsurgeon.equalize import EqualizedInput
from eqsurgeon.errors import EqSurgeonError, OptionError
from eqsurgeon.measure import MeasureState, measure, measuring_mode, merge_moments
from eqsurgeon.records import FusionSite, Moments
from eqsurgeon.sites import find_sites
from fixtures.calibration import (
    fuse_1x1,
    fuse_3x3,
    fuse_constant,
    fuse_gn,
    fuse_two,
    fuse_two_plain,
    no_sites,
    token_fuse,
)


def _batches(n: int = 12, size: int = 24, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=gen) * 0.8 + 0.3 for _ in range(n)]


def _forward_batch_stats(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with measuring_mode(model, "batch"), torch.no_grad():
        return model(x)


@pytest.mark.parametrize("factory", [fuse_1x1, fuse_3x3, fuse_two, fuse_two_plain, fuse_gn, token_fuse])
def test_fold_equals_insert(factory) -> None:
    # 3x3: the fixture's fusing conv has no padding, so every output is away from the border.
    batches = _batches()
    folded, inserted = factory(), factory()
    rf = calibrate(folded, batches, CalibrationOptions(mode="fold"))
    ri = calibrate(inserted, batches, CalibrationOptions(mode="insert"))
    flat = [[x for s in r.sites for x in s.scales] for r in (rf, ri)]
    assert flat[0] == pytest.approx(flat[1], rel=1e-6)
    assert any(isinstance(m, EqualizedInput) for m in inserted.modules())
    x = _batches(1, seed=7)[0]
    a, b = _forward_batch_stats(folded, x), _forward_batch_stats(inserted, x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    assert not torch.allclose(a, _forward_batch_stats(factory(), x), rtol=1e-3)  # something changed


def test_later_site_is_measured_after_earlier_fold() -> None:
    model, original = fuse_two_plain(), fuse_two_plain()
    batches = _batches()
    result = calibrate(model, batches, CalibrationOptions(tolerance=1e-9))  # all batches, no early stop
    site2 = result.sites[1]
    assert [s.site.layer for s in result.sites] == ["fuse", "fuse2"]
    after = measure(model, [site2.site], batches, "batch").moments["fuse2"]
    before = measure(original, [site2.site], batches, "batch").moments["fuse2"]
    assert [m.var for m in site2.moments] == pytest.approx([m.var for m in after], rel=1e-9)
    assert site2.moments[0].var != pytest.approx(before[0].var, rel=0.05)


def test_model_state_other_than_fusing_weights_is_untouched() -> None:
    model, original = fuse_two(), fuse_two()
    calibrate(model, _batches())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original.state_dict()[k])}
    assert changed == {"fuse.weight", "fuse2.weight"}  # BN follows both: no bias correction
    assert model.training == original.training


@pytest.mark.parametrize(
    ("factory", "choice", "bn_mode", "expected"),
    [
        (fuse_1x1, "auto", "batch", False),  # BN on batch statistics removes the shift
        (fuse_1x1, "auto", "eval", True),  # BN on running statistics does not
        (fuse_gn, "auto", "batch", True),  # GroupNorm subtracts a mean over channels only
        (fuse_two_plain, "auto", "batch", True),  # nothing follows
        (fuse_1x1, "on", "batch", True),
        (fuse_two_plain, "off", "batch", False),
    ],
)
def test_bias_correction_decision(factory, choice: str, bn_mode: str, expected: bool) -> None:
    result = calibrate(factory(), _batches(6), CalibrationOptions(bias_correction=choice, bn_mode=bn_mode))
    assert result.sites[0].bias_corrected is expected


def test_convergence_stops_early_and_reports_standard_error() -> None:
    model = fuse_1x1()
    batches = _batches(60)
    result = calibrate(model, batches, CalibrationOptions(tolerance=0.02))
    site = result.sites[0]
    assert result.converged and site.std_rel_se < 0.02
    assert 8 * 4 <= site.images < 60 * 4  # at least min_batches=8 batches, fewer than all
    full = measure(fuse_1x1(), [site.site], batches, "batch").moments["fuse"]
    for used, ref in zip(site.moments, full):
        assert abs(used.std / ref.std - 1) < 3 * 0.02
    capped = calibrate(fuse_1x1(), batches, CalibrationOptions(tolerance=1e-6, max_images=20))
    assert capped.sites[0].images == 20 and not capped.converged


def test_zero_variance_skips_the_site_and_never_divides() -> None:
    model = fuse_constant()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(EqSurgeonError, match="zero variance"):
        calibrate(model, _batches(6))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_model_without_sites_is_an_error() -> None:
    with pytest.raises(EqSurgeonError, match="no equalizable fusion site"):
        calibrate(no_sites(), _batches(2))


def test_one_shot_iterator_and_bad_choices() -> None:
    result = calibrate(fuse_1x1(), iter(_batches(6)), CalibrationOptions(tolerance=1e-9))
    assert result.sites[0].images == 24  # the first batch, used for site finding, is measured too
    with pytest.raises(
        ValueError, match=r"^calibrate needs re-iterable batches \(a list or DataLoader\) for several sites$"
    ):
        calibrate(fuse_two(), iter(_batches(6)))
    with pytest.raises(OptionError, match="mode='fuse' is unknown; use fold or insert") as bad_mode:
        calibrate(fuse_1x1(), _batches(2), CalibrationOptions(mode="fuse"))
    assert bad_mode.value.render("--mode ") == "--mode 'fuse' is unknown; use fold or insert"
    with pytest.raises(OptionError, match="tolerance=0 is out of range"):
        calibrate(fuse_1x1(), _batches(2), CalibrationOptions(tolerance=0))


def test_reduce_pools_ranks_and_drives_the_stop() -> None:
    seen: list[int] = []

    def two_identical_ranks(state: MeasureState) -> MeasureState:
        seen.append(state.images)
        pooled = {k: tuple(merge_moments([m, m]) for m in v) for k, v in state.moments.items()}
        return MeasureState(2 * state.images, pooled)

    options = CalibrationOptions(tolerance=1e-9)
    result = calibrate(fuse_1x1(), _batches(10), options, reduce=two_identical_ranks)
    assert seen == [4 * i for i in range(1, 11)] and result.images == 80


def test_merge_moments_is_exact() -> None:
    x = torch.randn(1000, dtype=torch.float64) * 2 + 1
    parts = [Moments(len(c), float(c.mean()), float(c.var(unbiased=False)), 1, 0.1) for c in x.split(300)]
    pooled = merge_moments(parts)
    assert pooled.count == 1000 and pooled.batches == 4
    assert pooled.mean == pytest.approx(float(x.mean()), rel=1e-12)
    assert pooled.var == pytest.approx(float(x.var(unbiased=False)), rel=1e-12)
    assert math.isnan(merge_moments([]).mean)


def test_sites_argument_skips_finding() -> None:
    model = fuse_two()
    sites = find_sites(model, _batches(1)[0])
    result = calibrate(model, _batches(6), sites=sites[:1])
    assert [s.site.layer for s in result.sites] == ["fuse"]


def test_one_pass_batch_moments_match_float64_statistics() -> None:
    from eqsurgeon.measure import batch_moments

    x = torch.randn(4, 16, 33, 33, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.4
    view = x.narrow(1, 3, 7)  # a strided channel slice, as the hooks see it
    ref = view.double()
    expected = [float(ref.mean()), float(ref.var(unbiased=False))]
    assert [float(t) for t in batch_moments(view, one_pass=False)] == pytest.approx(expected, rel=1e-7)
    # the GPU path (float32 Welford) stays far below any tolerance, even with a large offset
    assert [float(t) for t in batch_moments(view, one_pass=True)] == pytest.approx(expected, rel=1e-6)
    far = view + 100.0
    ref = far.double()
    expected = [float(ref.mean()), float(ref.var(unbiased=False))]
    assert [float(t) for t in batch_moments(far, one_pass=True)] == pytest.approx(expected, rel=1e-5)


def test_converged_means_the_95_percent_bound_reached_the_tolerance() -> None:
    """At the image cap σ's point standard error (0.0999) is below the tolerance 0.1, its 95% bound (0.17)
    is not: the pass has not converged, and the record says so. Without the cap it converges at batch 30."""
    from eqsurgeon.calibration import RecordSource, build_record
    from eqsurgeon.records import FusionSite, Subject

    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(40):  # the level varies from image to image, so the standard error falls slowly
        level = torch.randn(2, 1, 1, 1, generator=gen)
        batches.append(level + 0.5 * torch.randn(2, 1, 8, 8, generator=gen))
    site = FusionSite("", "conv2d", 1, (Subject((0, 1), "a"),))
    capped = calibrate(torch.nn.Conv2d(1, 1, 1), batches, CalibrationOptions(tolerance=0.1, max_images=18),
                       sites=[site])  # fmt: skip
    (cal,) = capped.sites
    assert cal.images == 18 and cal.std_rel_se < 0.1 <= cal.std_rel_se_bound
    assert capped.converged is False
    assert build_record(capped, RecordSource("m", "f")).converged is False
    full = calibrate(torch.nn.Conv2d(1, 1, 1), batches, CalibrationOptions(tolerance=0.1), sites=[site])
    assert full.sites[0].images == 60 and full.converged is True
    assert build_record(full, RecordSource("m", "f")).converged is True
    # a bound exactly at the tolerance has not reached it
    at = CalibrationOptions(tolerance=cal.std_rel_se_bound, max_images=18)
    edge = calibrate(torch.nn.Conv2d(1, 1, 1), batches, at, sites=[site])
    assert edge.sites[0].std_rel_se_bound == cal.std_rel_se_bound and edge.converged is False


def test_build_record_writes_every_field_of_the_result_and_its_source() -> None:
    from eqsurgeon import __version__
    from eqsurgeon.calibration import RecordSource, build_record
    from eqsurgeon.records import (
        CalibrationRecord,
        CalibrationResult,
        FusionSite,
        InputRecord,
        SiteCalibration,
        SiteRecord,
        Subject,
        Upsample,
    )

    up = Subject((2, 5), "b.conv", Upsample("bilinear", (2.0, 4.0), False))
    site = FusionSite("head.fuse", "conv2d", 1, (Subject((0, 2), "a.conv"), up))
    moments = (Moments(80, 0.5, 4.0, 5, 0.01), Moments(120, -1.0, 0.25, 5, 0.02))
    ok = SiteCalibration(site, moments, (0.5, 2.0), "ok", None, 20, True, "a note")
    linear = FusionSite("head.mlp", "linear", 1, (Subject((0, 3), "c"), Subject((3, 4), "d")), channel_dim=-1)
    skipped = SiteCalibration(linear, (Moments(9, 1.0, 0.0, 1), Moments(9, 1.0, 1.0, 1)), None, "skipped",
                              "zero variance", 0)  # fmt: skip
    result = CalibrationResult((ok, skipped), "fold", "batch", "on", 0.005, False)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.2, 0.3)
    source = RecordSource("zoo:m", "abc", {"num_classes": 5}, 7, (64, 48), mean, std, 3)
    assert build_record(result, source) == CalibrationRecord(
        model="zoo:m", mode="fold", bn_mode="batch", images=20, data_fingerprint="abc",
        model_kwargs={"num_classes": 5}, bias_correction="on", tolerance=0.005, converged=False, seed=7,
        input_size=(64, 48), image_mean=mean, image_std=std, skipped_files=3,
        tool_version=__version__,
        sites=(
            SiteRecord(
                layer="head.fuse", op="conv2d", groups=1, channel_dim=1, status="ok", reason=None,
                bias_corrected=True, note="a note", std_rel_se=0.02, images=20, var_ratio_before=16.0,
                var_ratio_after=1.0,
                inputs=(
                    InputRecord((0, 2), 0.5, 2.0, 0.5, "a.conv", None),
                    InputRecord((2, 5), -1.0, 0.5, 2.0, "b.conv", "bilinear ×2×4"),
                ),
            ),
            SiteRecord(
                layer="head.mlp", op="linear", groups=1, channel_dim=-1, status="skipped",
                reason="zero variance", bias_corrected=False, note=None, std_rel_se=None, images=None,
                var_ratio_before=None, var_ratio_after=None,
                inputs=(InputRecord((0, 3), 1.0, 0.0, 1.0, "c"), InputRecord((3, 4), 1.0, 1.0, 1.0, "d")),
            ),
        ),
    )  # fmt: skip
    assert build_record(result, source).model_kwargs is not source.model_kwargs  # a copy


def test_progress_reports_every_batch_of_every_site_and_device_moves_batches() -> None:
    from eqsurgeon.records import Progress

    seen: list[Progress] = []
    options = CalibrationOptions(tolerance=1e-9, max_images=8)
    result = calibrate(fuse_two(), _batches(3), options, progress=seen.append, device="cpu")
    assert [(p.site, p.sites, p.layer, p.images, p.max_images) for p in seen] == [
        (0, 2, "fuse", 4, 8), (0, 2, "fuse", 8, 8), (1, 2, "fuse2", 4, 8), (1, 2, "fuse2", 8, 8),
    ]  # fmt: skip
    assert seen[0].std_rel_se_bound == math.inf  # one batch: no estimate yet
    assert [seen[1].std_rel_se_bound, seen[3].std_rel_se_bound] == [s.std_rel_se_bound for s in result.sites]
    plain = calibrate(fuse_two(), _batches(3), options)
    assert [s.scales for s in plain.sites] == [s.scales for s in result.sites]


class _OneUnused(torch.nn.Module):
    """``a`` runs, ``unused`` never does: its site is found by hand, as a stale site list would hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(4, 2, 1)
        self.unused = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


def _two_input_site(layer: str) -> FusionSite:
    from eqsurgeon.records import Subject

    return FusionSite(layer, "conv2d", 1, (Subject((0, 2), "x"), Subject((2, 4), "y")))


@pytest.mark.parametrize("mode", ["fold", "insert"])
def test_each_site_result_keeps_its_site_moments_images_and_reason(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 4, 3, 3, generator=gen) * torch.tensor([1.0, 1.0, 3.0, 3.0]).view(1, 4, 1, 1)
               for _ in range(3)]  # fmt: skip
    sites = [_two_input_site("a"), _two_input_site("unused")]
    result = calibrate(_OneUnused(), batches, CalibrationOptions(mode=mode, min_batches=100), sites=sites)
    ran, unused = result.sites
    assert (ran.site, ran.status, ran.reason, ran.images, len(ran.moments)) == (sites[0], "ok", None, 6, 2)
    assert ran.scales is not None and ran.scales[1] < ran.scales[0]
    assert (unused.site, unused.status, unused.scales, unused.images) == (sites[1], "skipped", None, 6)
    assert unused.reason == "the layer never ran on the images"
    assert [m.count for m in unused.moments] == [0, 0]


def test_a_site_measured_on_one_element_is_judged_by_its_variance_not_skipped_as_never_run() -> None:
    from eqsurgeon.records import Subject

    site = FusionSite("", "linear", 1, (Subject((0, 1), "x"), Subject((1, 2), "y")), channel_dim=-1)
    with pytest.raises(EqSurgeonError, match="zero variance") as err:
        calibrate(torch.nn.Linear(2, 1), [torch.tensor([[1.0, 2.0]])], sites=[site])
    assert "never ran" not in str(err.value)


def test_a_skipped_site_keeps_its_moments_and_the_others_are_equalized() -> None:
    from fixtures.calibration import fuse_constant_two

    result = calibrate(fuse_constant_two(), _batches(4), CalibrationOptions(min_batches=100))
    skipped, ok = result.sites
    assert (skipped.status, skipped.scales, skipped.images, ok.status) == ("skipped", None, 16, "ok")
    assert "zero variance" in skipped.reason and len(skipped.moments) == 3
    assert all(m.count > 0 for m in skipped.moments)


def test_the_site_note_says_why_the_means_were_not_folded() -> None:
    from fixtures.calibration import fuse_1x1

    opts = {"min_batches": 100}
    off = calibrate(fuse_1x1(), _batches(2), CalibrationOptions(bias_correction="off", **opts)).sites[0]
    assert (off.bias_corrected, off.note) == (False, "bias_correction=off")
    on = calibrate(fuse_1x1(), _batches(2), CalibrationOptions(bias_correction="on", **opts)).sites[0]
    assert (on.bias_corrected, on.note) == (True, None)
    bare = fuse_1x1()
    bare.fuse.bias = None
    none = calibrate(bare, _batches(2), CalibrationOptions(bias_correction="on", **opts)).sites[0]
    assert (none.bias_corrected, none.note) == (
        False,
        "layer has no bias (adding one would change the state-dict keys); means not folded",
    )


@pytest.mark.parametrize("name", ["bias_correction", "bn_mode"])
def test_a_bad_choice_names_its_option(name: str) -> None:
    with pytest.raises(OptionError, match=rf"^{name}='x' is unknown; use "):
        CalibrationOptions(**{name: "x"})


def test_calibrate_says_what_is_missing_in_whole_lines() -> None:
    from eqsurgeon.errors import CaptureError
    from fixtures.calibration import fuse_1x1

    with pytest.raises(EqSurgeonError, match=r"^no batch to calibrate on; pass --data a folder with images$"):
        calibrate(fuse_1x1(), [])
    with pytest.raises(EqSurgeonError) as err:
        calibrate(no_sites(), _batches(1))
    assert str(err.value) == (
        "the model has no equalizable fusion site (upsample → concat → conv); nothing to calibrate — "
        "run `eqsurgeon analyze` to see what was found"
    )
    with pytest.raises(CaptureError, match="unknown frontend 'nope'"):  # the frontend reaches find_sites
        calibrate(fuse_1x1(), _batches(1), CalibrationOptions(frontend="nope"))
    with pytest.raises(OptionError, match=r"^tolerance=1 is out of range; it must be above 0 and below 1$"):
        CalibrationOptions(tolerance=1)


def test_the_result_keeps_the_options_and_every_site_given_skipped_ones_included() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 4, 3, 3, generator=gen) for _ in range(3)]
    functional = FusionSite("f", "conv2d", 1, (), status="skipped", reason="a functional conv")
    sites = [_two_input_site("a"), functional]
    opts = CalibrationOptions(bias_correction="off", tolerance=0.5, min_batches=100, bn_mode="eval")
    result = calibrate(_OneUnused(), batches, opts, sites=sites)
    assert (result.mode, result.bn_mode) == ("fold", "eval")
    assert (result.bias_correction, result.tolerance) == ("off", 0.5)
    assert [s.site for s in result.sites] == sites
    skipped = result.sites[1]
    assert (skipped.moments, skipped.scales, skipped.status) == ((), None, "skipped")
    assert skipped.reason == "a functional conv"
    with pytest.raises(EqSurgeonError) as err:
        calibrate(_OneUnused(), batches, opts, sites=[_two_input_site("unused"), functional])
    assert str(err.value) == (
        "no site could be equalized (unused: the layer never ran on the images; f: a functional conv); "
        "check the model and the images"
    )


def test_calibrate_measures_under_the_autocast_dtype_it_is_given() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 4, 3, 3, generator=gen) for _ in range(2)]
    model = _OneUnused()
    model.a = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 2, 1))
    seen: list[torch.dtype] = []
    model.a[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    opts = CalibrationOptions(autocast_dtype=torch.float16, bias_correction="off", min_batches=100)
    calibrate(model, batches, opts, sites=[_two_input_site("a.1")])
    assert seen == [torch.float16, torch.float16]  # not CPU autocast's default bfloat16, nor float32


@pytest.mark.parametrize("name", ["min_batches", "max_images"])
def test_counts_must_be_positive_and_their_errors_name_them(name: str) -> None:
    with pytest.raises(OptionError, match=rf"^{name}=0 is out of range; it must be above 0$"):
        CalibrationOptions(**{name: 0})
    assert getattr(CalibrationOptions(**{name: 1}), name) == 1
