"""How ``OpView`` reads either frontend's nodes, and the op vocabulary of ``op_tables``, pinned by the sites
and add sites that ``eqsurgeon.sites.find`` reports on real captured graphs (and a few hand-built ones)."""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from eqsurgeon import registry
from eqsurgeon.capture import Captured, capture
from eqsurgeon.graph_ops import OpView, UpsampleCall, clean_path
from eqsurgeon.records import Upsample
from eqsurgeon.sites import Findings, find

FRONTENDS = ["fx", "export"]
NEAREST2 = Upsample("nearest", (2.0, 2.0), None)
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _cat(a: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, up], 1)


def _nearest(t: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t, scale_factor=2.0)


class _Pair(nn.Module):
    """``a`` at full size and ``b`` at half size upsampled ×2 (4 channels each), ``join``-ed, through
    ``between``, into ``head`` (a 1×1 conv taking 8 channels unless given)."""

    def __init__(
        self,
        join: Callable[..., torch.Tensor] = _cat,
        head: nn.Module | None = None,
        between: Callable[..., torch.Tensor] | nn.Module | None = None,
        dims: int = 2,
        up: Callable[..., torch.Tensor] = _nearest,
    ) -> None:
        super().__init__()
        conv = _CONV[dims]
        self.a, self.b = conv(3, 4, 1), conv(3, 4, 1, stride=2)
        self.join, self.up = join, up
        self.between = between if between is not None else nn.Identity()
        self.head = head if head is not None else conv(8, 2, 1)
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.between(self.join(self.a(x), self.up(self.b(x)))))

    def example(self) -> torch.Tensor:
        return torch.randn(2, 3, *[8] * self.dims)


def _find(model: _Pair, frontend: str) -> Findings:
    return find(capture(model, model.example(), frontend), model)


def _layout(subjects: tuple) -> list[tuple]:
    return [(s.channels, s.source, s.upsample) for s in subjects]


PAIR = [((0, 4), "a", None), ((4, 8), "b", NEAREST2)]


# --- Residual adds: which spellings merge two maps by addition, and which do not -------------------------


