"""Searching inside opaque leaves, the cases users hit: leaves that take sizes, keywords and containers of
tensors, that branch on sizes through every way a tensor reports them, that read their own parameters;
leaves of one class that must be searched apart (configuration, input shapes, hooks) or traced once
(the cache); leaves nested to the depth limit; inputs site finding cannot follow outside a leaf; and the
one line that says why a leaf could not be searched."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon import capture as capture_module
from eqsurgeon import leaves as leaves_module
from eqsurgeon.capture import capture
from eqsurgeon.leaves import MAX_DEPTH, LeafGraph, is_opaque, one_line
from eqsurgeon.records import Upsample
from eqsurgeon.sites import find
from tests.test_leaves_units import _no_symbolic_trace, _routes, _search
from tests.test_sites_leaves import PadFuse, leaves

BI2 = Upsample("bilinear", (2.0, 2.0), False)
ROUTES = ["fx", "export"]


def _sites(model: nn.Module, size: int = 16) -> list[tuple[object, ...]]:
    model.eval()
    found = find(capture(model, torch.randn(2, 3, size, size), "fx"), model)
    assert found.unsearched == ()
    return [
        (s.layer, s.status, [(x.channels, x.upsample, x.source) for x in s.subjects]) for s in found.sites
    ]


def _only(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Search leaves by ``route`` alone: for export, the symbolic trace of every leaf fails."""
    if route == "export":
        monkeypatch.setattr(leaves_module, "trace_leaf", _no_symbolic_trace)


# --- sizes, keywords and containers -------------------------------------------------------------------


