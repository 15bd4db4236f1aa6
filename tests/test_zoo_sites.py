"""The fusion sites each zoo head contains, as ``eqsurgeon.find_sites`` reports them, and the scale
disequilibrium of an untrained UPerNet.

Full-size models are captured on the meta device (shapes only), which takes about a second each; the
upsample factors are read at 256×256 so every level of the pyramid is larger than one pixel.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqsurgeon.api import analyze
from eqsurgeon.inputs import synthetic_batches
from eqsurgeon.records import FusionSite
from eqsurgeon.sites import find_sites
from eqsurgeon.zoo import create_model

SIZE = 256


def _sites(name: str) -> list[FusionSite]:
    with torch.device("meta"):
        model = create_model(name).eval()
    return find_sites(model, torch.empty(1, 3, SIZE, SIZE, device="meta"))


def _factors(site: FusionSite) -> list[float | None]:
    return [s.upsample.factor[0] if s.upsample else None for s in site.subjects]


@pytest.mark.parametrize("name", ["upernet_convnext_tiny", "upernet_twins_svt_small", "upernet_tiny"])
def test_uperhead_has_ppm_and_fpn_sites(name: str) -> None:
    sites = _sites(name)
    assert [s.layer for s in sites] == ["decode_head.bottleneck.conv", "decode_head.fpn_bottleneck.conv"]
    assert all(s.ok and s.op == "conv2d" and s.groups == 1 for s in sites)
    ppm, fpn = sites
    # PPM: C5 as is, then the four pooled branches (scales 1, 2, 3, 6) resized back to C5's 8×8.
    assert _factors(ppm)[0] is None
    assert _factors(ppm)[1:] == pytest.approx([8.0, 4.0, 8 / 3, 4 / 3], rel=1e-3)
    assert all(s.upsample.mode == "bilinear" for s in ppm.subjects[1:])
    # FPN: P2 at ×1, then P3, P4, P5 upsampled ×2, ×4, ×8.
    assert _factors(fpn) == [None, 2.0, 4.0, 8.0]
    assert all(s.width == fpn.subjects[0].width for s in fpn.subjects)


@pytest.mark.parametrize("name", ["pspnet_r50_d8", "pspnet_tiny"])
def test_psphead_has_one_site_with_five_inputs(name: str) -> None:
    (site,) = _sites(name)
    assert site.layer == "decode_head.bottleneck.conv"
    assert len(site.subjects) == 5
    assert _factors(site)[0] is None and all(f is not None for f in _factors(site)[1:])


@pytest.mark.parametrize("name", ["deeplabv3_r50_d8", "deeplabv3_tiny"])
def test_aspphead_has_one_site_image_pool_upsampled(name: str) -> None:
    (site,) = _sites(name)
    assert site.layer == "decode_head.bottleneck.conv"
    assert _factors(site) == [SIZE / 8, None, None, None, None]  # image pool 1×1 → the D8 map


@pytest.mark.parametrize("name", ["deeplabv3plus_r101_d8", "deeplabv3plus_tiny"])
def test_sepaspphead_has_aspp_and_decoder_sites(name: str) -> None:
    aspp, decoder = _sites(name)
    assert aspp.layer == "decode_head.bottleneck.conv" and len(aspp.subjects) == 5
    assert decoder.layer == "decode_head.sep_bottleneck.0.depthwise_conv.conv"
    width = decoder.subjects[-1].channels[1]
    assert decoder.groups == width  # depthwise: channels 512 + 48 in the full-size model
    assert _factors(decoder) == [2.0, None]  # stride-8 ASPP output up ×2, c1 at stride 4
    if name.endswith("_d8"):
        assert [s.width for s in decoder.subjects] == [512, 48]


@pytest.mark.parametrize("name", ["fcn_r50_d8", "fcn_tiny"])
def test_fcnhead_concat_input_has_one_site_nothing_upsampled(name: str) -> None:
    (site,) = _sites(name)
    assert site.layer == "decode_head.conv_cat.conv"
    assert _factors(site) == [None, None]


def test_segformer_head_fuses_four_stages() -> None:
    (site,) = _sites("segformer_pvt_v2_b0")
    assert site.layer == "decode_head.fusion_conv.conv"
    assert _factors(site)[1:] == [2.0, 4.0, 8.0]


class _AuxOnly(nn.Module):
    """Backbone → one head, so a head that never runs in eval mode can be captured on its own."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = getattr(model, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@pytest.mark.parametrize("name", ["upernet_tiny", "fcn_tiny"])
def test_auxiliary_fcnhead_has_no_site(name: str) -> None:
    model = create_model(name)
    x = torch.randn(1, 3, 64, 64)
    assert find_sites(_AuxOnly(model, "auxiliary_head"), x) == []
    assert len(find_sites(_AuxOnly(model, "decode_head"), x)) >= 1  # the same wrapper does find sites


@pytest.mark.slow
def test_untrained_upernet_convnext_tiny_is_out_of_balance_at_fpn() -> None:
    torch.manual_seed(0)
    model = create_model("upernet_convnext_tiny")
    result = analyze(model, synthetic_batches((SIZE, SIZE), batch_size=2, count=1)).analysis
    assert result.bn_mode == "batch"  # BN has never seen data
    fpn = next(s for s in result.sites if s.layer == "decode_head.fpn_bottleneck.conv")
    assert result.var_ratio(fpn) > 1.3
