"""The walks of site finding, one rule per test: how an expand is read on the way back from a concat or an
add (a pooled map repeated over positions is a nearest upsample; a repeat over the batch or over new dims
passes), how the channel dim is followed back through layout ops and forward through an expand, and how an
op's input is found when it is passed by keyword. Each model is a few 1×1 layers at 8×8."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon import registry
from eqsurgeon.capture import capture
from eqsurgeon.records import Upsample
from eqsurgeon.sites import Findings, find
from tests import test_sites_frontends_agree as frontends_agree

BI2 = Upsample("bilinear", (2.0, 2.0), False)
NEAREST2 = Upsample("nearest", (2.0, 2.0), None)
NEAREST8 = Upsample("nearest", (8.0, 8.0), None)
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class Net(nn.Module):
    """``forward`` is ``fwd(self, x)`` over the given submodules and parameters."""

    def __init__(self, fwd: Callable[[Net, torch.Tensor], torch.Tensor], **parts: nn.Module) -> None:
        super().__init__()
        for name, part in parts.items():
            setattr(self, name, part)
        self.fwd = fwd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fwd(self, x)


def both(model: nn.Module, x: torch.Tensor = X) -> Findings:
    """The findings of both frontends, asserted equal (``test_sites_frontends_agree.both``); returns fx's,
    whose sources name the model's own nodes."""
    return frontends_agree.both(model, x, keep="fx")


def _sites(found: Findings) -> list[tuple[object, ...]]:
    return [(s.layer, s.channel_dim, [(t.channels, t.upsample) for t in s.subjects]) for s in found.sites]


def _sources(found: Findings) -> list[list[tuple[str, Upsample | None]]]:
    return [[(t.source, t.upsample) for t in s.subjects] for s in found.sites]


def _up(t: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t, scale_factor=2.0, mode="bilinear")


def _pooled(m: Net, x: torch.Tensor) -> torch.Tensor:
    """A 6-channel 1×1 map: ``pool`` on the globally pooled input (ASPP's image-pooling branch)."""
    return m.pool(F.adaptive_avg_pool2d(x, 1))


def _fused(branch: Callable[[Net, torch.Tensor], torch.Tensor], **parts: nn.Module) -> Net:
    """cat([a(x) 4 ch, branch(x) 6 ch], 1) → 1×1 ``fuse``; ``b`` is a 6-channel map at half size."""
    return Net(
        lambda m, x: m.fuse(torch.cat([m.a(x), branch(m, x)], 1)),
        a=nn.Conv2d(3, 4, 1),
        b=nn.Conv2d(3, 6, 2, stride=2),
        pool=nn.Conv2d(3, 6, 1),
        fuse=nn.Conv2d(10, 2, 1),
        **parts,
    )


# --- expands read walking back from an add -------------------------------------------------------------


def test_an_add_of_a_pooled_map_broadcast_over_positions_is_an_add_site_with_a_nearest_upsample():
    """An add term's channel dim is dim 1: the expand of the pooled map repeats H and W only."""
    model = Net(
        lambda m, x: m.a(x) + _pooled(m, x).expand(-1, -1, 8, 8),
        a=nn.Conv2d(3, 6, 1),
        pool=nn.Conv2d(3, 6, 1),
    )
    found = both(model)
    assert [[(t.channels, t.source, t.upsample) for t in a.inputs] for a in found.add_sites] == [
        [((0, 6), "a", None), ((0, 6), "pool", NEAREST8)]
    ]


def test_a_broadcast_vector_added_to_a_map_is_a_one_wide_term_without_upsample():
    """A vector term has no channel dim: its expand is its source, and reading it does not fail."""
    model = Net(
        lambda m, x: _up(m.b(x)) + m.v.expand(8),
        b=nn.Conv2d(3, 6, 2, stride=2),
        v=nn.Parameter(torch.ones(1)),
    )
    found = both(model)
    assert [[(t.channels, t.source, t.upsample) for t in a.inputs] for a in found.add_sites] == [
        [((0, 6), "b", BI2), ((0, 1), "expand", None)]
    ]


# --- expands read walking back from a concat -----------------------------------------------------------