class Gather(nn.Module):
    """Takes its tensors in a list and a dict, and sizes and a scale by keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(10, 2, 1)

    def forward(
        self,
        feats: list[torch.Tensor],
        extras: dict[str, torch.Tensor],
        *,
        size: tuple[int, int],
        scale: float,
    ) -> torch.Tensor:
        a, b = feats[0], extras["up"]
        assert tuple(a.shape[-2:]) == tuple(size)
        return self.fuse(torch.cat([a, b], 1)) * scale


class Around(nn.Module):
    """A leaf that hands its tensors on to a nested leaf, one of them by keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.gather = Gather()

    def forward(self, a: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.gather([a], extras={"up": up}, size=(a.shape[2], a.shape[3]), scale=2.0)


class ByKeyword(nn.Module):
    def __init__(self, nested: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.block = Around() if nested else Gather()
        self.nested = nested

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, up = self.a(x), F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")
        if self.nested:
            return self.block(a, up)
        return self.block([a], extras={"up": up}, size=(x.shape[2], x.shape[3]), scale=2.0)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("nested", [False, True], ids=["leaf", "nested-leaf"])
def test_tensors_passed_in_lists_dicts_and_by_keyword_are_followed_to_their_sources(
    route: str, nested: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    with leaves(Gather, Around):
        _only(route, monkeypatch)
        routes = _routes(_search(ByKeyword(nested).eval()))
        found = _sites(ByKeyword(nested))
    assert set(routes) == {route}
    layer = "block.gather.fuse" if nested else "block.fuse"
    assert found == [(layer, "ok", [((0, 4), None, "a"), ((4, 10), BI2, "b")])]


class PatchEmbed(nn.Module):
    """Returns its tokens with their grid size, as timm's Twins patch embedding does."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class TokenFuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Linear(16, 8)

    def forward(self, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        grid = t.reshape(t.shape[0], h, w, -1)
        return self.fuse(torch.cat([grid, grid.flip(1)], -1))


class EmbedThenFuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = PatchEmbed()
        self.block = TokenFuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, size = self.embed(x)
        return self.block(t, size)


def test_a_leaf_returning_its_grid_size_with_the_tokens_is_traced_and_its_size_used_downstream() -> None:
    with leaves(PatchEmbed, TokenFuse):
        routes = _routes(_search(EmbedThenFuse().eval()))
        found = _sites(EmbedThenFuse())
    assert routes == ["fx", "fx"]
    assert found == [("block.fuse", "ok", [((0, 8), None, "embed.proj"), ((8, 16), None, "block")])]


# --- control flow on sizes -------------------------------------------------------------------------------


class ShapeProbe(nn.Module):
    """Branches on every way a tensor reports its size; any of them answering a proxy fails the trace."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(9, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        checks = [
            x.size(1) == c,
            x.size()[-1] == w,
            x.dim() == 4,
            x.numel() == math.prod(x.size()),
            len(x) == b,
            len([row for row in x]) == b,  # iterating a tensor gives one proxy per row
            [s for s in x.shape] == [b, c, h, w],
        ]
        if not all(checks):
            raise ValueError("sizes disagree")
        halves = [part for part in x.chunk(2, 1)]  # iterating a tuple-valued node
        mean = x.mean(dim=1, keepdim=True)  # keyword arguments of a method call shape its value
        return self.fuse(torch.cat([x, *halves, mean], 1))


class ProbeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = ShapeProbe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


def test_branches_on_size_dim_numel_len_and_iteration_are_taken_by_the_symbolic_trace() -> None:
    with leaves(ShapeProbe):
        routes = _routes(_search(ProbeModel().eval()))
        found = _sites(ProbeModel())
    assert routes == ["fx"]  # a proxy where an int belongs would have sent the leaf to export
    widths = [(0, 4), (4, 6), (6, 8), (8, 9)]
    assert found == [("block.fuse", "ok", [(w, None, s) for w, s in zip(widths, ["stem", *["block"] * 3])])]


# --- parameters, buffers and constants read inside a leaf ------------------------------------------------


class Scaled(nn.Module):
    """Reads a parameter, a buffer and a plain tensor attribute, and concatenates a learned map."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.pos = nn.Parameter(torch.zeros(1, 2, 16, 16))
        self.register_buffer("shift", torch.zeros(1, 4, 1, 1))
        self.offsets = torch.arange(4.0).view(1, 4, 1, 1)  # neither parameter nor buffer
        self.fuse = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.shift + self.offsets) * self.gamma
        return self.fuse(torch.cat([x, self.pos.expand(x.shape[0], -1, -1, -1)], 1))


class ScaledModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = Scaled()
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


@pytest.mark.parametrize("route", ROUTES)
def test_parameters_and_buffers_read_in_a_leaf_keep_their_full_names(
    route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ScaledModel().eval()
    with leaves(Scaled):
        _only(route, monkeypatch)
        assert _routes(_search(model)) == [route]
        cap = capture(model, torch.randn(2, 3, 16, 16), "fx")
        found = find(cap, model)
    params = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    reads = {str(n.target) for n in cap.graph.nodes if n.op == "get_attr"}
    assert {"block.gamma", "block.pos", "block.shift", "block.offsets"} <= reads
    assert reads - {"block.offsets"} <= params  # the constant is no parameter; the rest are the model's
    (output,) = [n for n in cap.graph.nodes if n.op == "output"]
    assert [str(a.target) for a in output.all_input_nodes] == ["head"]  # the leaf's output feeds the head
    (site,) = found.sites
    assert (site.layer, site.status) == ("block.fuse", "ok")
    assert [(s.channels, s.upsample) for s in site.subjects] == [((0, 4), None), ((4, 6), None)]


# --- which leaves are opaque ------------------------------------------------------------------------------


def test_torch_nn_modules_are_never_searched_but_user_classes_are() -> None:
    assert not is_opaque(nn.BatchNorm2d(4), ())
    assert not is_opaque(nn.Sequential(), ())
    assert is_opaque(PadFuse(4), ())
    assert not is_opaque(PadFuse(4), (PadFuse,))  # kept whole on purpose


# --- the cache: equal leaves traced once, different ones apart ----------------------------------------------


def _double(t: torch.Tensor) -> torch.Tensor:
    return 2 * t


class Knob(nn.Module):
    """Fuses (concat → conv) or not, as ``rule(knob)`` says; the conv is the same either way."""

    def __init__(self, knob: object, rule: Callable[[object], bool]) -> None:
        super().__init__()
        self.knob, self.rule = knob, rule
        self.conv = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, x.flip(-1)], 1) if self.rule(self.knob) else torch.cat([x, x], 1) * 0.5
        return self.conv(y)


class ShapedKnob(Knob):
    """The knob is a parameter: only its shape says whether the leaf fuses."""

    def __init__(self, n: int) -> None:
        super().__init__(None, bool)
        self.weights = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, x.flip(-1)], 1) if self.weights.shape[0] > 1 else torch.cat([x, x], 1) * 0.5
        return self.conv(y)


class OtherKnob(Knob):
    """The same attributes as Knob, another forward: always fuses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, x.flip(-1)], 1))


class Pair(nn.Module):
    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(self.stem(x)))


def _is(value: object) -> Callable[[object], bool]:
    return lambda v: type(v) is type(value) and v == value


