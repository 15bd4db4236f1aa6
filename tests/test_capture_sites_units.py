"""Small units of capture and site finding that the wider site tests leave unpinned: capture's messages
and fallbacks, add-site names and widths, which uses of a concat lead to a layer, and the site details
read at the concat (its width against the layer's, the upsample next to it)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon import registry
from eqsurgeon.capture import capture
from eqsurgeon.errors import CaptureError
from eqsurgeon.graph_ops import OpView
from eqsurgeon.records import Subject, Upsample
from eqsurgeon.sites import Findings, find

FRONTENDS = ["fx", "export"]
NEAREST2 = Upsample("nearest", (2.0, 2.0), None)
BI2 = Upsample("bilinear", (2.0, 2.0), False)
FIX = "make forward traceable or register untraceable submodules with eqsurgeon.register_leaf_module"


def findings(model: nn.Module, frontend: str, size: int = 16) -> Findings:
    model.eval()
    return find(capture(model, torch.randn(1, 3, size, size), frontend), model)


# --- capture -------------------------------------------------------------------------------------------


def test_an_unknown_frontend_is_refused_naming_the_choices():
    with pytest.raises(CaptureError) as err:
        capture(nn.Conv2d(3, 2, 1), torch.randn(1, 3, 8, 8), "onnx")
    assert str(err.value) == "unknown frontend 'onnx'; use one of auto, fx, export"


class DataDependent(nn.Module):
    """Python control flow on a tensor's values: neither frontend can capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        return a if a.sum() > 0 else -a


def test_when_both_frontends_fail_one_line_names_both_failures_and_the_fix():
    with pytest.raises(CaptureError) as err:
        capture(DataDependent(), torch.randn(1, 3, 8, 8))
    message = str(err.value)
    assert "\n" not in message
    pattern = r"cannot capture the model \(torch\.fx: TraceError: [^;]+; torch\.export: (\w+): .+\); (.+)"
    match = re.fullmatch(pattern, message)
    assert match, message
    assert match[1] not in ("NoneType", "CaptureError") and match[2] == FIX


def test_when_export_alone_fails_the_message_names_export_only():
    with pytest.raises(CaptureError) as err:
        capture(DataDependent(), torch.randn(1, 3, 8, 8), "export")
    message = str(err.value)
    assert message.startswith("cannot capture the model (torch.export: "), message
    assert "torch.fx" not in message and message.endswith(f"); {FIX}")


@torch.compiler.disable
def doubled(t: torch.Tensor) -> torch.Tensor:
    """Excluded from compilation: strict (dynamo) export refuses the call, non-strict export runs it."""
    return 2 * t


class CallsDisabled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.fuse = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        return self.fuse(torch.cat([a, doubled(a)], 1))


def test_export_traces_non_strictly_and_records_no_fx_failure_when_fx_was_not_tried():
    model = CallsDisabled()
    cap = capture(model, torch.randn(1, 3, 8, 8), "export")
    assert (cap.frontend, cap.fx_error) == ("export", None)  # None, not "": the report's fx_error is null
    assert [s.layer for s in find(cap, model).sites] == ["fuse"]


