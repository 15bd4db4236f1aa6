"""Moments: float64 streaming math, BN modes, and agreement with the theory in DESIGN.md."""

import math

import pytest
import torch
from torch import nn

from eqsurgeon.measure import (
    MeasureState,
    MomentHooks,
    PassOptions,
    StopRule,
    batch_moments,
    ddp_reduce,
    hooks,
    measure,
    measure_until,
    measuring_mode,
    merge_moments,
    resolve_bn_mode,
)
from eqsurgeon.measure.hooks import _low_precision_moments, _partial_moments
from eqsurgeon.records import FusionSite, Moments, Subject
from eqsurgeon.sites import find_sites
from fixtures.models import iid_pyramid

RELU_MEAN = 1 / math.sqrt(2 * math.pi)
RELU_VAR = (math.pi - 1) / (2 * math.pi)


def _site(*widths, layer=""):
    subjects, start = [], 0
    for w in widths:
        subjects.append(Subject((start, start + w), f"s{start}"))
        start += w
    return FusionSite(layer, "conv2d", 1, tuple(subjects))


def test_streamed_moments_equal_direct_float64_statistics():
    conv = nn.Conv2d(5, 1, 1)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(3, 5, 4, 6, generator=gen) * (i + 1) + i for i in range(4)]
    m = measure(conv, [_site(2, 3)], batches).moments[""]
    everything = torch.cat(batches).double()
    for moments, part in zip(m, (everything[:, :2], everything[:, 2:])):
        assert moments.count == part.numel()
        # float32 partial sums over each plane, added in float64 (hooks.batch_moments): ~1e-7 or better
        assert moments.mean == pytest.approx(part.mean().item(), rel=1e-7)
        assert moments.var == pytest.approx(part.var(unbiased=False).item(), rel=1e-6)
        assert moments.batches == 4


def test_channels_last_subjects_are_sliced_on_the_last_dim():
    lin = nn.Linear(3, 2)
    x = torch.cat([torch.zeros(2, 4, 1), torch.ones(2, 4, 2) * 3], dim=-1)
    site = FusionSite("", "linear", 1, (Subject((0, 1), "a"), Subject((1, 3), "b")), channel_dim=-1)
    a, b = measure(lin, [site], [x]).moments[""]
    assert (a.mean, b.mean, b.count) == (0.0, 3.0, 16)