_f, _g = functools.partial(max, 1), functools.partial(min, 1)
# (first knob, second knob): equal under a careless fingerprint, yet only the second one fuses
DIFFERENT = {
    "bool-vs-int": (1, True),
    "tuple-vs-list": ((1, 2), [1, 2]),
    "tuple-items": ((1, 2), (1, 3)),
    "set-vs-frozenset": ({1}, frozenset({1})),
    "set-items": ({1}, {2}),
    "dict-keys": ({"a": 1}, {"b": 1}),
    "dict-values": ({"a": 1}, {"a": 2}),
    "partial-func": (_g, _f),
    "partial-args": (functools.partial(max, 1), functools.partial(max, 2)),
    "partial-keywords": (functools.partial(max, key=abs), functools.partial(max, key=str)),
    "tensor-device": (torch.zeros(2, device="meta"), torch.zeros(2)),
}


@pytest.mark.parametrize(("a", "b"), DIFFERENT.values(), ids=DIFFERENT.keys())
def test_leaves_whose_attributes_differ_are_searched_apart(a: object, b: object) -> None:
    rule = _is(b) if not isinstance(b, torch.Tensor) else lambda t: t.device.type == "cpu"
    with leaves(Knob):
        found = _sites(Pair(Knob(a, rule), Knob(b, rule)))
    assert [s[0] for s in found] == ["second.conv"]


@pytest.mark.parametrize(
    "pair",
    [lambda: (ShapedKnob(1), ShapedKnob(2)), lambda: (Knob(0, bool), OtherKnob(0, bool))],
    ids=["parameter-shape", "class"],
)
def test_leaves_with_other_parameter_shapes_or_classes_are_searched_apart(pair: Callable[[], tuple]) -> None:
    with leaves(Knob, ShapedKnob, OtherKnob):
        found = _sites(Pair(*pair()))
    assert [s[0] for s in found] == ["second.conv"]


class FusesAtWidth(nn.Module):
    """Fuses only at width 16, or when told so by keyword."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor, mode: str = "by-width") -> torch.Tensor:
        fuse = x.shape[-1] == 16 if mode == "by-width" else mode == "fuse"
        return self.conv(torch.cat([x, x.flip(-1)], 1) if fuse else torch.cat([x, x], 1) * 0.5)


class TwoWidths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.down = nn.Conv2d(4, 4, 2, stride=2)
        self.full, self.small = FusesAtWidth(4), FusesAtWidth(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.small(self.down(self.full(x)))


class TwoModes(TwoWidths):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.small(self.full(x, mode="plain"), mode="fuse")


@pytest.mark.parametrize(("model", "layer"), [(TwoWidths, "full.conv"), (TwoModes, "small.conv")])
def test_leaves_called_on_other_shapes_or_keywords_are_searched_apart(model: type, layer: str) -> None:
    with leaves(FusesAtWidth):
        found = _sites(model())
    assert [s[0] for s in found] == [layer]


class Plain(nn.Module):
    """Holds one of every kind of plain attribute the fingerprint reads."""

    def __init__(self) -> None:
        super().__init__()
        self.act, self.pool, self.kind = _double, len, nn.ReLU
        self.partial, self.names, self.table = functools.partial(max, 1), {"a"}, {"k": (1, 2.0)}
        self.table_list, self.device, self.dtype = [None, "x"], torch.device("cpu"), torch.float32
        self.grid = torch.zeros(2)
        self.register_buffer("shift", torch.zeros(1))
        self.conv = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.act(x), x.flip(-1)], 1))


class Hooked(Plain):
    pass


def _count_traces(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    traced: list[str] = []
    real = leaves_module.trace_leaf

    def counting(searcher: object, leaf: nn.Module, *args: object, **kwargs: object) -> object:
        traced.append(type(leaf).__name__)
        return real(searcher, leaf, *args, **kwargs)

    monkeypatch.setattr(leaves_module, "trace_leaf", counting)
    return traced


def test_equal_leaves_holding_functions_types_and_containers_are_traced_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    traced = _count_traces(monkeypatch)
    with leaves(Plain):
        found = _sites(Pair(Plain(), Plain()))
    assert traced == ["Plain"]
    assert [s[0] for s in found] == ["first.conv", "second.conv"]


def test_a_leaf_with_hooks_is_traced_on_its_own_and_its_hook_is_searched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pre-hook fuses the second leaf's input halves; the first leaf (no hook) has no site."""
    traced = _count_traces(monkeypatch)
    with leaves(Conv4):
        found = _sites(Pair(Conv4(), Conv4(hooked=True)))
    assert traced == ["Conv4", "Conv4"]
    assert [(s[0], [w for w, _, _ in s[2]]) for s in found] == [("second.conv", [(0, 2), (2, 4)])]


