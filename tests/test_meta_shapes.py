"""The meta shape pass: the same shapes, leaves and sites as the fake-tensor pass, and a clean fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from eqsurgeon import capture as capture_module
from eqsurgeon import registry
from eqsurgeon.capture import _FUSING_TYPES, _Tracer, capture
from eqsurgeon.leaves import is_opaque
from eqsurgeon.meta_shapes import meta_shapes
from eqsurgeon.registry import list_models, model_entry
from eqsurgeon.sites import find
from eqsurgeon.zoo import create_model
from fixtures import models as fixtures
from tests.test_sites_leaves import PadFuse, StemBlockHead

ZOO_TINY = [n for n in list_models() if "tiny" in model_entry(n).tags]
FIXTURES = {
    "nested_concat": fixtures.nested_concat,
    "upsampled_inner_concat": fixtures.upsampled_inner_concat,
    "channels_last_linear": fixtures.channels_last_linear,
    "upsample_variants": fixtures.upsample_variants,
    "shared_fuse": fixtures.shared_fuse,
    "fpn_add": fixtures.fpn_add,
    "iid_pyramid": fixtures.iid_pyramid,
}


def _traced(model: nn.Module) -> fx.GraphModule:
    return fx.GraphModule(model, _Tracer().trace(model))


def _shapes(gm: fx.GraphModule) -> dict[str, object]:
    def one(v: object) -> object:
        return (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else v

    out = {}
    for n in gm.graph.nodes:
        v = n.meta.get("val")
        out[n.name] = tuple(one(x) for x in v) if isinstance(v, (tuple, list)) else one(v)
    return out


def _found(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch, meta: bool):
    with monkeypatch.context() as m:
        if not meta:
            m.setattr(capture_module, "meta_shapes", lambda *a: None)  # the fake-tensor pass throughout
        cap = capture(model, x, "fx")
        return find(cap, model)


def test_every_node_gets_the_fake_passs_shape_and_the_model_keeps_its_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    model = create_model("upernet_tiny", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta_gm, fake_gm = _traced(model), _traced(model)
    assert meta_shapes(meta_gm, x, lambda m: False) == {}
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.no_grad():
        FakeTensorProp(fake_gm, mode).propagate(x)
    meta, fake = _shapes(meta_gm), _shapes(fake_gm)
    assert meta == fake and sum(v is not None for v in meta.values()) > 50
    assert all(v.device.type == "cpu" for v in model.state_dict().values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", sorted(FIXTURES) + [f"zoo:{n}" for n in ZOO_TINY])
def test_the_meta_pass_finds_what_the_fake_pass_finds(name, monkeypatch):
    model = (create_model(name[4:], num_classes=3) if name.startswith("zoo:") else FIXTURES[name]()).eval()
    x = torch.randn(2, 3, 64, 64)
    results = []
    real = capture_module.meta_shapes
    monkeypatch.setattr(capture_module, "meta_shapes", lambda *a: results.append(real(*a)) or results[-1])
    fast = _found(model, x, monkeypatch, meta=True)
    assert results and results[-1] is not None, "capture did not get its shapes from the meta pass"
    slow = _found(model, x, monkeypatch, meta=False)
    assert (fast.sites, fast.add_sites, fast.unsearched) == (slow.sites, slow.add_sites, slow.unsearched)
    assert fast.sites or fast.add_sites


def test_a_leaf_is_traced_on_fake_inputs_shaped_like_the_meta_ones():
    gm = _traced_with_leaf()
    x = torch.randn(2, 3, 16, 16)
    calls = meta_shapes(gm, x, lambda m: is_opaque(m, _FUSING_TYPES))
    assert calls is not None and list(calls) == ["block"]
    (args, kwargs) = calls["block"]
    assert [tuple(a.shape) for a in args] == [(2, 4, 16, 16)] and all(a.is_meta for a in args)
    assert kwargs == {}
    with registry.scoped():
        registry.register_leaf_module(PadFuse)
        found = find(capture(StemBlockHead().eval(), x, "fx"), StemBlockHead())
    (site,) = found.sites
    assert site.layer == "block.fuse" and [s.channels for s in site.subjects] == [(0, 4), (4, 8)]


def _traced_with_leaf() -> fx.GraphModule:
    with registry.scoped():
        registry.register_leaf_module(PadFuse)
        model = StemBlockHead().eval()
        return fx.GraphModule(model, _Tracer().trace(model))


class CpuConstant(nn.Module):
    """Builds a CPU tensor inside forward: meta tensors cannot mix with it, fake tensors can."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 2, stride=2)
        self.fuse = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        gain = torch.ones_like(a, device="cpu")  # a graph node: built at run time, on the CPU
        up = F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")
        return self.fuse(torch.cat([a * gain, up], 1))


