"""Parameter counts against the published figures and mmseg's config arithmetic; mmseg names and inits.

Counts are taken on the meta device (no memory, no init), with 150 classes and the auxiliary head, which
is how the Swin, ConvNeXt and Twins papers count their UPerNet models.
"""

from __future__ import annotations

import pytest
import torch

from eqsurgeon.zoo import create_model
from eqsurgeon.zoo.layers import ConvModule

# Published UPerNet totals (backbone + UPerHead + auxiliary FCNHead, 150 classes).
PUBLISHED_M = {
    "upernet_swin_tiny": 60.0,  # Swin paper, Table 3
    "upernet_swin_small": 81.0,
    "upernet_swin_base": 121.0,
    "upernet_convnext_tiny": 60.0,  # ConvNeXt paper, Table 4
    "upernet_convnext_small": 82.0,
    "upernet_convnext_base": 122.0,
    "upernet_twins_svt_small": 54.4,  # Twins paper, Table 6
    "upernet_twins_svt_base": 88.5,
    "upernet_twins_svt_large": 133.0,
}


def _count(name: str) -> int:
    with torch.device("meta"):
        model = create_model(name, num_classes=150)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_upernet_params_within_2_percent_of_published(name: str) -> None:
    published = PUBLISHED_M[name] * 1e6
    assert abs(_count(name) - published) / published < 0.02


# --- D8 ResNets: the count that mmseg's configs imply, derived layer by layer ---------------------------
NC = 150


def conv_module(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cin // groups * cout * k * k + 2 * cout  # conv without bias + BN (weight, bias)


def sep_conv_module(cin: int, cout: int, k: int) -> int:
    return conv_module(cin, cin, k, groups=cin) + conv_module(cin, cout, 1)


def conv_seg(channels: int) -> int:
    return channels * NC + NC


def resnet_v1c(blocks: tuple[int, int, int, int]) -> int:
    # ResNetV1c: deep stem 3→32→32→64 (3×3 convs, each + BN), then bottleneck stages of expansion 4.
    total = (3 * 32 + 32 * 32 + 32 * 64) * 9 + 2 * (32 + 32 + 64)
    inplanes = 64
    for planes, n in zip((64, 128, 256, 512), blocks, strict=True):
        for i in range(n):
            cin = inplanes if i == 0 else 4 * planes
            convs = cin * planes + 9 * planes * planes + planes * 4 * planes
            total += convs + 2 * (planes + planes + 4 * planes)  # conv1-3 + their BNs
            if i == 0:  # 1×1 projection shortcut + BN (dilation changes no shapes)
                total += inplanes * 4 * planes + 2 * 4 * planes
        inplanes = 4 * planes
    return total


AUX = conv_module(1024, 256, 3) + conv_seg(256)  # FCNHead(in 1024, 256 ch, num_convs=1, no concat)
HEADS = {
    "fcn": conv_module(2048, 512, 3) + conv_module(512, 512, 3) + conv_module(2048 + 512, 512, 3),
    "pspnet": 4 * conv_module(2048, 512, 1) + conv_module(2048 + 4 * 512, 512, 3),
    "deeplabv3": conv_module(2048, 512, 1)  # image pool
    + conv_module(2048, 512, 1)  # dilation 1
    + 3 * conv_module(2048, 512, 3)  # dilations 12, 24, 36
    + conv_module(5 * 512, 512, 3),
    "deeplabv3plus": conv_module(2048, 512, 1)
    + conv_module(2048, 512, 1)
    + 3 * sep_conv_module(2048, 512, 3)
    + conv_module(5 * 512, 512, 3)
    + conv_module(256, 48, 1)  # c1_bottleneck
    + sep_conv_module(512 + 48, 512, 3)
    + sep_conv_module(512, 512, 3),
}
DEPTHS = {"r50": (3, 4, 6, 3), "r101": (3, 4, 23, 3)}


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_d8_params_match_mmseg_config_arithmetic(head: str, depth: str) -> None:
    expected = resnet_v1c(DEPTHS[depth]) + HEADS[head] + conv_seg(512) + AUX
    assert _count(f"{head}_{depth}_d8") == expected


def test_resnet_v1c_arithmetic_matches_the_well_known_count() -> None:
    # torchvision's ResNet-50 has 25,557,032 parameters; drop its fc (2048·1000 + 1000) and swap the
    # 7×7 stem (3·64·49 + BN 128) for the deep stem to get ResNetV1c-50.
    deep_stem = (3 * 32 + 32 * 32 + 32 * 64) * 9 + 2 * (32 + 32 + 64)
    assert resnet_v1c(DEPTHS["r50"]) == 25_557_032 - 2_049_000 - (3 * 64 * 49 + 128) + deep_stem


# --- mmseg module names and initialization ------------------------------------------------------------
def test_uperhead_state_dict_keys_follow_mmseg() -> None:
    model = create_model("upernet_tiny")
    keys = set(model.state_dict())
    for key in (
        "decode_head.psp_modules.3.1.conv.weight",
        "decode_head.bottleneck.bn.running_var",
        "decode_head.lateral_convs.2.conv.weight",
        "decode_head.fpn_convs.0.bn.weight",
        "decode_head.fpn_bottleneck.conv.weight",
        "decode_head.conv_seg.bias",
        "auxiliary_head.convs.0.conv.weight",
        "auxiliary_head.conv_seg.weight",
    ):
        assert key in keys
    assert not any(k.endswith("conv.bias") for k in keys if k.startswith(("decode_head", "auxiliary")))
    bottleneck = model.decode_head.fpn_bottleneck
    assert [n for n, _ in bottleneck.named_children()] == ["conv", "bn", "activate"]
    assert isinstance(model.decode_head.dropout, torch.nn.Dropout2d) and model.decode_head.dropout.p == 0.1


def test_head_initialization_follows_mmseg() -> None:
    torch.manual_seed(0)
    model = create_model("pspnet_r50_d8")
    seg = model.decode_head.conv_seg
    assert seg.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(seg.bias) == 0
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels · k · k)).
    conv = model.decode_head.bottleneck.conv
    assert conv.weight.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    for m in model.decode_head.modules():
        if isinstance(m, ConvModule):
            assert torch.all(m.bn.weight == 1) and torch.all(m.bn.bias == 0)
    assert model.decode_head.align_corners is False