class Conv4(nn.Module):
    def __init__(self, hooked: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        if hooked:
            self.register_forward_pre_hook(
                lambda m, args: (torch.cat([args[0][:, :2], args[0][:, 2:].flip(-1)], 1),)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TwiceInside(nn.Module):
    """Runs two equal nested leaves in a row, then a conv on the second one's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = PadFuse(4), PadFuse(4)
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


class TwiceInsideModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = TwiceInside()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


def test_a_nested_leaf_found_in_the_cache_still_gives_its_output_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    traced = _count_traces(monkeypatch)
    with leaves(TwiceInside, PadFuse):
        routes = _routes(_search(TwiceInsideModel().eval()))
    assert traced == ["TwiceInside", "PadFuse"]  # b is a's twin: not traced again
    assert routes == ["fx", "fx", "fx"]


# --- nesting depth --------------------------------------------------------------------------------------


class Mirror(nn.Module):
    def forward(self, x: torch.Tensor, *, dim: int) -> torch.Tensor:
        return x.flip(dim)


class KwFuse(nn.Module):
    """Takes a flag by keyword and calls a submodule with a keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.mirror = Mirror()
        self.fuse = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor, *, flip: bool) -> torch.Tensor:
        return self.fuse(torch.cat([x, self.mirror(x, dim=-1) if flip else F.avg_pool2d(x, 3, 1, 1)], 1))


class Chain(nn.Module):
    """A leaf holding a leaf, ``levels`` leaves deep in all."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.inner = Chain(levels - 1) if levels > 2 else KwFuse()
        self.last = levels == 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x, flip=True) if self.last else self.inner(x)


class Deep(nn.Module):
    def __init__(self, levels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = Chain(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


@pytest.mark.parametrize("shape_pass", ["meta", "fake"])
def test_leaves_nested_to_the_depth_limit_are_searched_and_one_deeper_is_reported(
    shape_pass, monkeypatch
) -> None:
    if shape_pass == "fake":  # the fallback: fake tensors throughout, leaves traced as they are reached
        monkeypatch.setattr(capture_module, "meta_shapes", lambda *a: None)
    innermost = "block" + ".inner" * (MAX_DEPTH - 1)
    with leaves(Chain, KwFuse):
        deepest = _sites(Deep(MAX_DEPTH))
        model = Deep(MAX_DEPTH + 1).eval()
        too_deep = find(capture(model, torch.randn(2, 3, 16, 16), "fx"), model)
    assert deepest == [
        (f"{innermost}.fuse", "ok", [((0, 4), None, "stem"), ((4, 8), None, f"{innermost}.mirror")])
    ]
    assert too_deep.sites == ()
    (leaf,) = too_deep.unsearched
    assert (leaf.name, leaf.reason) == (f"{innermost}.inner", f"leaves nested more than {MAX_DEPTH} deep")


# --- inputs site finding cannot follow outside a leaf ----------------------------------------------------


class PairFuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(8, 2, 1)

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat([pair[0], pair[1].flip(-1)], 1))


class Chunked(nn.Module):
    """Hands the leaf a tuple that a graph node builds (chunk): its parts are sources inside the leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.block = PairFuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(torch.chunk(self.stem(x), 2, 1))


@pytest.mark.parametrize("route", ROUTES)
def test_inputs_inside_a_tuple_built_by_the_graph_are_sources_named_by_the_leaf(
    route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Chunked().eval()
    with leaves(PairFuse):
        _only(route, monkeypatch)
        assert _routes(_search(model)) == [route]
        cap = capture(model, torch.randn(2, 3, 16, 16), "fx")
        found = find(cap, model)
    assert [(s.layer, s.status, [(x.channels, x.source) for x in s.subjects]) for s in found.sites] == [
        ("block.fuse", "ok", [((0, 4), "block"), ((4, 8), "block")])
    ]
    inner = [n for n in cap.graph.nodes if n.op == "placeholder" and n.name != "x"]
    assert len(inner) == 2 and all(n.target == n.name for n in inner)
    assert all(tuple(n.meta["val"].shape) == (2, 4, 16, 16) for n in inner)
    assert all(list(n.meta["nn_module_stack"].values())[-1][0] == "block" for n in inner)


# --- why a leaf could not be searched --------------------------------------------------------------------


class Refuses(nn.Module):
    """Runs on real and fake tensors, but refuses both tracers, each with a two-line message."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            raise ValueError("no symbolic tracing here\nsecond line")
        if torch.compiler.is_exporting():
            raise TypeError("no export here\nsecond line")
        return self.fuse(torch.cat([x, x.flip(-1)], 1))


class RefusesModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = Refuses()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


def test_an_unsearchable_leaf_says_why_in_one_line_per_tracer() -> None:
    model = RefusesModel().eval()
    with leaves(Refuses):
        found = find(capture(model, torch.randn(2, 3, 16, 16), "fx"), model)
    (leaf,) = found.unsearched
    assert leaf.name == "block"
    assert leaf.reason.startswith("torch.fx: ValueError: no symbolic tracing here; torch.export: ")
    assert "TypeError: no export here" in leaf.reason and "second line" not in leaf.reason


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (ValueError("bad size\nmore detail"), "ValueError: bad size"),
        (RuntimeError("\n  padded message\nnext"), "RuntimeError: padded message"),
        (KeyError(), "KeyError: "),
        (TypeError("x" * 400), "TypeError: " + "x" * 289),
    ],
    ids=["two-lines", "padded", "empty", "long"],
)
def test_one_line_is_the_type_and_the_first_line_at_most_300_characters(exc: Exception, line: str) -> None:
    assert one_line(exc) == line
    assert len(one_line(exc)) <= 300


# --- what each route records ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_each_searched_leaf_records_its_class(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_sites_leaves import StemBlockHead

    with leaves(PadFuse):
        _only(route, monkeypatch)
        (entry,) = _search(StemBlockHead().eval()).values()
    assert isinstance(entry, LeafGraph) and entry.frontend == route
    assert entry.kind == "tests.test_sites_leaves.PadFuse"


class Masked(nn.Module):
    """Takes an index tensor and a boolean mask: export must be handed tensors of the same dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor, order: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x.index_select(1, order).masked_fill(mask, 0.0)
        return self.fuse(torch.cat([x, torch.where(mask, x, y)], 1))


class MaskedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = Masked()
        self.register_buffer("order", torch.tensor([3, 2, 1, 0]))
        self.register_buffer("mask", torch.zeros(1, 4, 1, 1, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x), self.order, self.mask)


def test_export_of_a_leaf_taking_integer_and_boolean_tensors_finds_its_site(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _only("export", monkeypatch)
    with leaves(Masked):
        assert _routes(_search(MaskedModel().eval())) == ["export"]
        found = _sites(MaskedModel())
    assert [(s[0], [w for w, _, _ in s[2]]) for s in found] == [("block.fuse", [(0, 4), (4, 8)])]


class MapCat(nn.Module):
    """Concatenates a learned map (a parameter, one image's worth) to its input."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 2, 16, 16))
        self.fuse = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([x, self.pos], 1))


class MapCatModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = MapCat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


@pytest.mark.parametrize("route", ROUTES)
def test_a_parameter_concatenated_inside_a_leaf_is_a_subject_with_its_channels(
    route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = MapCatModel().eval()
    with leaves(MapCat):
        _only(route, monkeypatch)
        found = find(capture(model, torch.randn(1, 3, 16, 16), "fx"), model)
    (site,) = found.sites
    assert (site.layer, site.status) == ("block.fuse", "ok")
    assert [s.channels for s in site.subjects] == [(0, 4), (4, 6)]
    assert site.subjects[0].source == "stem"


def test_an_export_graph_whose_inputs_match_no_call_position_reads_them_as_sources(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When export's inputs cannot be matched to the call's arguments, each one is a source of its own."""
    import dataclasses

    from torch._subclasses.fake_tensor import FakeTensorMode

    from eqsurgeon.capture import _FUSING_TYPES, _Tracer
    from eqsurgeon.inline import inline_leaves
    from eqsurgeon.leaves import LeafSearch
    from tests.test_sites_leaves import StemBlockHead

    _only("export", monkeypatch)
    model = StemBlockHead().eval()
    with leaves(PadFuse):
        gm = torch.fx.GraphModule(model, _Tracer().trace(model))
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        search = LeafSearch(gm, mode, _FUSING_TYPES)
        search.propagate(mode.from_tensor(torch.randn(2, 3, 16, 16)))
    entry = search.children["block"]
    assert isinstance(entry, LeafGraph)
    flat, unsearched = inline_leaves(gm.graph, {"block": dataclasses.replace(entry, inputs={})})
    assert unsearched == ()
    (inner,) = [n for n in flat.nodes if n.op == "placeholder" and n.name != "x"]
    assert inner.target == "x" and tuple(inner.meta["val"].shape) == (2, 4, 16, 16)  # the leaf's input
    assert list(inner.meta["nn_module_stack"].values())[-1] == ("block", "tests.test_sites_leaves.PadFuse")
    assert not any(n.op == "call_module" and n.target == "block" for n in flat.nodes)  # inlined all the same
