"""Modules that symbolic tracing keeps opaque are searched inside: sites in them, across their boundary,
and the ones that cannot be searched are reported and fail `check`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon import registry
from eqsurgeon.api import MeasureOptions, analyze
from eqsurgeon.capture import capture
from eqsurgeon.checking import check
from eqsurgeon.records import Upsample
from eqsurgeon.report import analysis_to_dict
from eqsurgeon.sites import find
from tests.conftest import run_cli

BI2 = Upsample("bilinear", (2.0, 2.0), False)
FRONTENDS = ["fx", "export"]


@contextmanager
def leaves(*classes: type[nn.Module]) -> Iterator[None]:
    with registry.scoped():
        for cls in classes:
            registry.register_leaf_module(cls)
        yield


def findings(model: nn.Module, frontend: str, size: int = 16):
    model.eval()
    return find(capture(model, torch.randn(2, 3, size, size), frontend), model)


def layout(site):
    return [(s.channels, s.upsample) for s in site.subjects]


class PadFuse(nn.Module):
    """A block plain fx cannot enter: it pads odd widths (control flow on a size), then fuses."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c, c, 3, padding=1)
        self.fuse = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1))
        return self.fuse(torch.cat([x, self.proj(x)], 1))


class StemBlockHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = PadFuse(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_site_inside_a_registered_leaf_is_found_with_its_full_name(frontend):
    with leaves(PadFuse):
        cap = capture(StemBlockHead().eval(), torch.randn(2, 3, 16, 16), frontend)
        found = find(cap, StemBlockHead())
    if frontend == "fx":  # the leaf really is one call in the traced graph
        assert "block" in {str(n.target) for n in cap.graph_module.graph.nodes if n.op == "call_module"}
    (site,) = found.sites
    assert (site.layer, site.op, site.status) == ("block.fuse", "conv2d", "ok")
    assert layout(site) == [((0, 4), None), ((4, 8), None)]
    assert [s.source for s in site.subjects] == ["stem", "block.proj"]
    assert found.unsearched == ()


class DropConv(nn.Module):
    """Dropout then conv: the concat that feeds it is outside."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.conv = nn.Conv2d(c_in, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.drop(x)) if x.shape[1] > 1 else x


class ConcatOutsideConvInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.block = DropConv(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")
        return self.block(torch.cat([self.a(x), up], 1))


class CatFuse(nn.Module):
    """Concatenates its two inputs and fuses them; the upsample happens outside."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(10, 2, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        assert a.shape[-2:] == b.shape[-2:]
        return self.fuse(torch.cat([a, b], 1))


class UpsampleOutsideConcatInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.block = CatFuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.a(x), F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear"))


class CatOut(nn.Module):
    """Returns the concat (and one input) in a tuple: the fusing layer is outside."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([a, F.interpolate(b, size=a.shape[-2:], mode="bilinear")], 1), a


class ConcatInsideConvOutside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 2, stride=2)
        self.block = CatOut()
        self.fuse = nn.Conv2d(10, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat, _ = self.block(self.a(x), self.b(x))
        return self.fuse(cat)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize(
    ("model", "leaf", "layer"),
    [
        (ConcatOutsideConvInside, DropConv, "block.conv"),
        (UpsampleOutsideConcatInside, CatFuse, "block.fuse"),
        (ConcatInsideConvOutside, CatOut, "fuse"),
    ],
)
def test_sites_across_a_leaf_boundary(frontend, model, leaf, layer):
    with leaves(leaf):
        (site,) = findings(model(), frontend).sites
    assert (site.layer, site.status) == (layer, "ok")
    assert layout(site) == [((0, 4), None), ((4, 10), BI2)]
    assert [s.source for s in site.subjects] == ["a", "b"]


class Windowed(nn.Module):
    """Takes a size argument and branches on it, like timm's Twins attention."""

    def __init__(self, c: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.fuse = nn.Linear(2 * c, c)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = size
        pad = (self.window - w % self.window) % self.window
        grid = F.pad(x.view(b, h, w, c), (0, 0, 0, pad)) if pad else x.view(b, h, w, c)
        return self.fuse(torch.cat([grid, grid.flip(1)], -1))[:, :, :w].reshape(b, n, c)


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.block = Windowed(8, window=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        size = (t.shape[2], t.shape[3])
        return self.block(t.flatten(2).transpose(1, 2), size)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_leaf_with_a_size_argument_and_control_flow_on_it(frontend):
    with leaves(Windowed):
        found = findings(Tokens(), frontend)
    (site,) = found.sites
    assert (site.layer, site.op, site.channel_dim) == ("block.fuse", "linear", -1)
    assert layout(site) == [((0, 8), None), ((8, 16), None)]


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = PadFuse(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(self.stem(x)))


def test_site_in_a_leaf_that_runs_twice_is_skipped():
    with leaves(PadFuse):
        found = findings(Twice(), "fx").sites
    assert [(s.layer, s.status) for s in found] == [("block.fuse", "skipped")] * 2  # one per call
    assert all("runs 2 times" in str(s.reason) for s in found)


class Configured(nn.Module):
    """Same class, same shapes; whether it fuses depends on an attribute."""

    def __init__(self, c: int, fuse: bool) -> None:
        super().__init__()
        self.fuse_inputs = fuse
        self.conv = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, x.flip(-1)], 1) if self.fuse_inputs else torch.cat([x, x], 1) * 0.5
        return self.conv(y)


class TwoConfigs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.first = Configured(4, fuse=False)
        self.second = Configured(4, fuse=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(self.stem(x)))


def test_leaves_of_one_class_with_different_configurations_are_searched_apart():
    with leaves(Configured):
        found = findings(TwoConfigs(), "fx")
    assert [s.layer for s in found.sites] == ["second.conv"]


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = PadFuse(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) if x.shape[-1] > 0 else x


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.outer = Outer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.stem(x))