def test_std_standard_error_shrinks_with_batches():
    conv = nn.Conv2d(1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    few = measure(conv, [_site(1)], [torch.randn(1, 1, 8, 8, generator=gen) for _ in range(3)])
    many = measure(conv, [_site(1)], [torch.randn(1, 1, 8, 8, generator=gen) for _ in range(48)])
    assert math.isfinite(few.moments[""][0].std_rel_se)
    assert many.moments[""][0].std_rel_se < few.moments[""][0].std_rel_se
    single = measure(conv, [_site(1)], [torch.randn(1, 1, 8, 8)])
    assert single.moments[""][0].std_rel_se == math.inf


def test_std_standard_error_matches_the_spread_of_repeated_estimates():
    """Each batch is one image that is nearly constant (a pyramid-pooling branch upsampled from 1×1):
    σ varies mostly between images, not within a batch. The reported standard error must match how
    much σ really varies from one folder of such images to the next (a spread of per-batch stds alone
    would report about a tenth of it)."""
    conv = nn.Conv2d(1, 1, 1)
    gen = torch.Generator().manual_seed(3)
    stds, ses = [], []
    for _ in range(300):
        level = torch.randn(24, generator=gen)  # one value per image, then a little pixel noise
        images = [lv + 0.2 * torch.randn(1, 1, 8, 8, generator=gen) for lv in level]
        m = measure(conv, [_site(1)], images).moments[""][0]
        stds.append(m.std)
        ses.append(m.std_rel_se)
    stds = torch.tensor(stds, dtype=torch.float64)
    observed = (stds.std() / stds.mean()).item()
    predicted = torch.tensor(ses).median().item()
    assert predicted == pytest.approx(observed, rel=0.2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("one_pass", [False, True])
def test_batch_moments_of_autocast_dtypes_match_float64(dtype, one_pass):
    """Under autocast the fusing layer's input is float16/bfloat16; its moments are still accumulated
    in float32 or better, on a channel slice (a strided view)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 6, 16, 16, generator=gen) * 0.7 + 0.5).relu().to(dtype)[:, 2:5]
    exact = x.double()
    mean, var = batch_moments(x, one_pass=one_pass)
    assert mean.dtype == var.dtype == torch.float64
    assert mean.item() == pytest.approx(exact.mean().item(), rel=1e-5)
    assert var.item() == pytest.approx(exact.var(unbiased=False).item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_moments_read_the_slice_in_its_own_dtype(dtype):
    """The CUDA path for autocast inputs (run here on a small CPU tensor, where it is exact enough)."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 8, 12, 12, generator=gen) + 0.3).to(dtype)[:, 3:7]
    mean, var = _low_precision_moments(x)
    assert mean.item() == pytest.approx(x.double().mean().item(), rel=1e-5)
    assert var.item() == pytest.approx(x.double().var(unbiased=False).item(), rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_moments_on_cuda_need_no_float32_copy():
    x = (torch.randn(8, 1024, 64, 64, device="cuda") * 0.7 + 0.5).relu().bfloat16()[:, 256:768]
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    mean, var = batch_moments(x, one_pass=True)
    assert torch.cuda.max_memory_allocated() - base < x.numel()  # a float32 copy takes 4 bytes each
    exact = x.double()
    assert mean.item() == pytest.approx(exact.mean().item(), rel=1e-5)
    assert var.item() == pytest.approx(exact.var(unbiased=False).item(), rel=1e-4)


@pytest.mark.parametrize("autotune", [True, False])
def test_measuring_mode_pauses_cudnn_autotuning_and_restores_it(autotune, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", autotune)
    conv = nn.Conv2d(2, 1, 1)
    with pytest.raises(RuntimeError), measuring_mode(conv):
        assert torch.backends.cudnn.benchmark is False
        raise RuntimeError("a failing measuring pass")
    assert torch.backends.cudnn.benchmark is autotune


def test_hooks_are_removed_on_exit():
    conv = nn.Conv2d(2, 1, 1)
    with MomentHooks(conv, [_site(1, 1)]):
        assert len(conv._forward_pre_hooks) == 1
    assert len(conv._forward_pre_hooks) == 0


def test_bn_mode_auto_follows_whether_bn_has_seen_data():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert resolve_bn_mode(model) == "batch"
    model.train()(torch.randn(2, 3, 4, 4))
    assert resolve_bn_mode(model) == "eval"
    assert resolve_bn_mode(model, "batch") == "batch"
    assert resolve_bn_mode(nn.Conv2d(1, 1, 1)) == "eval"
    with pytest.raises(ValueError, match="bn_mode='train' is unknown"):
        resolve_bn_mode(model, "train")


def test_measuring_mode_uses_batch_statistics_without_touching_buffers():
    bn = nn.BatchNorm2d(2).eval()
    drop = nn.Dropout(0.9)
    model = nn.Sequential(bn, drop)
    x = torch.randn(4, 2, 3, 3) * 5 + 3
    with measuring_mode(model, "batch") as mode, torch.no_grad():
        y = model(x)
        assert mode == "batch" and bn.training and not drop.training
    assert y.mean().abs() < 1e-5  # normalized by batch statistics, no dropout
    assert torch.equal(bn.running_mean, torch.zeros(2)) and int(bn.num_batches_tracked) == 0
    assert not bn.training and drop.training  # both flags back to what they were


def test_statistics_match_theory_for_iid_upsampled_maps():
    """DESIGN.md: ReLU(N(0,1)) has mean 0.399, var 0.341; ×r bilinear multiplies var by ((4r²−1)/(6r²))²."""
    model = iid_pyramid(channels=16)
    x = torch.randn(4, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    (site,) = find_sites(model, x)
    moments = measure(model, [site], [x], bn_mode="auto").moments["fuse"]
    for m in moments:
        assert m.mean == pytest.approx(RELU_MEAN, abs=0.01)
    assert moments[0].var == pytest.approx(RELU_VAR, abs=0.01)
    for m, r in zip(moments[1:], (2, 4, 8)):
        expected = RELU_VAR * ((4 * r * r - 1) / (6 * r * r)) ** 2
        assert m.var == pytest.approx(expected, rel=0.05), (r, m.var, expected)


def _image_level_batches(count: int = 40, seed: int = 0) -> list[torch.Tensor]:
    """Batches of two 8×8 one-channel images whose level varies from image to image (σ's standard error
    falls slowly, as for a pyramid-pooling branch)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, 1, 1, 1, generator=gen) + 0.5 * torch.randn(2, 1, 8, 8, generator=gen)
        for _ in range(count)
    ]


def test_stop_rule_stops_on_the_95_percent_bound_not_on_the_point_estimate():
    conv = nn.Conv2d(1, 1, 1)
    batches = _image_level_batches()
    bounds: list[float] = []
    options = PassOptions(progress=lambda images, bound: bounds.append(bound))
    (m,), images, mode = measure_until(conv, _site(1), batches, StopRule(0.1, min_batches=8), options)
    used = images // 2
    assert mode == "eval" and images == 2 * len(bounds) == 2 * m.batches
    assert m.std_rel_se_bound < 0.1 and bounds[-1] == m.std_rel_se_bound
    assert all(b >= 0.1 for b in bounds[:-1])  # it stopped at the first batch whose bound is below
    assert m == measure(conv, [_site(1)], batches[:used]).moments[""][0]
    # The point estimate was below the tolerance from the 8th batch on: a rule on it stops 20 batches early.
    early = measure(conv, [_site(1)], batches[:8]).moments[""][0]
    assert early.std_rel_se < 0.1 <= early.std_rel_se_bound and used > 20


def test_stop_rule_counts_min_batches_and_max_images_inclusively():
    sure = Moments(100, 0.0, 1.0, 8, 1e-6)  # bound far below any tolerance
    rule = StopRule(0.01, min_batches=8, max_images=40)
    assert rule.done((sure,), 16)
    assert not rule.done((sure, Moments(100, 0.0, 1.0, 7, 1e-6)), 16)  # one input has too few batches
    assert not rule.done((Moments(100, 0.0, 1.0, 8, 0.008),), 16)  # 0.008 < 0.01, but its bound is 0.0144
    assert rule.done((Moments(100, 0.0, 1.0, 8, 0.008),), 40)  # the image cap stops it anyway
    assert not rule.done((Moments(100, 0.0, 1.0, 8, 0.008),), 39)
    assert not StopRule(0.01, min_batches=8).done((), 10**9)  # no moments yet: nothing has converged


class _PooledBranch(nn.Module):
    """A pyramid-pooling branch (pool to 1×1 → conv → BN) upsampled and fused: BN on batch statistics
    cannot normalize one image."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.fuse = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = nn.functional.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear")
        return self.fuse(torch.cat([self.a(x), p], 1))


def _one_image_tail() -> tuple[nn.Module, list[torch.Tensor], FusionSite]:
    # a PPM-like branch (BN after global pooling) and batches of 2 ending in one of a single image
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 3, 8, 8, generator=gen) for n in (2, 2, 2, 2, 1)]
    site = FusionSite("fuse", "conv2d", 1, (Subject((0, 4), "a"), Subject((4, 8), "pool")))
    return _PooledBranch(), batches, site


@pytest.mark.parametrize(("bn_mode", "images", "measured"), [("batch", 8, 4), ("eval", 9, 5)])
def test_a_one_image_last_batch_is_skipped_under_batch_statistics(bn_mode, images, measured):
    model, batches, site = _one_image_tail()
    moments, seen, mode = measure_until(model, site, batches, StopRule(1e-9), PassOptions(bn_mode=bn_mode))
    assert (mode, seen) == (bn_mode, images)
    assert [m.batches for m in moments] == [measured] * 2
    with pytest.raises(ValueError, match="more than 1 value per channel"), measuring_mode(model, "batch"):
        model(batches[-1])  # what the skipped batch would have done


@pytest.mark.parametrize(("bn_mode", "images", "measured"), [("batch", 8, 4), ("eval", 9, 5)])
def test_measure_skips_a_one_image_last_batch_under_batch_statistics(bn_mode, images, measured):
    model, batches, site = _one_image_tail()
    result = measure(model, [site], batches, bn_mode=bn_mode)
    assert (result.bn_mode, result.images) == (bn_mode, images)
    assert [m.batches for m in result.moments["fuse"]] == [measured] * 2


def test_pooled_standard_error_weights_ranks_by_batches():
    a, b = Moments(40, 1.0, 2.0, 2, 0.2), Moments(60, 1.0, 2.0, 6, 0.1)  # counts not in proportion
    # sqrt((2·0.2)² + (6·0.1)²) / 8: each rank's relative error, weighted by its share of the batches
    assert merge_moments([a, b]).std_rel_se == pytest.approx(math.sqrt(0.4**2 + 0.6**2) / 8, rel=1e-12)
    assert merge_moments([a, a]).std_rel_se == pytest.approx(0.2 / math.sqrt(2), rel=1e-12)
    assert merge_moments([a]).std_rel_se == pytest.approx(0.2, rel=1e-12)
    assert merge_moments([a, Moments(40, 1.0, 2.0, 1)]).std_rel_se == math.inf  # one rank has no estimate
    assert merge_moments([Moments(0, math.nan, math.nan, 0), a]) == merge_moments([a])  # an idle rank


def test_pooled_standard_error_matches_one_process_measuring_everything():
    """Two ranks measure alternate batches; their pooled σ standard error is close to the one a single
    process gets from all batches (what the stopping rule compares with the tolerance)."""
    conv = nn.Conv2d(1, 1, 1)
    batches = _image_level_batches(80, seed=5)
    whole = measure(conv, [_site(1)], batches).moments[""][0]
    ranks = [measure(conv, [_site(1)], batches[r::2]).moments[""][0] for r in (0, 1)]
    pooled = merge_moments(ranks)
    assert (pooled.count, pooled.batches) == (whole.count, whole.batches)
    assert pooled.var == pytest.approx(whole.var, rel=1e-12)
    assert pooled.std_rel_se == pytest.approx(whole.std_rel_se, rel=0.15)
    assert pooled.std_rel_se < min(r.std_rel_se for r in ranks)  # pooling two ranks narrows it


def test_ddp_reduce_pools_every_ranks_state(monkeypatch):
    import torch.distributed as dist

    mine = MeasureState(4, {"fuse": (Moments(10, 0.0, 1.0, 2, 0.1), Moments(10, 1.0, 4.0, 2, 0.2))})
    other = MeasureState(6, {"fuse": (Moments(30, 2.0, 1.0, 3, 0.3), Moments(30, 1.0, 1.0, 3, 0.1))})

    def all_gather_object(out: list, obj: object) -> None:
        assert obj is mine
        out[:] = [mine, other]

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    pooled = ddp_reduce(mine)
    assert pooled.images == 10
    for i, m in enumerate(pooled.moments["fuse"]):
        assert m == merge_moments([mine.moments["fuse"][i], other.moments["fuse"][i]])
    assert pooled.moments["fuse"][0].mean == pytest.approx(1.5)


def test_ddp_reduce_is_the_identity_without_a_process_group():
    state = MeasureState(4, {"fuse": (Moments(10, 0.0, 1.0, 2, 0.1),)})
    assert ddp_reduce(state) is state


@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
def test_measure_counts_images_and_reports_the_bn_mode(bn_mode):
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 1, 1))
    batches = [torch.randn(n, 2, 4, 4) for n in (3, 2, 4)]
    result = measure(model, [FusionSite("1", "conv2d", 1, (Subject((0, 2), "a"),))], batches, bn_mode)
    assert (result.images, result.bn_mode) == (9, bn_mode)
    assert result.moments["1"][0].batches == 3 and result.moments["1"][0].count == 9 * 2 * 16
    assert measure(model, [], []).images == 0 and measure(nn.Conv2d(2, 1, 1), [], []).bn_mode == "eval"