def test_an_op_meta_cannot_run_falls_back_to_fake_tensors_with_no_value_left_behind(monkeypatch):
    model = CpuConstant().eval()
    x = torch.randn(2, 3, 16, 16)
    gm = _traced(model)
    assert meta_shapes(gm, x, lambda m: False) is None
    assert all("val" not in n.meta for n in gm.graph.nodes)
    found = _found(model, x, monkeypatch, meta=True)
    (site,) = found.sites
    assert site.layer == "fuse" and [s.channels for s in site.subjects] == [(0, 4), (4, 8)]
    assert site.subjects[1].upsample is not None and site.subjects[0].upsample is None


def test_leaves_searched_after_the_meta_pass_equal_the_fake_passs(monkeypatch):
    """timm's MobileVitBlock (a no-trace leaf holding three fusions) and a registered leaf."""
    from tests._corpus import smp_unet_mobilevit

    x = torch.randn(2, 3, 64, 64)
    unet = smp_unet_mobilevit().eval()
    fast, slow = (_found(unet, x, monkeypatch, meta=m) for m in (True, False))
    assert fast.sites == slow.sites and fast.unsearched == slow.unsearched == ()
    assert sum(".conv_fusion." in s.layer for s in fast.sites) == 3
    with registry.scoped():
        registry.register_leaf_module(PadFuse)
        model = StemBlockHead().eval()
        fast, slow = (_found(model, x[..., :15], monkeypatch, meta=m) for m in (True, False))  # odd width
    assert fast.sites == slow.sites and [s.layer for s in fast.sites] == ["block.fuse"]


class ConstantGain(nn.Module):
    """A plain tensor attribute of a module the graph also calls whole: the GraphModule keeps that
    module as it is, so the tensor is neither parameter nor buffer there and functional_call skips it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 2, stride=2)
        self.fuse = nn.Conv2d(8, 2, 1)
        self.fuse.gain = torch.full((2, 4, 16, 16), 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.b(x), scale_factor=2.0, mode="bilinear")
        return self.fuse(torch.cat([self.a(x) * self.fuse.gain, up], 1))


def test_a_tensor_attribute_runs_on_meta_as_a_meta_copy():
    model = ConstantGain().eval()
    gm = _traced(model)
    assert "fuse.gain" not in dict(gm.named_buffers())
    assert meta_shapes(gm, torch.randn(2, 3, 16, 16), lambda m: False) == {}
    (gain,) = (n for n in gm.graph.nodes if n.op == "get_attr")
    assert gain.meta["val"].is_meta and tuple(gain.meta["val"].shape) == (2, 4, 16, 16)
    assert model.fuse.gain.device.type == "cpu" and bool((model.fuse.gain == 2).all())


def test_both_passes_give_the_same_capture_record_with_an_unsearchable_leaf(monkeypatch):
    from tests.test_sites_leaves import Unsearchable, WithUnsearchable

    x = torch.randn(2, 3, 16, 16)
    caps = []
    for meta in (True, False):
        with registry.scoped(), monkeypatch.context() as m:
            registry.register_leaf_module(Unsearchable)
            if not meta:
                m.setattr(capture_module, "meta_shapes", lambda *a: None)
            caps.append(capture(WithUnsearchable().eval(), x, "fx"))
    for cap in caps:
        assert cap.frontend == "fx" and isinstance(cap.graph_module, fx.GraphModule)
        assert [u.name for u in cap.unsearched] == ["block"]
        assert "torch.fx:" in cap.unsearched[0].reason and "torch.export:" in cap.unsearched[0].reason