def test_an_embedding_broadcast_to_every_token_is_a_nearest_upsample_over_the_tokens():
    """(6,) → (2, 4, 6) adds the batch and token dims; the channel dim is last, the 4 tokens repeat it."""
    model = Net(
        lambda m, x: m.fuse(torch.cat([m.a(x), m.e.expand(2, 4, 6)], -1)),
        a=nn.Linear(3, 4),
        e=nn.Parameter(torch.randn(6)),
        fuse=nn.Linear(10, 2),
    )
    assert _sites(both(model, torch.randn(2, 4, 3))) == [
        ("fuse", -1, [((0, 4), None), ((4, 10), Upsample("nearest", (4.0,), None))])
    ]


def test_a_per_channel_map_broadcast_over_positions_then_over_a_new_batch_dim_is_one_nearest_upsample():
    """(6, 1, 1) → (6, 8, 8) → (2, 6, 8, 8): the channel dim is dim 0 between the two expands."""
    model = _fused(lambda m, x: _pooled(m, x[:1])[0].expand(6, 8, 8).expand(2, 6, 8, 8))
    assert _sites(both(model)) == [("fuse", 1, [((0, 4), None), ((4, 10), NEAREST8)])]


def test_the_factor_of_a_broadcast_is_written_like_that_of_a_nearest_interpolation():
    """Both are records of floats, so a report or record file writes ``8.0`` for either."""
    expanded = _fused(lambda m, x: _pooled(m, x).expand(-1, -1, 8, 8))
    resized = _fused(lambda m, x: F.interpolate(_pooled(m, x), (8, 8)))
    written = [
        [json.dumps(dataclasses.asdict(t.upsample)) for t in site.subjects if t.upsample]
        for model in (expanded, resized)
        for site in both(model).sites
    ]
    assert written == [[json.dumps(dataclasses.asdict(NEAREST8))]] * 2
    assert '"factor": [8.0, 8.0]' in written[0][0]


def test_a_layout_op_between_the_broadcast_and_the_concat_keeps_the_channel_dim_followed():
    """Swapping H and W keeps the channels on dim 1, so the expand before it is still read as an upsample."""
    model = _fused(lambda m, x: _pooled(m, x).expand(-1, -1, 8, 8).permute(0, 1, 3, 2))
    assert _sources(both(model)) == [[("a", None), ("pool", NEAREST8)]]


def test_once_a_flatten_merges_the_channel_dim_an_expand_further_back_is_the_source():
    """[B, 6, 8, 1] → expand W → flatten(2) → flatten(1): the channels are lost at the last flatten, so the
    expand (which keeps H, repeats W) is not read as an upsample of anything."""
    model = Net(
        lambda m, x: m.fuse(
            torch.cat([m.a(x.mean((2, 3))), m.row(F.adaptive_avg_pool2d(x, (8, 1))).expand(-1, -1, 8, 8)
                       .flatten(2).flatten(1)], 1)
        ),
        a=nn.Linear(3, 4),
        row=nn.Conv2d(3, 6, 1),
        fuse=nn.Linear(4 + 6 * 64, 2),
    )
    assert _sources(both(model)) == [[("a", None), ("expand", None)]]


def test_an_interpolation_of_a_map_expanded_over_the_batch_reaches_the_layer_before_the_expand():
    model = _fused(lambda m, x: _up(m.b(x[:1]).expand(2, -1, -1, -1)))
    assert _sources(both(model)) == [[("a", None), ("b", BI2)]]


def test_an_interpolation_of_a_broadcast_pooled_map_is_the_upsample_and_the_expand_its_source():
    """One upsample per input: the broadcast before the interpolation is not a second one."""
    model = _fused(lambda m, x: _up(_pooled(m, x).expand(-1, -1, 4, 4)))
    assert _sources(both(model)) == [[("a", None), ("expand", BI2)]]


# --- the channel dim followed forward from the concat --------------------------------------------------


def test_a_token_concat_expanded_over_a_new_batch_dim_still_feeds_the_linear():
    """(4 tokens, 10) → (2, 4, 10): the channels move from dim 1 to dim 2, the Linear's last."""
    model = Net(
        lambda m, x: m.fuse(torch.cat([m.a(x), m.b(x)], 1).expand(2, 4, 10)),
        a=nn.Linear(3, 4),
        b=nn.Linear(3, 6),
        fuse=nn.Linear(10, 2),
    )
    assert _sites(both(model, torch.randn(4, 3))) == [("fuse", -1, [((0, 4), None), ((4, 10), None)])]


# --- inputs passed by keyword --------------------------------------------------------------------------