class Result:
    """A return type no tracer can build a graph output from: a leaf returning it cannot be searched."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


class Boxed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> Result:
        return Result(self.fuse(torch.cat([x, F.avg_pool2d(x, 3, 1, 1)], 1)))


class TwoBoxed(nn.Module):
    """Two leaves that no tracer can search; the whole model exports unless ``refuse_export``."""

    def __init__(self, refuse_export: bool = False) -> None:
        super().__init__()
        self.refuse_export = refuse_export
        self.stem = nn.Conv2d(3, 2, 1)
        self.first = Boxed()
        self.second = Boxed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.refuse_export and torch.compiler.is_exporting():
            raise RuntimeError("this model has no export path")
        return self.second(self.first(self.stem(x)).t).t


@pytest.fixture
def boxed_leaf() -> Iterator[None]:
    with registry.scoped():
        registry.register_leaf_module(Boxed)
        yield


def test_auto_names_every_unsearched_leaf_when_it_turns_to_export(boxed_leaf):
    cap = capture(TwoBoxed(), torch.randn(1, 3, 8, 8))
    assert (cap.frontend, cap.unsearched) == ("export", ())
    assert cap.fx_error == "leaf module(s) first, second could not be searched under torch.fx"


def test_auto_keeps_the_fx_graph_with_its_unsearched_leaves_when_export_fails_too(boxed_leaf):
    cap = capture(TwoBoxed(refuse_export=True), torch.randn(1, 3, 8, 8))
    assert (cap.frontend, cap.fx_error) == ("fx", None)
    assert [leaf.name for leaf in cap.unsearched] == ["first", "second"]


# --- add sites -----------------------------------------------------------------------------------------


class Merge(nn.Module):
    """An FPN merge inside a submodule: the add site is named by the module path and the add node."""

    def forward(self, lateral: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        return lateral + F.interpolate(top, scale_factor=2.0)


class Adds(nn.Module):
    """Adds of an upsampled map with: a map, flattened features, a per-column bias vector, a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.lateral = nn.Conv2d(3, 4, 1)
        self.top = nn.Conv2d(3, 4, 1, stride=2)
        self.merge = Merge()
        self.column_bias = nn.Parameter(torch.zeros(16))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lateral, top = self.lateral(x), self.top(x)
        up = F.interpolate(top, scale_factor=2.0)
        return (
            self.merge(lateral, top),
            up.flatten(1) + lateral.flatten(1),
            up + self.column_bias,
            up + 1.0,
        )


@pytest.fixture(params=FRONTENDS)  # per test: mutmut maps a mutant to the tests that call its function
def adds(request: pytest.FixtureRequest) -> tuple[str, Findings]:
    return request.param, findings(Adds(), request.param)


def test_an_add_site_in_a_submodule_is_named_by_its_path_and_node(adds):
    _, found = adds
    assert found.add_sites[0].name == "merge:add"
    assert found.add_sites[0].inputs == (Subject((0, 4), "lateral"), Subject((0, 4), "top", NEAREST2))


def test_add_inputs_span_their_channels_features_or_one_for_a_vector(adds):
    frontend, found = adds
    assert len(found.add_sites) == 3  # adding a constant to an upsampled map is no add site
    tokens, biased = found.add_sites[1:]
    assert [s.channels for s in tokens.inputs] == [(0, 4 * 16 * 16), (0, 4 * 16 * 16)]
    bias = "column_bias" if frontend == "fx" else "p_column_bias"
    assert biased.inputs == (Subject((0, 4), "top", NEAREST2), Subject((0, 1), bias))


# --- from a concat to its layers -----------------------------------------------------------------------


class SideUses(nn.Module):
    """The concat is also used by keyword and as a second argument (``.to(cat)``): only ``fuse`` takes it
    as its input, so ``post``, reached through the cast of another tensor, is no site."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1, stride=2)
        self.side = nn.Conv2d(3, 4, 1)
        self.post = nn.Conv2d(4, 2, 1)
        self.fuse = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat = torch.cat([self.a(x), F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")], 1)
        gate = torch.sigmoid(input=cat).mean()
        side = self.side(x).to(cat)
        return self.fuse(cat) * gate + self.post(side)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_only_uses_that_take_the_concat_as_input_lead_to_a_layer(frontend):
    (site,) = findings(SideUses(), frontend).sites
    assert (site.layer, site.status) == ("fuse", "ok")
    assert [(s.channels, s.upsample) for s in site.subjects] == [((0, 4), None), ((4, 8), BI2)]


class WrongDimFirst(nn.Module):
    """Each concat feeds first a layer that does not fuse the concat dim, then one that does."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1, stride=2)
        self.mixes_width = nn.Linear(16, 16)  # on dim -1 of a dim-1 concat
        self.fuses_channels = nn.Conv2d(8, 4, 1)
        self.mixes_channels = nn.Conv2d(4, 4, 1)  # on dim 1 of a dim -1 concat
        self.fuses_width = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, up = self.a(x), F.interpolate(self.b(x), scale_factor=2.0)
        by_channel = torch.cat([a, up], 1)
        by_width = torch.cat([a, up], -1)
        return (
            self.mixes_width(by_channel),
            self.fuses_channels(by_channel),
            self.mixes_channels(by_width),
            self.fuses_width(by_width),
        )


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_layer_that_mixes_another_dim_does_not_hide_the_one_that_fuses_the_concat(frontend):
    found = findings(WrongDimFirst(), frontend).sites
    assert [(s.layer, s.channel_dim, s.status) for s in found] == [
        ("fuses_channels", 1, "ok"),
        ("fuses_width", -1, "ok"),
    ]
    assert [s.channels for s in found[1].subjects] == [(0, 16), (16, 32)]