def test_merging_keeps_single_element_parts_and_drops_empty_ones():
    one, many = Moments(1, 5.0, 0.0, 1), Moments(3, 1.0, 2.0, 1)
    pooled = merge_moments([one, many, Moments(0, math.nan, math.nan, 0)])
    assert (pooled.count, pooled.batches, pooled.mean) == (4, 2, 2.0)
    assert pooled.var == pytest.approx((0.0 + 3 * 2.0 + 1 * 9.0 + 3 * 1.0) / 4)
    empty = merge_moments([Moments(0, math.nan, math.nan, 0)])
    assert (empty.count, empty.batches, empty.std_rel_se) == (0, 0, math.inf)
    assert math.isnan(empty.mean) and math.isnan(empty.var)


def test_bn_mode_auto_counts_a_bn_as_fresh_only_when_both_buffers_are_at_init():
    assert resolve_bn_mode(nn.BatchNorm2d(2, track_running_stats=False)) == "eval"  # no buffers to judge
    moved_var, moved_mean = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
    moved_var.running_var.fill_(2.0)  # the mean is still 0: it has seen data all the same
    moved_mean.running_mean.fill_(0.1)
    assert resolve_bn_mode(moved_var) == resolve_bn_mode(moved_mean) == "eval"
    assert resolve_bn_mode(nn.Sequential(moved_var, nn.BatchNorm2d(2))) == "batch"  # one fresh BN suffices


