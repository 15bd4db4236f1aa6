"""Padding between a concat and its fusing layer, read as torch reads it: ``F.pad``'s amounts come in
(left, right) pairs from the last dim backwards, given by position or by keyword, and a dim counts as
padded when either side is nonzero. (fx records ``F.pad``'s keyword as a position; builtins such as
``torch.constant_pad_nd`` and aten ops keep theirs.) Padding that reaches the channel dim stops the walk
(it adds channels); padding elsewhere passes.

Indexing between a concat and its fusing layer passes only when it keeps every value in place (a full
slice, read like a reshape); an index that reorders channels with the same count stops the walk."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from eqsurgeon import find_sites
from eqsurgeon.capture import capture
from eqsurgeon.channels import layout_op, padded_dims


def _pad_node(fn: Callable[[torch.Tensor], torch.Tensor]) -> fx.Node:
    (node,) = [n for n in fx.symbolic_trace(fn).graph.nodes if n.op == "call_function"]
    return node


@pytest.mark.parametrize(
    ("fn", "dims"),
    [
        (lambda t: F.pad(t, (0, 1, 0, 0)), (-1,)),  # one side of the last dim is enough
        (lambda t: F.pad(t, (1, 0, 0, 0)), (-1,)),
        (lambda t: F.pad(t, (0, 0, 0, 1)), (-2,)),  # the second pair is the second-to-last dim
        (lambda t: F.pad(t, (0, 0, 1, 0, 0, 1)), (-2, -3)),
        (lambda t: torch.constant_pad_nd(t, (0, 0, 2, 0)), (-2,)),
        (lambda t: torch.constant_pad_nd(t, pad=(0, 0, 0, 2)), (-2,)),  # amounts by keyword, as fx keeps them
        (lambda t: torch.ops.aten.reflection_pad2d.default(t, padding=[0, 2, 0, 0]), (-1,)),  # aten's name
        (lambda t: F.pad(t, (0, 0, 0, 0)), ()),
        (lambda t: F.pad(t, (1, 1, 1)), None),  # not (left, right) pairs: not understood, not followed
    ],
)
def test_padded_dims_reads_amounts_as_torch_pairs_them(fn, dims) -> None:
    assert padded_dims(_pad_node(fn), None) == dims


def test_padded_dims_reads_a_padding_module() -> None:
    node = _pad_node(lambda t: F.pad(t, (0, 0, 0, 0)))
    assert padded_dims(node, nn.ZeroPad2d((0, 0, 1, 0))) == (-2,)
    assert padded_dims(node, nn.ReflectionPad1d((0, 2))) == (-1,)


class PadBetween(nn.Module):
    """cat([a(x) 4 ch, up(b(x)) 6 ch]) → ``pad`` → ``fuse``."""

    def __init__(self, pad: Callable[[torch.Tensor], torch.Tensor], fuse: nn.Module) -> None:
        super().__init__()
        self.a, self.b, self.pad, self.fuse = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 2, stride=2), pad, fuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")
        return self.fuse(self.pad(torch.cat([self.a(x), up], 1)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize(
    ("pad", "fuse"),
    [
        (lambda t: F.pad(t, (0, 0, 0, 0, 0, 1)), nn.Conv2d(11, 2, 1)),  # one channel added after the concat
        (lambda t: torch.constant_pad_nd(t, pad=(0, 0, 0, 0, 1, 0)), nn.Conv2d(11, 2, 1)),  # by keyword
    ],
)
def test_one_sided_padding_of_the_channel_dim_stops_the_walk(frontend, pad, fuse) -> None:
    assert find_sites(PadBetween(pad, fuse), torch.randn(2, 3, 16, 16), frontend) == []


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_one_sided_spatial_padding_by_keyword_passes(frontend) -> None:
    model = PadBetween(lambda t: torch.constant_pad_nd(t, pad=(0, 1, 0, 1)), nn.Conv2d(10, 2, 2))
    (site,) = find_sites(model, torch.randn(2, 3, 16, 16), frontend)
    assert site.layer == "fuse" and [s.channels for s in site.subjects] == [(0, 4), (4, 10)]
    assert site.channel_dim == 1 and site.subjects[1].upsample is not None


# Channels 1 and 0 swapped: every value kept, the channel order changed. fx records it as ``getitem`` with
# a list index, export as ``aten.index``.
SWAPPED = [1, 0, *range(2, 10)]


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_an_index_that_reorders_channels_stops_the_walk(frontend) -> None:
    """The concat's ranges would name the wrong channels at the layer: no site."""
    model = PadBetween(lambda t: t[:, SWAPPED], nn.Conv2d(10, 2, 1))
    assert find_sites(model, torch.randn(2, 3, 16, 16), frontend) == []


ATEN_SLICES = [
    ("aten.slice.Tensor", lambda t: torch.ops.aten.slice.Tensor(t, 1, 0, 10)),
    ("aten.slice packet", lambda t: torch.ops.aten.slice(t, 1, 0, 10)),
    ("aten.slice.Tensor by keyword", lambda t: torch.ops.aten.slice.Tensor(self=t, dim=1, start=0, end=10)),
]


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize(("name", "between"), ATEN_SLICES, ids=[a[0] for a in ATEN_SLICES])
def test_an_aten_slice_of_every_channel_passes(frontend, name, between) -> None:
    """ATen's own slice, which torch.export keeps when the model calls it (``t[:, :10]`` becomes an alias),
    is read like the full ``t[:, :10]`` it is."""
    (site,) = find_sites(PadBetween(between, nn.Conv2d(10, 2, 1)), torch.randn(2, 3, 16, 16), frontend)
    assert site.layer == "fuse" and site.status == "ok"
    assert [s.channels for s in site.subjects] == [(0, 4), (4, 10)] and site.subjects[1].upsample is not None


LAYOUT_NAMES = [
    ("fx", lambda t: t[:, :, :, :], "getitem"),  # export records this one as an alias
    ("fx", lambda t: torch.ops.aten.slice.Tensor(t, 1, 0, 10), "getitem"),
    ("export", lambda t: torch.ops.aten.slice.Tensor(t, 1, 0, 10), "getitem"),
    ("fx", lambda t: t[:, SWAPPED], None),
]


@pytest.mark.parametrize(("frontend", "between", "name"), LAYOUT_NAMES)
def test_layout_op_names_a_full_slice_getitem_and_not_a_reordering_index(frontend, between, name) -> None:
    """``layout_op`` says what a node runs: a full slice (fx's ``getitem``, ATen's ``slice``) is
    ``"getitem"``; an index that reorders channels is no layout op."""
    graph = capture(PadBetween(between, nn.Conv2d(10, 2, 1)), torch.randn(1, 3, 8, 8), frontend).graph_module
    (cat,) = [n for n in graph.graph.nodes if "cat" in str(n.target)]
    (after_cat,) = cat.users
    assert layout_op(after_cat) == name