class SharedKernel(nn.Module):
    """``fuse``'s weight applied to a 12-channel concat in 3 groups: the layer itself takes 4 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 4, 1, stride=2)
        self.fuse = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.c(x), scale_factor=2.0)
        cat = torch.cat([self.a(x), self.b(x), up], 1)
        return F.conv2d(cat, self.fuse.weight, self.fuse.bias, groups=3)


def test_a_concat_wider_than_its_layer_is_skipped_with_both_widths():
    # Export names the weight's module; symbolic tracing sees a functional conv (skipped for that).
    (site,) = findings(SharedKernel(), "export").sites
    assert (site.layer, site.status) == ("fuse", "skipped")
    assert site.reason == "concat gives 12 channels but the layer takes 4"
    assert [s.channels for s in site.subjects] == [(0, 4), (4, 8), (8, 12)]


class TwoUpsamples(nn.Module):
    """A nearest ×2, then a bilinear ×2, on one concat input: the one next to the concat is its upsample."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1, stride=4)
        self.fuse = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        once = F.interpolate(self.b(x), scale_factor=2.0, mode="nearest")
        twice = F.interpolate(once, scale_factor=2.0, mode="bilinear")
        return self.fuse(torch.cat([self.a(x), twice], 1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_one_upsample_per_input_the_earlier_one_is_its_source(frontend):
    model = TwoUpsamples().eval()
    cap = capture(model, torch.randn(1, 3, 16, 16), frontend)
    (site,) = find(cap, model).sites
    _, up = site.subjects
    assert up.upsample == BI2
    view = OpView(model, cap.param_names)
    (nearest,) = [n for n in cap.graph.nodes if (call := view.upsample(n)) and call.mode == "nearest"]
    assert up.source == nearest.name  # the nearest upsample's output, not the conv ``b`` behind it


class Fuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1, stride=2)
        self.fuse = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")
        return self.fuse(torch.cat([self.a(x), up], 1))


def test_an_upsample_whose_input_shape_is_unknown_is_reported_without_a_factor():
    model = Fuse().eval()
    cap = capture(model, torch.randn(1, 3, 16, 16), "fx")
    (conv_b,) = [n for n in cap.graph.nodes if n.target == "b"]
    del conv_b.meta["val"]  # as for a node whose value no shape pass could record
    (site,) = find(cap, model).sites
    assert [s.upsample for s in site.subjects] == [None, Upsample("bilinear", (), False)]


class RunsBackwards(nn.Module):
    """Two concats whose layers run in the opposite order: sites come in the order the layers run."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1, stride=2)
        self.first = nn.Conv2d(8, 2, 1)
        self.second = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, up = self.a(x), F.interpolate(self.b(x), scale_factor=2.0)
        early, late = torch.cat([a, up], 1), torch.cat([up, a], 1)
        return self.first(late) + self.second(early)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_sites_come_in_the_order_their_layers_run(frontend):
    found = findings(RunsBackwards(), frontend).sites
    assert [(s.layer, s.subjects[0].source) for s in found] == [("first", "b"), ("second", "a")]