def test_a_one_image_batch_anywhere_is_skipped_and_the_rest_measured():
    torch.manual_seed(0)
    model = _PooledBranch()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 3, 8, 8, generator=gen) for n in (2, 1, 2, 2)]
    site = FusionSite("fuse", "conv2d", 1, (Subject((0, 4), "a"), Subject((4, 8), "pool")))
    result = measure(model, [site], batches, bn_mode="batch")
    assert result.images == 6 and result.moments["fuse"][0].batches == 3
    moments, seen, _ = measure_until(model, site, batches, StopRule(1e-9), PassOptions(bn_mode="batch"))
    assert seen == 6 and moments[0].batches == 3


def test_a_pass_that_measures_nothing_returns_no_moments_and_no_images():
    model = _PooledBranch()
    site = FusionSite("fuse", "conv2d", 1, (Subject((0, 4), "a"), Subject((4, 8), "pool")))
    one = [torch.randn(1, 3, 8, 8)]  # BN on batch statistics skips it
    assert measure_until(model, site, one, StopRule(0.1), PassOptions(bn_mode="batch")) == ((), 0, "batch")
    assert measure_until(model, site, [], StopRule(0.1), PassOptions(bn_mode="eval")) == ((), 0, "eval")
    with MomentHooks(model, [site]) as hooks:  # hooked, never run
        unseen = hooks.moments()["fuse"][0]
    assert (unseen.count, unseen.batches, unseen.std_rel_se) == (0, 0, math.inf)
    assert math.isnan(unseen.mean) and math.isnan(unseen.var)


