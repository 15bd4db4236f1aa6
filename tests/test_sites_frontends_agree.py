"""torch.fx and torch.export find the same sites, to the rule rather than to the spelling.

Symbolic tracing records calls as the model writes them (keywords, ``torch.ops`` packets, tensor
methods); torch.export normalizes them to positional ATen overloads. Each case here is written in a
spelling the two frontends record differently, and both must report the exact same sites.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon.api import MeasureOptions, analyze
from eqsurgeon.calibration import CalibrationOptions, calibrate
from eqsurgeon.capture import capture
from eqsurgeon.measure import measuring_mode
from eqsurgeon.records import Upsample
from eqsurgeon.sites import Findings, find

BI2 = Upsample("bilinear", (2.0, 2.0), False)
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def both(model: nn.Module, x: torch.Tensor = X, keep: str = "export") -> Findings:
    """The findings of both frontends, asserted equal on everything but node names; returns ``keep``'s."""
    fx_found, ex_found = (find(capture(model, x, fe), model) for fe in ("fx", "export"))
    assert _sites(fx_found) == _sites(ex_found)
    assert _adds(fx_found) == _adds(ex_found)
    return fx_found if keep == "fx" else ex_found


def _sites(found: Findings) -> list[tuple[object, ...]]:
    return [
        (s.layer, s.status, s.channel_dim, [(sub.channels, sub.upsample) for sub in s.subjects])
        for s in found.sites
    ]


def _adds(found: Findings) -> list[list[tuple[object, ...]]]:
    return [[(sub.channels, sub.upsample) for sub in a.inputs] for a in found.add_sites]