def resize(x: torch.Tensor, scale_factor: float, mode: str = "nearest") -> torch.Tensor:
    """A project's own resize, whose input is named ``x``."""
    return F.interpolate(x, scale_factor=scale_factor, mode=mode)


def test_a_registered_upsample_function_given_its_input_by_keyword_is_followed_to_the_input(scoped_registry):
    """fx records ``resize(x=...)`` as written; its own signature names the input."""
    registry.register_upsample_function(resize, default_mode="nearest")
    model = _fused(lambda m, x: resize(x=m.b(x), scale_factor=2.0))
    assert _sources(both(model)) == [[("a", None), ("b", NEAREST2)]]


def test_an_aten_packet_given_its_input_by_keyword_is_followed_to_the_input():
    """``torch.ops`` callables take ``*args``, which names nothing: the input is found under ATen's
    ``self``."""
    model = _fused(lambda m, x: torch.ops.aten.upsample_nearest2d(self=m.b(x), output_size=[8, 8]))
    assert _sources(both(model)) == [[("a", None), ("b", NEAREST2)]]


def test_a_concat_of_a_concat_written_with_keywords_flattens_into_one_site():
    """The outer ``cat(tensors=...)`` takes no input by position or under ``input``/``self``: it is no
    layer's input, and the inner concat is read as part of the outer one."""
    model = Net(
        lambda m, x: m.fuse(
            torch.cat(tensors=[torch.cat(tensors=[m.a(x), _up(m.b(x))], dim=1), m.c(x)], dim=1)
        ),
        a=nn.Conv2d(3, 4, 1),
        b=nn.Conv2d(3, 6, 2, stride=2),
        c=nn.Conv2d(3, 2, 1),
        fuse=nn.Conv2d(12, 2, 1),
    )
    assert _sources(both(model)) == [[("a", None), ("b", BI2), ("c", None)]]


class ListedConcat(nn.Module):
    """``cat(self.neck([a, up]))``: fx records the neck's list as one node (nn.Identity is kept whole)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.neck = nn.Identity()
        self.fuse = nn.Conv2d(10, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")
        return self.fuse(torch.cat(self.neck([self.a(x), up]), 1))


def test_a_concat_of_a_list_returned_whole_is_a_site_with_the_lists_widths():
    from eqsurgeon.api import analyze

    model = ListedConcat().eval()
    x = torch.randn(2, 3, 16, 16)
    (fx_site,) = find(capture(model, x, "fx"), model).sites
    assert fx_site.layer == "fuse" and [s.channels for s in fx_site.subjects] == [(0, 4), (4, 10)]
    assert [s.source for s in fx_site.subjects] == ["neck[0]", "neck[1]"]
    assert all(s.upsample is None for s in fx_site.subjects)  # made inside the call: not seen under fx
    (ex_site,) = find(capture(model, x, "export"), model).sites  # export lists the tensors themselves
    assert [s.channels for s in ex_site.subjects] == [(0, 4), (4, 10)] and ex_site.subjects[1].upsample
    moments = analyze(model, [x]).analysis.moments["fuse"]
    assert [m.count for m in moments] == [2 * 4 * 256, 2 * 6 * 256]


class ListedInsideUpsampled(nn.Module):
    """A listed concat of three maps, upsampled, then concatenated after another map."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 3, 2, stride=2)
        self.c = nn.Conv2d(3, 4, 2, stride=2)
        self.d = nn.Conv2d(3, 5, 2, stride=2)
        self.neck = nn.Identity()
        self.fuse = nn.Conv2d(14, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = torch.cat(self.neck([self.b(x), self.c(x), self.d(x)]), 1)
        up = F.interpolate(inner, scale_factor=2.0, mode="bilinear")
        return self.fuse(torch.cat([self.a(x), up], 1))


def test_a_listed_concat_nested_behind_an_upsample_flattens_with_its_offsets_and_the_upsample():
    model = ListedInsideUpsampled().eval()
    (site,) = find(capture(model, torch.randn(2, 3, 16, 16), "fx"), model).sites
    assert [s.channels for s in site.subjects] == [(0, 2), (2, 5), (5, 9), (9, 14)]
    assert [s.source for s in site.subjects] == ["a", "neck[0]", "neck[1]", "neck[2]"]
    bilinear = Upsample("bilinear", (2.0, 2.0), False)
    assert [s.upsample for s in site.subjects] == [None, bilinear, bilinear, bilinear]