def test_measure_step_runs_the_forward_under_the_requested_autocast_dtype():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 1, 1))
    seen: list[torch.dtype] = []
    model[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    site = FusionSite("1", "conv2d", 1, (Subject((0, 2), "a"),))
    batches = [torch.randn(2, 2, 4, 4) for _ in range(2)]
    measure_until(model, site, batches, StopRule(1e-9), PassOptions(autocast_dtype=torch.float16))
    measure_until(model, site, batches[:1], StopRule(1e-9), PassOptions())
    assert seen == [torch.float16, torch.float16, torch.float32]  # float16, not CPU autocast's bfloat16


def test_a_single_element_slice_counts_and_two_batches_give_a_standard_error():
    conv = nn.Conv2d(2, 1, 1)
    site = _site(1, 1)
    one = measure(conv, [site], [torch.tensor([[[[3.0]], [[5.0]]]])]).moments[""]
    assert [(m.count, m.mean, m.var) for m in one] == [(1, 3.0, 0.0), (1, 5.0, 0.0)]
    two = measure(conv, [_site(2)], [torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4) * 2]).moments[""][0]
    assert two.batches == 2 and math.isfinite(two.std_rel_se) and two.std_rel_se > 0


def test_the_stop_rule_needs_the_bound_strictly_below_the_tolerance():
    m = Moments(100, 0.0, 1.0, 8, 0.005)
    assert not StopRule(m.std_rel_se_bound, min_batches=8).done((m,), 16)
    assert StopRule(m.std_rel_se_bound * (1 + 1e-9), min_batches=8).done((m,), 16)


def test_a_bn_with_only_one_running_buffer_is_not_fresh():
    bn = nn.BatchNorm2d(2)
    bn.running_var = None  # a custom norm layer may keep only the mean
    assert resolve_bn_mode(bn) == "eval"