class Fuse(nn.Module):
    """cat([a(x) 4 ch, up(b(x)) 6 ch], 1) → ``feed`` → ``fuse``; ``feed`` chooses how fuse is called."""

    def __init__(self, fuse: nn.Module, feed: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.fuse = fuse
        self.feed = feed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")
        return self.feed(self.fuse, torch.cat([self.a(x), up], 1))


class NamedLinear(nn.Linear):
    """A Linear subclass whose forward names its input ``feature``, as timm/HF layers often do."""

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return super().forward(feature)


class NamedConv(nn.Conv2d):
    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return super().forward(x) * scale


KEYWORD = [
    ("conv(input=)", lambda: nn.Conv2d(10, 2, 3, padding=1), lambda f, t: f(input=t), 1),
    ("subclass(x=, scale=)", lambda: NamedConv(10, 2, 1), lambda f, t: f(scale=0.5, x=t), 1),
    ("linear(feature=)", lambda: NamedLinear(10, 2), lambda f, t: f(feature=t.permute(0, 2, 3, 1)), -1),
]


@pytest.mark.parametrize(("name", "make", "feed", "channel_dim"), KEYWORD, ids=[k[0] for k in KEYWORD])
def test_keyword_input_to_the_fusing_layer_is_a_site_and_is_measured(name, make, feed, channel_dim):
    torch.manual_seed(0)
    model = Fuse(make(), feed)
    found = both(model)
    assert _sites(found) == [("fuse", "ok", channel_dim, [((0, 4), None), ((4, 10), BI2)])]
    for frontend in ("fx", "export"):
        analysis = analyze(model, [X, X * 2], measure=MeasureOptions(frontend=frontend)).analysis
        assert [m.count for m in analysis.moments["fuse"]] == [2 * 2 * 4 * 64, 2 * 2 * 6 * 64]


@pytest.mark.parametrize(("name", "make", "feed", "channel_dim"), KEYWORD, ids=[k[0] for k in KEYWORD])
def test_fold_equals_insert_when_the_layer_takes_its_input_by_keyword(name, make, feed, channel_dim):
    torch.manual_seed(0)
    folded = Fuse(make(), feed)
    inserted = copy.deepcopy(folded)
    batches = [X * (i + 1) for i in range(3)]
    calibrate(folded, batches, CalibrationOptions(mode="fold", frontend="fx"))
    calibrate(inserted, batches, CalibrationOptions(mode="insert", frontend="fx"))
    with measuring_mode(folded, "batch"), measuring_mode(inserted, "batch"), torch.no_grad():
        a, b = folded(X), inserted(X)
    a, b = (t[..., 1:-1, 1:-1] if name == "conv(input=)" else t for t in (a, b))  # zero padding: border
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class KeywordMerge(nn.Module):
    """An upsampled map merged by addition, the add written with keywords only."""

    def __init__(self, merge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 2, stride=2)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(self.a(x), F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear"))


MERGES = [
    ("torch.sum(input=stack, dim=0)", lambda a, up: torch.sum(input=torch.stack([a, up]), dim=0)),
    ("sum(input=stack(tensors=), dim=0)", lambda a, up: torch.sum(input=torch.stack(tensors=[a, up]), dim=0)),
    ("torch.add(input=, other=)", lambda a, up: torch.add(input=a, other=up)),
    ("torch.add(a, other=)", lambda a, up: torch.add(a, other=up)),
]


@pytest.mark.parametrize(("name", "merge"), MERGES, ids=[m[0] for m in MERGES])
def test_keyword_only_merges_are_add_sites(name, merge):
    assert _adds(both(KeywordMerge(merge))) == [[((0, 4), None), ((0, 4), BI2)]]


class PacketPad(nn.Module):
    """Calls ATen through overload packets (no ``.default``), as code ported from C++ often does."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.fuse = nn.Conv2d(10, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = torch.ops.aten.upsample_nearest2d(self.b(x), [8, 8])
        fused = torch.ops.aten.cat([self.a(x), up], 1)
        return self.fuse(torch.ops.aten.reflection_pad2d(fused, [1, 1, 1, 1]))


def test_overload_packets_called_directly_are_read_like_overloads():
    nearest = Upsample("nearest", (2.0, 2.0), None)
    assert _sites(both(PacketPad())) == [("fuse", "ok", 1, [((0, 4), None), ((4, 10), nearest)])]


class Branches(nn.Module):
    """cat([a(x) 4 ch, ``branch``(x) 6 ch], 1) → ``between`` → 1×1 ``fuse``; ``pool`` is a 1×1 conv on a
    globally pooled map (the image-pooling branch of ASPP/PSP), ``b`` a 6-channel map at half size."""

    def __init__(
        self,
        branch: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        between: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        fuse_in: int = 10,
    ) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.pool = nn.Conv2d(3, 6, 1)
        self.fuse = nn.Conv2d(fuse_in, 2, 1)
        self.branch = branch
        self.between = between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.between(torch.cat([self.a(x), self.branch(self, x)], 1)))


def _up(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(m.b(x), scale_factor=2.0, mode="bilinear")


def _pooled(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.pool(F.adaptive_avg_pool2d(x, 1))


NEAREST8 = Upsample("nearest", (8.0, 8.0), None)
BROADCASTS = [
    ("upsampled, expand over the batch", lambda m, x: _up(m, x[:1]).expand(2, -1, -1, -1), BI2),
    ("upsampled, expand_as the batch", lambda m, x: _up(m, x[:1]).expand_as(torch.empty(2, 6, 8, 8)), BI2),
    ("upsampled, broadcast_to", lambda m, x: torch.broadcast_to(_up(m, x[:1]), (2, 6, 8, 8)), BI2),
    ("upsampled, no-op expand", lambda m, x: _up(m, x).expand(-1, -1, 8, 8), BI2),
    ("pooled 1x1, expand", lambda m, x: _pooled(m, x).expand(-1, -1, 8, 8), NEAREST8),
    ("pooled 1x1, expand_as", lambda m, x: _pooled(m, x).expand_as(torch.empty(2, 6, 8, 8)), NEAREST8),
    ("pooled 1x1, expand + new dims", lambda m, x: _pooled(m, x)[0].expand(2, 6, 8, 8), NEAREST8),
    ("pooled 1x1, bilinear resize", lambda m, x: F.interpolate(_pooled(m, x), (8, 8), mode="bilinear"),
     Upsample("bilinear", (8.0, 8.0), False)),
]


@pytest.mark.parametrize(("name", "branch", "up"), BROADCASTS, ids=[b[0] for b in BROADCASTS])
def test_expand_keeps_the_upsample_and_repeating_a_pooled_map_is_one(name, branch, up):
    assert _sites(both(Branches(branch))) == [("fuse", "ok", 1, [((0, 4), None), ((4, 10), up)])]


def test_expand_that_repeats_channels_is_a_source_not_a_pass():
    # A one-channel upsampled map repeated to six channels: the six are one feature, whose upsample is
    # not followed past the expand.
    model = Branches(lambda m, x: F.interpolate(m.b(x)[:, :1], scale_factor=2.0, mode="bilinear")
                     .expand(-1, 6, -1, -1))
    assert _sites(both(model)) == [("fuse", "ok", 1, [((0, 4), None), ((4, 10), None)])]


def test_expand_between_the_concat_and_the_layer_keeps_the_channels():
    model = Branches(lambda m, x: _up(m, x), between=lambda t: t.expand(3, -1, -1, -1))
    assert _sites(both(model, X[:1])) == [("fuse", "ok", 1, [((0, 4), None), ((4, 10), BI2)])]
    # Repeating a one-channel concat (of 1 + 0 channels) to the layer's width is no site of that concat.
    one = Branches(lambda m, x: _up(m, x)[:, :0], between=lambda t: t.expand(-1, 10, -1, -1))
    one.a = nn.Conv2d(3, 1, 1)
    assert _sites(both(one)) == []


PASSES = [
    ("type_as", lambda t: t.type_as(t)),
    ("to(dtype)", lambda t: t.to(torch.float32)),
    ("float()", lambda t: t.float()),
    ("t[:, :]", lambda t: t[:, :]),
    ("t[...]", lambda t: t[...]),
    ("t[:, :10] on 10 channels", lambda t: t[:, :10]),
    ("t[:, :, :, :]", lambda t: t[:, :, :, :]),
    ("t[..., :] then contiguous", lambda t: t[..., :].contiguous()),
]


@pytest.mark.parametrize(("name", "between"), PASSES, ids=[p[0] for p in PASSES])
def test_float_casts_and_full_slices_pass_between_the_concat_and_the_layer(name, between):
    assert _sites(both(Branches(_up, between))) == [("fuse", "ok", 1, [((0, 4), None), ((4, 10), BI2)])]


@pytest.mark.parametrize(("name", "feed"), PASSES, ids=[p[0] for p in PASSES])
def test_float_casts_and_full_slices_pass_between_the_upsample_and_the_concat(name, feed):
    model = Branches(lambda m, x: feed(_up(m, x)))
    assert _sites(both(model)) == [("fuse", "ok", 1, [((0, 4), None), ((4, 10), BI2)])]


def test_full_index_with_none_is_read_as_an_unsqueeze():
    model = Branches(_up, lambda t: t[None].transpose(0, 1).squeeze(1))  # [B, C, H, W] → [1, B, ...] → back
    assert _sites(both(model)) == [("fuse", "ok", 1, [((0, 4), None), ((4, 10), BI2)])]


STOPS = [
    ("rounded through long()", lambda t: t.long().float(), 10),
    ("rounded through to(int32)", lambda t: t.to(torch.int32).to(t.dtype), 10),
    ("slice of channels t[:, :6]", lambda t: t[:, :6], 6),
    ("slice of channels t[:, 4:]", lambda t: t[:, 4:], 6),
]


@pytest.mark.parametrize(("name", "between", "fuse_in"), STOPS, ids=[s[0] for s in STOPS])
def test_integer_casts_and_channel_slices_stop_the_walk(name, between, fuse_in):
    assert _sites(both(Branches(_up, between, fuse_in))) == []


def test_a_slice_that_drops_channels_before_the_concat_keeps_its_width_but_not_its_upsample():
    model = Branches(lambda m, x: torch.cat([_up(m, x)[:, :3], _up(m, x)[:, 3:]], 1))
    assert _sites(both(model)) == [("fuse", "ok", 1, [((0, 4), None), ((4, 7), None), ((7, 10), None)])]


EMPTY_PARTS = [
    ("x[:, :0]", lambda m, x: torch.cat([x[:, :0], _up(m, x)], 1)),
    ("1-D empty tensor", lambda m, x: torch.cat([_up(m, x), x.new_zeros(0)], 1)),
]


@pytest.mark.parametrize(("name", "branch"), EMPTY_PARTS, ids=[e[0] for e in EMPTY_PARTS])
def test_an_empty_part_of_a_concat_is_no_input_of_the_site(name, branch):
    # An empty input has no variance: it used to make the site's var_ratio NaN, which analyze showed as [ok].
    model = Branches(branch)
    assert _sites(both(model)) == [("fuse", "ok", 1, [((0, 4), None), ((4, 10), BI2)])]
    analysis = analyze(model, [X], measure=MeasureOptions(frontend="fx")).analysis
    (site,) = analysis.sites
    ratio = analysis.var_ratio(site)
    assert ratio is not None and math.isfinite(ratio) and ratio > 1.0


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_a_concat_of_empty_parts_only_is_no_site():
    model = Branches(lambda m, x: torch.cat([x[:, :0], x[:, :0]], 1), fuse_in=4)
    assert _sites(both(model)) == [("fuse", "ok", 1, [((0, 4), None)])]  # the outer concat of a(x) alone
    assert _sites(both(NothingToFuse())) == []


class NothingToFuse(nn.Module):
    """A concat of empty parts only, into a Linear that takes no feature (torch allows both)."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Linear(0, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([x[:, :0], x[:, :0]], 1).permute(0, 2, 3, 1))


class KeywordsAllTheWay(nn.Module):
    """Every op on the way from the upsample to a channels-last Linear takes its tensor by keyword."""

    def __init__(self, to_last: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.fuse = nn.Linear(10, 2)
        self.to_last = to_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(input=self.b(x), scale_factor=2.0, mode="bilinear")
        fused = torch.cat(tensors=[self.a(x), F.dropout(input=up, p=0.1, training=False)], dim=1)
        return self.fuse(input=self.to_last(F.pad(input=fused, pad=(0, 0, 0, 0))))


TO_LAST = [
    ("transpose(dim0=, dim1=)", lambda t: torch.flatten(input=t, start_dim=2).transpose(dim0=1, dim1=2)),
    ("transpose(1, dim1=)", lambda t: t.flatten(2).transpose(1, dim1=2)),
    ("swapaxes(axis0=, axis1=)", lambda t: t.flatten(2).swapaxes(axis0=1, axis1=2)),
    ("movedim(source=, destination=)", lambda t: torch.movedim(t, source=1, destination=-1)),
    ("permute(dims=)", lambda t: t.permute(dims=(0, 2, 3, 1))),
]


@pytest.mark.parametrize(("name", "to_last"), TO_LAST, ids=[t[0] for t in TO_LAST])
def test_keyword_arguments_along_the_walk(name, to_last):
    assert _sites(both(KeywordsAllTheWay(to_last))) == [("fuse", "ok", -1, [((0, 4), None), ((4, 10), BI2)])]
