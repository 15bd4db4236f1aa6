"""The two routes into an opaque leaf, each on its own: the shape-aware symbolic trace searches every
leaf these models have, and when it fails, torch.export's graph of the leaf gives the same sites.

Site finding alone cannot tell the routes apart, since either one finds the sites, so a bug in one route
would hide behind the other. These tests pin which route searched each leaf, and that the export route
alone still finds every site exactly (names, channel ranges, upsamples, sources)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from eqsurgeon import leaves as leaves_module
from eqsurgeon.capture import _FUSING_TYPES, _Tracer, capture
from eqsurgeon.leaves import LeafGraph, LeafSearch
from eqsurgeon.sites import find
from tests.test_sites_leaves import (
    CatFuse,
    CatOut,
    ConcatInsideConvOutside,
    ConcatOutsideConvInside,
    Configured,
    DropConv,
    Nested,
    Outer,
    PadFuse,
    StemBlockHead,
    Tokens,
    TwoConfigs,
    UpsampleOutsideConcatInside,
    Windowed,
    leaves,
)


@torch.compiler.disable
def _doubled(t: torch.Tensor) -> torch.Tensor:
    """Excluded from compilation: strict (dynamo) export refuses the call, non-strict export runs it."""
    return 2 * t


class DisabledInside(PadFuse):
    """PadFuse whose concat input passes through a function excluded from compilation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_doubled(x))


class StemDisabledHead(StemBlockHead):
    def __init__(self) -> None:
        super().__init__()
        self.block = DisabledInside(4)


# (model, its leaf classes): a site inside the leaf, across its boundary either way, a leaf taking a size
# argument and branching on it, two configurations of one class, a leaf inside a leaf, a leaf only
# non-strict export can trace
CASES: list[tuple[Callable[[], nn.Module], tuple[type[nn.Module], ...]]] = [
    (StemBlockHead, (PadFuse,)),
    (ConcatOutsideConvInside, (DropConv,)),
    (UpsampleOutsideConcatInside, (CatFuse,)),
    (ConcatInsideConvOutside, (CatOut,)),
    (Tokens, (Windowed,)),
    (TwoConfigs, (Configured,)),
    (Nested, (Outer, PadFuse)),
    (StemDisabledHead, (DisabledInside,)),
]
IDS = [make.__name__ for make, _ in CASES]


def _routes(children: dict[str, LeafGraph | str]) -> list[str]:
    """How each searched leaf was traced, nested leaves included, in node order."""
    out = []
    for entry in children.values():
        assert isinstance(entry, LeafGraph), entry  # every leaf here is searchable
        out += [entry.frontend, *_routes(dict(entry.children))]
    return out


def _search(model: nn.Module) -> dict[str, LeafGraph | str]:
    # capture's own fx pass: trace with the leaves kept whole, then search each leaf on fake inputs
    gm = torch.fx.GraphModule(model, _Tracer().trace(model))
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    search = LeafSearch(gm, mode, _FUSING_TYPES)
    search.propagate(mode.from_tensor(torch.randn(2, 3, 16, 16)))
    return search.children


def _sites(model: nn.Module) -> list[tuple[object, ...]]:
    found = find(capture(model, torch.randn(2, 3, 16, 16), "fx"), model)
    assert found.unsearched == ()
    return [
        (s.layer, s.op, s.status, s.channel_dim, [(x.channels, x.upsample, x.source) for x in s.subjects])
        for s in found.sites
    ]


def _no_symbolic_trace(*args: object, **kwargs: object) -> object:
    raise RuntimeError("symbolic tracing of this leaf is switched off by the test")


@pytest.mark.parametrize(("make", "classes"), CASES, ids=IDS)
def test_every_leaf_here_is_searched_by_the_shape_aware_symbolic_trace(make, classes) -> None:
    with leaves(*classes):
        routes = _routes(_search(make().eval()))
    assert routes and set(routes) == {"fx"}


@pytest.mark.parametrize(("make", "classes"), CASES, ids=IDS)
def test_when_the_symbolic_trace_of_a_leaf_fails_export_finds_the_same_sites(
    make, classes, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = make().eval()
    with leaves(*classes):
        expected = _sites(model)
        monkeypatch.setattr(leaves_module, "trace_leaf", _no_symbolic_trace)
        routes = _routes(_search(model))
        assert _sites(model) == expected
    assert routes and set(routes) == {"export"}
    assert expected  # something was there to find