def test_leaf_inside_a_leaf_is_searched():
    with leaves(Outer, PadFuse):
        (site,) = findings(Nested(), "fx").sites
    assert site.layer == "outer.inner.fuse"
    assert [s.source for s in site.subjects] == ["stem", "outer.inner.proj"]


class Result:
    """A return type no tracer can build a graph output from (not a registered pytree)."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


class Unsearchable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> Result:
        return Result(self.fuse(torch.cat([x, F.avg_pool2d(x, 3, 1, 1)], 1)))


class WithUnsearchable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = Unsearchable()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).t)


def test_unsearchable_leaf_is_reported_and_fails_check_unless_allowed():
    with leaves(Unsearchable):
        fx_only = MeasureOptions(frontend="fx")
        a = analyze(WithUnsearchable(), [torch.randn(2, 3, 16, 16)], measure=fx_only).analysis
    assert a.frontend == "fx" and a.sites == ()
    (leaf,) = a.unsearched
    assert leaf.name == "block"
    assert "torch.fx:" in leaf.reason and "torch.export:" in leaf.reason
    strict = check(a)
    assert not strict.passed
    assert [(v.layer, v.passed) for v in strict.verdicts] == [("block", False)]
    assert check(a, allow_unsearched=True).passed
    assert analysis_to_dict(a)["unsearched_leaves"] == [{"name": "block", "reason": leaf.reason}]


def test_auto_turns_to_export_when_fx_leaves_a_leaf_unsearched():
    with leaves(Unsearchable):
        a = analyze(WithUnsearchable(), [torch.randn(2, 3, 16, 16)]).analysis
    assert (a.frontend, a.unsearched) == ("export", ())
    assert "block could not be searched under torch.fx" in str(a.fx_error)
    assert [s.layer for s in a.sites] == ["block.fuse"]


def test_searched_leaves_leave_the_model_unchanged():
    with leaves(PadFuse):
        model = StemBlockHead().eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        attrs = set(vars(model.block))
        findings(model, "fx")
    assert set(vars(model.block)) == attrs  # the tracer stored no constants on the user's module
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


CLI_MODEL = """
import torch
from torch import nn

import eqsurgeon


class Boxed:
    def __init__(self, t):
        self.t = t


@eqsurgeon.register_leaf_module
class BoxedFuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.fuse = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return Boxed(self.fuse(torch.cat([x, x.flip(-1)], 1)))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = BoxedFuse()

    def forward(self, x):
        return self.block(x).t


def model():
    return Model()
"""


def test_check_cli_fails_on_an_unsearched_leaf_unless_allowed(tmp_path, scoped_registry):
    spec = tmp_path / "boxed.py"
    spec.write_text(CLI_MODEL)  # registers BoxedFuse as a leaf when imported: undone by the fixture
    args = ["check", f"{spec}:model", "--input-size", "16x16", "--frontend", "fx"]
    strict = run_cli(*args)
    allowed = run_cli(*args, "--allow-unsearched")
    assert strict.exit_code == 1, strict.output
    assert "could not be searched" in strict.output and "--allow-unsearched" in strict.output
    assert "FAIL block" in strict.output
    assert allowed.exit_code == 0, allowed.output