def test_std_standard_error_of_equal_batches_is_the_textbook_standard_error_of_a_mean():
    """With equal batches the delta method reduces to stdev(c_b)/√b over each batch's second moment about
    the global mean, c_b = var_b + (mean_b − mean)², halved and taken relative to σ²."""
    import statistics

    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(2, 1, 4, 4, generator=gen) * (1 + i) + 0.3 * i for i in range(3)]
    m = measure(nn.Conv2d(1, 1, 1), [_site(1)], batches).moments[""][0]
    flat = [b.double().flatten() for b in batches]
    mean = float(torch.cat(flat).mean())
    c = [float(f.var(unbiased=False)) + (float(f.mean()) - mean) ** 2 for f in flat]
    expected = statistics.stdev(c) / math.sqrt(3) / (2 * statistics.fmean(c))
    assert m.std_rel_se == pytest.approx(expected, rel=1e-6)


def test_one_batch_has_exactly_its_own_mean():
    x = torch.full((1, 1, 2, 5), 0.1) + torch.arange(10.0).reshape(1, 1, 2, 5) * 1e-3
    m = measure(nn.Conv2d(1, 1, 1), [_site(1)], [x]).moments[""][0]
    assert m.mean == float(batch_moments(x)[0])  # the first batch is merged into nothing, not into 1.0


def test_a_low_precision_cpu_tensor_is_summed_in_float32_or_better():
    x = (torch.randn(256, 256, generator=torch.Generator().manual_seed(1)) + 3).to(torch.bfloat16)
    ref = x.double()
    for one_pass in (False, True):
        mean, var = batch_moments(x, one_pass=one_pass)  # the float32-norm path is for CUDA only
        assert float(mean) == pytest.approx(float(ref.mean()), rel=1e-6)
        assert float(var) == pytest.approx(float(ref.var(unbiased=False)), rel=1e-5)


def test_cpu_moments_of_a_far_offset_fall_back_to_float64_sums():
    """mean²/var = 1e10: float32 partial sums would cancel to noise; the exact float64 sums are used."""
    far = 1000 + torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.01
    ref = far.double()
    mean, var = batch_moments(far)
    assert float(mean) == pytest.approx(float(ref.mean()), rel=1e-12)
    assert float(var) == pytest.approx(float(ref.var(unbiased=False)), rel=1e-9)
    _, fast_var = _partial_moments(far)
    assert abs(float(fast_var) / float(ref.var(unbiased=False)) - 1) > 1e-3  # what the fallback avoids


@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (3, 10, 6), (5, 7), (9,)])
def test_partial_sums_give_the_moments_of_any_layout(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4)) * 1.5 + 0.5
    ref = x.double()
    mean, var = _partial_moments(x)
    assert float(mean) == pytest.approx(float(ref.mean()), rel=1e-6)
    assert float(var) == pytest.approx(float(ref.var(unbiased=False)), rel=1e-6)


def test_the_offset_test_sits_at_mean_squared_over_var_25():
    assert not hooks._cancels(4.99, 1.0) and hooks._cancels(5.01, 1.0)
    assert not hooks._cancels(-0.499, 0.01) and hooks._cancels(-0.501, 0.01)
    assert not hooks._cancels(0.0, 0.0)  # a constant zero: nothing to cancel


@pytest.mark.parametrize("cancels", [False, True])
def test_the_exact_float64_moments_are_used_exactly_when_the_sums_cancel(cancels, monkeypatch):
    far = 1000 + torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.01
    ref = far.double().var(unbiased=False)
    monkeypatch.setattr(hooks, "_cancels", lambda mean, var: cancels)
    _, var = batch_moments(far)
    assert (abs(float(var) / float(ref) - 1) < 1e-9) == cancels


def test_cpu_moments_below_the_far_ratio_come_from_partial_sums(monkeypatch):
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.1 + 0.3  # mean²/var 9
    ref = x.double()
    calls = []
    monkeypatch.setattr(hooks, "_partial_moments", lambda t: calls.append(t) or _partial_moments(t))
    mean, var = batch_moments(x)
    assert len(calls) == 1
    assert float(mean) == pytest.approx(float(ref.mean()), rel=1e-7)
    assert float(var) == pytest.approx(float(ref.var(unbiased=False)), rel=1e-6)