def _iadd(a: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    a += up
    return a


MERGES = {
    "a + b": lambda a, up: a + up,
    "a += b": _iadd,
    "torch.add": torch.add,
    "a.add(b)": lambda a, up: a.add(up),
    "a.add_(b)": lambda a, up: a.add_(up),
    "stack(xs, 0).sum(0)": lambda a, up: torch.stack([a, up], 0).sum(0),
    "stack(xs).sum(dim=(0,))": lambda a, up: torch.stack([a, up]).sum(dim=(0,)),
    "torch.sum(stack(xs), 0)": lambda a, up: torch.sum(torch.stack([a, up]), 0),
}


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("spelling", MERGES)
def test_every_spelling_of_a_residual_add_is_an_add_site_of_both_terms(frontend, spelling):
    (add,) = _find(_Pair(MERGES[spelling], head=nn.Identity()), frontend).add_sites
    assert _layout(add.inputs) == [((0, 4), "a", None), ((0, 4), "b", NEAREST2)]


NOT_MERGES = {
    "a stack summed over every element": lambda a, up: torch.stack([a, up]).sum(),
    "a stack summed over its batch dim": lambda a, up: torch.stack([a, up]).sum(1),
    "the max over a stack": lambda a, up: torch.amax(torch.stack([a, up]), 0),
    "the first map of a stack": lambda a, up: torch.stack([a, up])[0],
    "a concat summed over dim 0": lambda a, up: torch.cat([a, up]).sum(0),
    "a stack on dim 1 (by position) summed over dim 0": lambda a, up: torch.stack([a, up], 1).sum(0),
    "a stack on dim 1 (by keyword) summed over dim 0": lambda a, up: torch.stack([a, up], dim=1).sum(0),
}


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("case", NOT_MERGES)
def test_reductions_that_are_no_merge_of_the_stacked_maps_are_no_add_site(frontend, case):
    """Only a sum over dim 0 of maps stacked on dim 0 adds them up; other reductions are no merge."""
    assert _find(_Pair(NOT_MERGES[case], head=nn.Identity()), frontend).add_sites == ()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_python_sum_of_two_maps_is_one_add_site_with_the_upsampled_term(frontend):
    """``sum([a, b])`` runs ``0 + a`` first (no add site: 0 is no map), then ``(0 + a) + b``: one add site."""
    (add,) = _find(_Pair(lambda a, up: sum([a, up]), head=nn.Identity()), frontend).add_sites
    assert [s.upsample for s in add.inputs] == [None, NEAREST2]
    assert add.inputs[1].source == "b"


class _KeywordOnlySum(_Pair):
    """A concat site next to ``torch.sum(input=stack(xs), dim=0)``, whose node has keyword arguments only."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, up = self.a(x), _nearest(self.b(x))
        return self.head(torch.cat([a, up], 1)), torch.sum(input=torch.stack([a, up]), dim=0)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_sum_with_keyword_arguments_only_does_not_stop_the_search(frontend):
    """Export reads the keyword-only sum as a merge and symbolic tracing does not; either way the search
    goes on and finds the concat site beside it."""
    (site,) = _find(_KeywordOnlySum(), frontend).sites
    assert (site.layer, site.status) == ("head", "ok") and _layout(site.subjects) == PAIR


class _Merge(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class _NamedAdds(_Pair):
    """One add inside the submodule ``merge``, one in the model's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.merge = _Merge()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, up = self.a(x), _nearest(self.b(x))
        return self.merge(a, up) + up


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_an_add_site_is_named_by_its_module_path_and_node(frontend):
    """``merge:add`` inside a submodule; the bare node name for an add in the model's own forward."""
    names = [add.name for add in _find(_NamedAdds(), frontend).add_sites]
    assert names == ["merge:add", "add_1"]


# --- Concats: their inputs and their dim ----------------------------------------------------------------


class _InputAndUp(_Pair):
    """The model's raw input concatenated with an upsampled map: the input has no module."""

    def __init__(self) -> None:
        super().__init__(head=nn.Conv2d(7, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([x, _nearest(self.b(x))], 1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_the_raw_input_is_a_subject_named_after_the_input(frontend):
    (site,) = _find(_InputAndUp(), frontend).sites
    assert site.status == "ok"
    assert _layout(site.subjects) == [((0, 3), "x", None), ((3, 7), "b", NEAREST2)]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_concat_without_a_dim_joins_the_batch_and_is_no_site(frontend):
    model = _Pair(lambda a, up: torch.cat([a, up]), head=nn.Conv2d(4, 2, 1))
    assert _find(model, frontend).sites == ()


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("cat", [torch.cat, torch.concat, torch.concatenate], ids=lambda f: f.__name__)
def test_every_concat_function_is_a_site(frontend, cat):
    (site,) = _find(_Pair(lambda a, up: cat([a, up], 1)), frontend).sites
    assert (site.layer, site.status) == ("head", "ok") and _layout(site.subjects) == PAIR


def test_a_graph_with_shapes_from_shape_prop_only_is_searched():
    """``ShapeProp`` records ``tensor_meta`` (no fake ``val``): its shapes are read all the same."""
    model = _Pair()
    gm = fx.symbolic_trace(model)
    ShapeProp(gm).propagate(model.example())
    assert all("val" not in n.meta for n in gm.graph.nodes)
    (site,) = find(Captured(gm, "fx"), model).sites
    assert (site.layer, site.status) == ("head", "ok") and _layout(site.subjects) == PAIR


# --- Fusing layers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize(
    ("dims", "kind", "op"),
    [
        (1, nn.Conv1d, "conv1d"),
        (3, nn.Conv3d, "conv3d"),
        (1, nn.ConvTranspose1d, "conv_transpose1d"),
        (2, nn.ConvTranspose2d, "conv_transpose2d"),
        (3, nn.ConvTranspose3d, "conv_transpose3d"),
    ],
)
def test_every_conv_kind_fuses_and_is_named_by_its_op(frontend, dims, kind, op):
    model = _Pair(head=kind(8, 2, 2, stride=2), dims=dims)
    (site,) = _find(model, frontend).sites
    assert (site.layer, site.op, site.groups, site.status) == ("head", op, 1, "ok")
    assert [s.channels for s in site.subjects] == [(0, 4), (4, 8)]


class _FunctionalHead(nn.Module):
    """``fn(x, w)`` with ``w`` a buffer: a functional conv that no module owns."""

    def __init__(self, fn: Callable[..., torch.Tensor], weight_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.fn = fn
        self.register_buffer("w", torch.randn(weight_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.w)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize(
    ("dims", "fn", "weight_shape", "op"),
    [
        (1, F.conv1d, (2, 8, 1), "conv1d"),
        (3, F.conv3d, (2, 8, 1, 1, 1), "conv3d"),
        (1, F.conv_transpose1d, (8, 2, 1), "conv_transpose1d"),
        (2, F.conv_transpose2d, (8, 2, 1, 1), "conv_transpose2d"),
        (3, F.conv_transpose3d, (8, 2, 1, 1, 1), "conv_transpose3d"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_every_functional_conv_is_a_skipped_site_named_by_its_op(frontend, dims, fn, weight_shape, op):
    (site,) = _find(_Pair(head=_FunctionalHead(fn, weight_shape), dims=dims), frontend).sites
    assert (site.op, site.status) == (op, "skipped")
    assert f"functional {op} with no module of its own" in site.reason
    assert [s.channels for s in site.subjects] == [(0, 4), (4, 8)]


def _dropout_then_cast(a: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    # Monte-Carlo dropout (on at inference too) and a float64 round trip between concat and layer.
    return F.dropout(torch.cat([a, up], 1), 0.1, training=True).double().float()


def test_a_decomposed_program_with_dropout_on_reads_like_the_exported_one():
    """Core ATen spells dropout ``native_dropout`` (its output is element 0 of a pair), casts ``_to_copy``
    and convs ``convolution``: a ConvTranspose2d is still found through them, under its own op."""
    model = _Pair(_dropout_then_cast, head=nn.ConvTranspose2d(8, 2, 2, stride=2))
    program = torch.export.export(model, (model.example(),), strict=False).run_decompositions()
    targets = {str(n.target) for n in program.graph.nodes}
    assert {"aten.native_dropout.default", "aten._to_copy.default", "aten.convolution.default"} <= targets
    params = dict(program.graph_signature.inputs_to_parameters)
    (site,) = find(Captured(program.graph_module, "export", None, params, program), model).sites
    assert (site.layer, site.op, site.status) == ("head", "conv_transpose2d", "ok")
    assert _layout(site.subjects) == PAIR


# --- Upsampling: mode and align_corners from every spelling -------------------------------------------


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize(
    ("dims", "kwargs", "expected"),
    [
        (1, {"mode": "nearest"}, ("nearest", None)),
        (3, {"mode": "nearest"}, ("nearest", None)),
        (2, {"mode": "nearest-exact"}, ("nearest-exact", None)),
        (1, {"mode": "linear", "align_corners": True}, ("linear", True)),
        (2, {"mode": "bilinear", "antialias": True}, ("bilinear", False)),
        (2, {"mode": "bicubic", "align_corners": True}, ("bicubic", True)),
        (2, {"mode": "bicubic", "antialias": True}, ("bicubic", False)),
        (3, {"mode": "trilinear"}, ("trilinear", False)),
    ],
    ids=lambda v: str(v),
)
def test_every_interpolation_mode_is_read_with_its_align_corners(frontend, dims, kwargs, expected):
    model = _Pair(dims=dims, up=lambda t: F.interpolate(t, scale_factor=2.0, **kwargs))
    (site,) = _find(model, frontend).sites
    assert site.subjects[1].upsample == Upsample(expected[0], (2.0,) * dims, expected[1])


def resize(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """A project's own ``resize`` with F.interpolate's signature (registered in the tests below)."""
    return F.interpolate(x, size, scale_factor, mode, align_corners)


class _Spellings(nn.Module):
    """Maps at half size, each upsampled ×2 by its own ``ups[i]``, concatenated and fused."""

    def __init__(self, *ups: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.ups = ups
        self.convs = nn.ModuleList(nn.Conv2d(3, 2, 1, stride=2) for _ in ups)
        self.fuse = nn.Conv2d(2 * len(ups), 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([up(conv(x)) for up, conv in zip(self.ups, self.convs)], 1))


def _upsamples(model: _Spellings, frontend: str) -> list[Upsample | None]:
    (site,) = find(capture(model, torch.randn(2, 3, 8, 8), frontend), model).sites
    return [s.upsample for s in site.subjects]


def test_a_registered_upsample_function_reads_its_mode_by_position_keyword_or_default(scoped_registry):
    """Recorded as one fx node, ``resize`` is read by its arguments: no mode → the registered default, the
    mode as 4th positional argument, mode and align_corners by position or by keyword."""
    registry.register_upsample_function(resize, default_mode="nearest")
    model = _Spellings(
        lambda t: resize(t, None, 2.0),
        lambda t: resize(t, None, 2.0, "bilinear"),
        lambda t: resize(t, None, 2.0, "bilinear", True),
        lambda t: resize(t, scale_factor=2.0, mode="bicubic", align_corners=True),
    )
    cap = capture(model, torch.randn(2, 3, 8, 8), "fx")
    assert sum(n.target is resize for n in cap.graph.nodes) == 4
    assert _upsamples(model, "fx") == [
        NEAREST2,
        Upsample("bilinear", (2.0, 2.0), False),
        Upsample("bilinear", (2.0, 2.0), True),
        Upsample("bicubic", (2.0, 2.0), True),
    ]


def test_the_deprecated_upsample_aliases_as_graph_calls_read_their_implied_mode():
    """A graph that records ``F.upsample_bilinear`` / ``F.upsample_nearest`` / ``F.upsample`` as calls (fx
    traces through them unless they are autowrapped) reads their implied mode and align_corners."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    calls = [
        graph.call_function(F.upsample_bilinear, (x,), {"scale_factor": 2}),
        graph.call_function(F.upsample_nearest, (x,), {"scale_factor": 2}),
        graph.call_function(F.upsample, (x,), {"scale_factor": 2}),
        graph.call_function(F.upsample, (x, None, 2, "bicubic")),
    ]
    view = OpView(nn.Identity(), {})
    assert [view.upsample(n) for n in calls] == [
        UpsampleCall("bilinear", True),
        UpsampleCall("nearest", None),
        UpsampleCall("nearest", None),
        UpsampleCall("bicubic", False),
    ]


# --- Scale-keeping ops between the concat and the layer (op_tables' transparent vocabulary) --------------

KEEPING = {
    "F.dropout": lambda t: F.dropout(t, 0.1, True),
    "F.dropout(inplace)": lambda t: F.dropout(t, 0.1, True, inplace=True),
    "F.dropout1d": (lambda t: F.dropout1d(t, 0.1, True), 1),
    "F.dropout2d": lambda t: F.dropout2d(t, 0.1, True),
    "F.dropout2d(inplace)": lambda t: F.dropout2d(t, 0.1, True, True),
    "F.dropout3d": (lambda t: F.dropout3d(t, 0.1, True), 3),
    "F.alpha_dropout": lambda t: F.alpha_dropout(t, 0.1, True),
    "F.alpha_dropout(inplace)": lambda t: F.alpha_dropout(t, 0.1, True, True),
    "F.feature_alpha_dropout": lambda t: F.feature_alpha_dropout(t, 0.1, True),
    "F.feature_alpha_dropout(inplace)": lambda t: F.feature_alpha_dropout(t, 0.1, True, True),
    "torch.dropout": lambda t: torch.dropout(t, 0.1, True),
    "torch.feature_dropout": lambda t: torch.feature_dropout(t, 0.1, True),
    "torch.alpha_dropout": lambda t: torch.alpha_dropout(t, 0.1, True),
    "torch.feature_alpha_dropout": lambda t: torch.feature_alpha_dropout(t, 0.1, True),
    "torch.clone": torch.clone,
    ".clone()": lambda t: t.clone(),
    ".contiguous()": lambda t: t.contiguous(),
    ".float()": lambda t: t.float(),
    ".half().float()": lambda t: t.half().float(),
    ".bfloat16().float()": lambda t: t.bfloat16().float(),
    ".double().float()": lambda t: t.double().float(),
    ".to(dtype)": lambda t: t.to(torch.float64).to(torch.float32),
    ".type(dtype)": lambda t: t.type(torch.float64).type(torch.float32),
    "nn.Dropout": nn.Dropout(0.1),
    "nn.Dropout1d": (nn.Dropout1d(0.1), 1),
    "nn.Dropout2d(inplace)": nn.Dropout2d(0.1, inplace=True),
    "nn.Dropout3d": (nn.Dropout3d(0.1), 3),
    "nn.AlphaDropout": nn.AlphaDropout(0.1),
    "nn.FeatureAlphaDropout": nn.FeatureAlphaDropout(0.1),
    "nn.Identity": nn.Identity(),
}


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("name", KEEPING)
def test_every_scale_keeping_op_between_concat_and_layer_passes(frontend, name):
    """Dropout of every kind (on, so that export records it), copies and casts keep the site."""
    between, dims = KEEPING[name] if isinstance(KEEPING[name], tuple) else (KEEPING[name], 2)
    (site,) = _find(_Pair(between=between, dims=dims), frontend).sites
    assert (site.layer, site.status) == ("head", "ok")
    assert [s.channels for s in site.subjects] == [(0, 4), (4, 8)]


@pytest.mark.parametrize(
    ("between", "target"),
    [(lambda t: t.type_as(t), "aten.type_as.default"), (lambda t: t[...], "aten.alias.default")],
    ids=["type_as", "[...]"],
)
def test_export_reads_type_as_and_a_whole_view_as_scale_keeping(between, target):
    model = _Pair(between=between)
    assert target in {str(n.target) for n in capture(model, model.example(), "export").graph.nodes}
    (site,) = _find(model, "export").sites
    assert (site.layer, site.status) == ("head", "ok")


# --- Naming: module paths as either frontend records them --------------------------------------------


def test_the_root_module_reads_as_no_path_in_every_spelling():
    """``L['self']`` (dynamo's source) and ``L__self__`` (export's key for the root) name the model itself."""
    assert clean_path("L['self']") == clean_path("L__self__") == ""
    assert clean_path("L['self'].head._modules['0']") == clean_path("head.0") == "head.0"


def test_describe_names_nodes_of_a_hand_built_graph():
    """A module call is named by its qualified target even without ``nn_module_stack``; other nodes by the
    innermost module on their stack (``path:node`` on request), else by the node's name."""
    model = nn.Sequential()
    model.add_module("head", nn.Sequential(nn.Conv2d(3, 3, 1)))
    graph = fx.Graph()
    x = graph.placeholder("x")
    conv = graph.call_module("head.0", (x,))
    add = graph.call_function(torch.add, (conv, x))
    add.meta["nn_module_stack"] = {
        "L__self__": ("", nn.Sequential),
        "L__self__head": ("L['self'].head", None),
    }
    out = graph.call_function(torch.relu, (add,))
    view = OpView(model, {})
    assert view.describe(conv) == "head.0"
    assert (view.describe(add), view.describe(add, with_node=True)) == ("head", "head:add")
    assert (view.describe(x), view.describe(out, with_node=True)) == ("x", "relu")
