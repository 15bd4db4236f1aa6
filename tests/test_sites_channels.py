"""Between a concat and its fusing layer, ops that keep every channel whole pass and the channel dim is
followed (padding, reshapes, permutes); ops that split, merge or add channels stop the walk. The add-site
rule: an upsample must reach the add through scale-preserving ops only."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon import find_sites
from eqsurgeon.api import analyze
from eqsurgeon.capture import capture
from eqsurgeon.equalize import InputStat, fold_into, insert_equalizers
from eqsurgeon.records import Upsample
from eqsurgeon.report import analysis_to_dict
from eqsurgeon.sites import find

FRONTENDS = ["fx", "export"]
BI2 = Upsample("bilinear", (2.0, 2.0), False)


class Between(nn.Module):
    """cat([a(x) 4 ch, up(b(x)) 6 ch]) → ``between`` → ``fuse``."""

    def __init__(self, between: Callable[[torch.Tensor], torch.Tensor], fuse: nn.Module) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.between = between
        self.fuse = fuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")
        return self.fuse(self.between(torch.cat([self.a(x), up], 1)))


def tf_same_pad(x: torch.Tensor) -> torch.Tensor:
    # TF "same" padding for a 3x3 stride-2 conv: amounts computed from the input's size (graph nodes
    # under fx), all nonzero on H and W only.
    h, w = x.shape[-2], x.shape[-1]
    pad_h, pad_w = (2 - (h - 1) % 2) % 3, (2 - (w - 1) % 2) % 3
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), "constant", 0.0)


CONV = 1
LINEAR = -1


# (name, op between, fusing layer, its channel_dim)
KEPT = [
    ("F.pad zero amounts", lambda t: F.pad(t, [0, 0, 0, 0]), nn.Conv2d(10, 2, 1), CONV),
    ("TF-style same padding", tf_same_pad, nn.Conv2d(10, 2, 3, stride=2), CONV),
    ("ZeroPad2d", nn.ZeroPad2d(1), nn.Conv2d(10, 2, 3), CONV),
    ("ReflectionPad2d", nn.ReflectionPad2d((1, 0, 1, 0)), nn.Conv2d(10, 2, 2), CONV),
    ("pad then dropout", lambda t: F.dropout(F.pad(t, (1, 1, 1, 1)), 0.1), nn.Conv2d(10, 2, 3), CONV),
    ("flatten + transpose", lambda t: t.flatten(2).transpose(1, 2), nn.Linear(10, 2), LINEAR),
    ("permute to NHWC", lambda t: t.permute(0, 2, 3, 1).contiguous(), nn.Linear(10, 2), LINEAR),
    ("movedim", lambda t: torch.movedim(t, 1, -1), nn.Linear(10, 2), LINEAR),
    ("unsqueeze into conv3d", lambda t: t.unsqueeze(2), nn.Conv3d(10, 2, 1), CONV),
    ("view that keeps channels", lambda t: t.view(t.shape[0], 10, -1), nn.Conv1d(10, 2, 1), CONV),
]


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize(("name", "between", "fuse", "channel_dim"), KEPT, ids=[k[0] for k in KEPT])
def test_channel_keeping_ops_pass(frontend, name, between, fuse, channel_dim):
    (site,) = find_sites(Between(between, fuse), torch.randn(2, 3, 16, 16), frontend)
    assert (site.layer, site.status, site.channel_dim) == ("fuse", "ok", channel_dim)
    assert [(s.channels, s.upsample) for s in site.subjects] == [((0, 4), None), ((4, 10), BI2)]


class SplitChannels(nn.Module):
    """Reshape that folds half the channels into the batch: channel ranges no longer hold."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape
        return t.reshape(b * 2, c // 2, h, w)


STOPPED = [
    ("pad adds channels", lambda t: F.pad(t, (0, 0, 0, 0, 1, 1)), nn.Conv2d(12, 2, 1)),
    ("channels folded into batch", SplitChannels(), nn.Conv2d(5, 2, 1)),
    ("permute away from the last dim", lambda t: t.permute(0, 2, 1, 3), nn.Linear(16, 2)),
    ("scaling by a gate", lambda t: t * torch.sigmoid(t.mean((2, 3), keepdim=True)), nn.Conv2d(10, 2, 1)),
]


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize(("name", "between", "fuse"), STOPPED, ids=[k[0] for k in STOPPED])
def test_ops_that_move_or_rescale_channels_stop_the_walk(frontend, name, between, fuse):
    assert find_sites(Between(between, fuse), torch.randn(2, 3, 16, 16), frontend) == []


class ChannelsLastConcat(nn.Module):
    """Concat on the last dim of NHWC features, permuted back to NCHW for the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.fuse = nn.Conv2d(10, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x).permute(0, 2, 3, 1), self.b(x).permute(0, 2, 3, 1)
        return self.fuse(torch.cat([a, b], -1).permute(0, 3, 1, 2))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_channels_last_concat_followed_back_to_dim_one(frontend):
    (site,) = find_sites(ChannelsLastConcat(), torch.randn(2, 3, 8, 8), frontend)
    assert (site.layer, site.channel_dim) == ("fuse", 1)
    assert [s.channels for s in site.subjects] == [(0, 4), (4, 10)]


class PadAfterUpsample(nn.Module):
    """Classic U-Net: the upsampled map is padded to the skip's size before the concat."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = nn.Conv2d(3, 4, 1)
        self.deep = nn.Conv2d(3, 6, 3, stride=2)
        self.fuse = nn.Conv2d(10, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip, up = self.skip(x), F.interpolate(self.deep(x), scale_factor=2.0, mode="bilinear")
        dh, dw = skip.shape[2] - up.shape[2], skip.shape[3] - up.shape[3]
        up = F.pad(up, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.fuse(torch.cat([skip, up], 1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_upsample_found_through_padding_before_the_concat(frontend):
    (site,) = find_sites(PadAfterUpsample(), torch.randn(2, 3, 16, 16), frontend)
    assert [(s.channels, s.source) for s in site.subjects] == [((0, 4), "skip"), ((4, 10), "deep")]
    assert site.subjects[1].upsample is not None and site.subjects[1].upsample.mode == "bilinear"


class UpsampleConvAdd(nn.Module):
    """LR-ASPP's shape: the upsampled branch is classified by a conv before the add."""

    def __init__(self, conv_after_upsample: bool) -> None:
        super().__init__()
        self.low = nn.Conv2d(3, 2, 1)
        self.high = nn.Conv2d(3, 2, 2, stride=2)
        self.classify = nn.Conv2d(2, 2, 1) if conv_after_upsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.high(x), size=x.shape[-2:], mode="bilinear")
        return self.low(x) + self.classify(up)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_add_site_needs_the_upsample_to_reach_the_add_directly(frontend):
    x = torch.randn(2, 3, 16, 16)
    direct, classified = UpsampleConvAdd(False).eval(), UpsampleConvAdd(True).eval()
    (add,) = find(capture(direct, x, frontend), direct).add_sites
    assert [s.upsample is not None for s in add.inputs] == [False, True]
    assert find(capture(classified, x, frontend), classified).add_sites == ()


def test_channel_dim_is_in_the_json_for_every_site():
    model = Between(lambda t: t.flatten(2).transpose(1, 2), nn.Linear(10, 2))
    doc = analysis_to_dict(analyze(model, [torch.randn(2, 3, 16, 16)]).analysis)
    assert [s["channel_dim"] for s in doc["sites"]] == [-1]
    assert doc["unsearched_leaves"] == []


class PaddedFuse(nn.Module):
    """cat → explicit zero pad → 3×3 conv, or the conv's own zero padding when ``explicit`` is False."""

    def __init__(self, explicit: bool) -> None:
        super().__init__()
        self.explicit = explicit
        self.fuse = nn.Conv2d(4, 2, 3, padding=0 if explicit else 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], 1)
        return self.fuse(F.pad(x, (1, 1, 1, 1)) if self.explicit else x)


@pytest.mark.parametrize("explicit", [True, False])
def test_bias_correction_with_explicit_padding_matches_insert(explicit):
    # equalize.py's docstring: with explicit padding the equalizer sees the padded zeros, so fold with bias
    # correction equals insert everywhere; with the conv's own padding they differ on the border only.
    torch.manual_seed(0)
    a, b = torch.randn(1, 2, 6, 6) + 0.5, 3 * torch.randn(1, 2, 6, 6) + 2.0
    stats = [InputStat((0, 2), 0.5, 1.0), InputStat((2, 4), 2.0, 3.0)]
    folded, inserted = PaddedFuse(explicit), PaddedFuse(explicit)
    inserted.load_state_dict(folded.state_dict())
    assert fold_into(folded, "fuse", "conv2d", stats, bias_correction=True).bias_corrected
    insert_equalizers(inserted, "fuse", stats)
    with torch.no_grad():
        gap = (folded(a, b) - inserted(a, b)).abs()
    assert gap[..., 1:-1, 1:-1].max() < 1e-5  # away from the border both are exact
    assert (gap.max() < 1e-5) == explicit


def _where_channels_go(
    op: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], dim: int
) -> int | None:
    """Ground truth by running ``op``: the output dim along which the input's dim ``dim`` still reads
    0, 1, ..., C−1 with every other position constant; None when the op split or merged it."""
    size = shape[dim]
    view = [size if i == dim else 1 for i in range(len(shape))]
    out = op(torch.arange(float(size)).view(view).expand(shape).contiguous())
    for j, s in enumerate(out.shape):
        along = torch.arange(float(size)).view([size if i == j else 1 for i in range(out.dim())])
        if s == size and torch.equal(out, along.expand(out.shape)):
            return j
    return None


LAYOUTS = [
    ("permute", lambda t: t.permute(0, 2, 3, 1), 1),
    ("permute list", lambda t: t.permute([0, 3, 1, 2]), 1),
    ("permute dims=", lambda t: t.permute(dims=(0, 3, 1, 2)), 3),
    ("torch.permute negative", lambda t: torch.permute(t, (0, -1, 1, 2)), 3),
    ("transpose", lambda t: t.transpose(1, 2), 1),
    ("transpose negative", lambda t: t.transpose(-1, 1), 1),
    ("transpose others", lambda t: t.transpose(2, 3), 1),
    ("swapaxes", lambda t: torch.swapaxes(t, 1, 3), 3),
    ("swapdims", lambda t: t.swapdims(0, 2), 1),
    ("movedim", lambda t: t.movedim(1, -1), 1),
    ("movedim tuples", lambda t: torch.movedim(t, (1, 2), (3, 1)), 1),
    ("movedim past it", lambda t: torch.movedim(t, 2, 0), 1),
    ("moveaxis", lambda t: t.moveaxis(3, 1), 1),
    ("flatten after", lambda t: t.flatten(2), 1),
    ("flatten over it", lambda t: t.flatten(1), 1),
    ("reshape channels-last tokens", lambda t: t.reshape(2, 20, 3), 3),
    ("view splitting it", lambda t: t.view(2, 2, 3, 4, 5), 1),
    ("view merging before it", lambda t: t.view(6, 4, 5), 2),
    ("unsqueeze", lambda t: t.unsqueeze(0), 1),
    ("unflatten", lambda t: torch.unflatten(t, 2, (2, 2)), 1),
]


@pytest.mark.parametrize(("name", "op", "dim"), LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_channel_dim_is_followed_through_each_layout_op_as_torch_moves_it(name, op, dim) -> None:
    from eqsurgeon.channels import channel_dim_after

    shape = (2, 6, 4, 5) if dim != 3 else (2, 4, 5, 3)
    if name == "view merging before it":
        shape = (2, 3, 4, 5)
    graph = torch.fx.symbolic_trace(op).graph
    (node,) = [n for n in graph.nodes if n.op in ("call_method", "call_function")]
    after = tuple(op(torch.zeros(shape)).shape)
    assert channel_dim_after(node, shape, after, dim) == _where_channels_go(op, shape, dim), name


@pytest.mark.parametrize(
    "op", [lambda t: t.permute(0, 2, 3, 1), lambda t: t.movedim(1, 3), lambda t: t.transpose(1, 3)]
)
def test_channel_dim_is_followed_through_exported_layout_ops(op) -> None:
    from eqsurgeon.channels import channel_dim_after

    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return op(x)

    x = torch.zeros(2, 6, 4, 5)
    graph = torch.export.export(M(), (x,), strict=False).graph
    (node,) = [n for n in graph.nodes if n.op == "call_function"]
    assert (
        channel_dim_after(node, (2, 6, 4, 5), tuple(op(x).shape), 1)
        == _where_channels_go(op, x.shape, 1)
        == 3
    )


def test_layout_ops_whose_dims_are_unknown_are_not_followed() -> None:
    from eqsurgeon.channels import channel_dim_after

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    unknown = graph.placeholder("d")  # a dim that is a graph value without a recorded int
    for args in [(x, 0, 2, 3, unknown), (x, 0, 2, 3), (x, True, 2, 3, 1)]:
        node = graph.call_method("permute", args)
        assert channel_dim_after(node, (2, 6, 4, 5), (2, 4, 5, 6), 1) is None
    for name, args in [("transpose", (x, unknown, 1)), ("transpose", (x, 1)), ("movedim", (x, [1, 2], [3])),
                       ("movedim", (x, [1], [unknown]))]:  # fmt: skip
        assert channel_dim_after(graph.call_method(name, args), (2, 6, 4, 5), (2, 4, 5, 6), 1) is None
    sized = graph.call_method("size", (x, 3))
    sized.meta["val"] = 3  # what the shape pass records for a size read from the input
    node = graph.call_method("permute", (x, 0, 2, sized, 1))
    assert channel_dim_after(node, (2, 6, 4, 5), (2, 4, 5, 6), 1) == 3
    assert channel_dim_after(graph.call_method("relu", (x,)), (2, 6), (2, 6), 1) is None
