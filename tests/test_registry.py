"""Leaf-module, autowrap and upsample registries change what capture and site finding see."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon import registry
from eqsurgeon.capture import capture
from eqsurgeon.errors import CaptureError
from eqsurgeon.records import Upsample
from eqsurgeon.sites import find_sites


class Gate(nn.Module):
    """Untraceable by fx (data-dependent Python control flow), harmless as a leaf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-1] > 0 else -x


class WithGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()
        self.fuse = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.gate(x)[:, :, ::2, ::2], scale_factor=2.0, mode="bilinear")
        return self.fuse(torch.cat([x, up], 1))


def my_upsample(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    if x.shape[-1] < 1:  # shape-dependent: fx could not trace into it
        raise ValueError("empty")
    return F.interpolate(x, scale_factor=2.0, mode=mode)


class WithCustomUpsample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([x, my_upsample(x[:, :, ::2, ::2], mode="bicubic")], 1))


def test_timm_notrace_modules_are_leaves():
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules

    assert set(get_notrace_modules()) <= set(registry.leaf_modules())
    assert set(get_notrace_functions()) <= set(registry.autowrap_functions())


def test_forced_fx_names_the_failure_and_the_fix():
    with pytest.raises(CaptureError, match=r"torch.fx cannot trace.*--frontend export"):
        capture(WithGate(), torch.randn(2, 3, 8, 8), "fx")


def test_registered_leaf_module_makes_fx_succeed(scoped_registry):
    x = torch.randn(2, 3, 8, 8)
    assert capture(WithGate(), x).frontend == "export"
    registry.register_leaf_module(Gate)
    cap = capture(WithGate(), x)
    assert cap.frontend == "fx"
    (site,) = find_sites(WithGate(), x)
    assert site.subjects[1].upsample == Upsample("bilinear", (2.0, 2.0), False)


def test_the_scoped_registry_undoes_registrations():
    from eqsurgeon.registry import leaf_modules, scoped

    with scoped():
        registry.register_leaf_module(Gate)
        assert Gate in leaf_modules()
    assert Gate not in leaf_modules()


def test_registered_upsample_function_is_one_node_with_its_mode(scoped_registry):
    x = torch.randn(2, 3, 8, 8)
    registry.register_upsample_function(my_upsample, default_mode="bilinear")
    cap = capture(WithCustomUpsample(), x, "fx")
    assert any(n.target is my_upsample for n in cap.graph_module.graph.nodes)
    (site,) = find_sites(WithCustomUpsample(), x, "fx")
    assert site.subjects[1].upsample == Upsample("bicubic", (2.0, 2.0), False)


def test_timm_swin_blocks_are_known_leaves_so_fx_captures_swin():
    from eqsurgeon.zoo import create_model

    model = create_model("upernet_swin_tiny", num_classes=4, aux_head=False).eval()
    x = torch.randn(2, 3, 64, 64)
    cap = capture(model, x)
    assert (cap.frontend, cap.fx_error) == ("fx", None)
    with torch.no_grad():
        torch.testing.assert_close(cap.as_module()(x), model(x), rtol=0, atol=0)
    assert [len(s.subjects) for s in find_sites(model, x)] == [5, 4]
