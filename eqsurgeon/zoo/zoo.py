"""The built-in zoo: importing this module registers every model.

Each name mirrors one MMSegmentation 1.x config (``mmseg_config``): the backbone comes from timm with the
config's drop-path rate, the decode and auxiliary heads are this package's mmseg-faithful ports.
Factories share one signature::

    factory(num_classes=150, pretrained=False, backbone_weights=None, aux_head=True) -> EncoderDecoder

``pretrained=True`` downloads timm's ImageNet weights and needs network access (never required);
``backbone_weights=FILE`` loads a local timm-format backbone checkpoint instead. The ``*_tiny`` models
keep each head's structure at toy widths on timm's test backbones, for tests, demos and the trainer's
smoke runs.

>>> from eqsurgeon.zoo import create_model
>>> model = create_model("upernet_tiny", num_classes=5).eval()
>>> import torch
>>> model(torch.randn(1, 3, 64, 96)).shape
torch.Size([1, 5, 64, 96])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from eqsurgeon.registry import register_model
from eqsurgeon.zoo.aspp import ASPPHead, DepthwiseSeparableASPPHead
from eqsurgeon.zoo.backbones import TimmBackbone
from eqsurgeon.zoo.heads import FCNHead, PSPHead, UPerHead
from eqsurgeon.zoo.segformer import SegformerHead
from eqsurgeon.zoo.segmentor import EncoderDecoder

_CFG = "configs/"


@dataclass(frozen=True)
class BackboneSpec:
    """A timm backbone as a zoo config uses it."""

    timm_name: str
    out_norm: str | None = None
    timm_kwargs: dict[str, object] = field(default_factory=dict)
    out_indices: tuple[int, ...] = (0, 1, 2, 3)
    norm_between_stages: bool = False  # mmseg's Twins SVT: the next stage sees the normalized output


@dataclass(frozen=True)
class HeadSpec:
    """Decode-head kind and widths; ``aux_channels=0`` means no auxiliary head."""

    kind: str  # "uper" | "fcn" | "psp" | "aspp" | "sepaspp" | "segformer"
    channels: int = 512
    aux_channels: int = 256
    c1_channels: int = 48


Factory = Callable[..., nn.Module]

# Swin: window 7 at the ADE20K crop of 512 (timm sizes its windows from img_size); any multiple of 32
# works because strict_img_size=False pads each stage to whole windows and builds masks per forward.
_SWIN = {"img_size": 512, "strict_img_size": False, "drop_path_rate": 0.3}
_D8 = {"output_stride": 8}


def _twins(drop_path_rate: float) -> dict[str, object]:
    # mmseg's Twins builds every LayerNorm from norm_cfg=dict(type="LN"): eps 1e-5 (timm's blocks: 1e-6).
    return {"drop_path_rate": drop_path_rate, "norm_layer": nn.LayerNorm}

_RES_IDX = (1, 2, 3, 4)  # timm's level 0 is the stride-2 stem; mmseg's out_indices (0..3) are layer1..4

_UPERNETS: dict[str, tuple[BackboneSpec, str]] = {
    "swin_tiny": (
        BackboneSpec("swin_tiny_patch4_window7_224", "layernorm", _SWIN),
        "swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
    ),
    "swin_small": (
        BackboneSpec("swin_small_patch4_window7_224", "layernorm", _SWIN),
        "swin/swin-small-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
    ),
    "swin_base": (
        BackboneSpec("swin_base_patch4_window7_224", "layernorm", _SWIN),
        "swin/swin-base-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
    ),
    # mmpretrain ConvNeXt in the mmseg configs: layer_scale_init_value=1.0 (timm's default is 1e-6).
    "convnext_tiny": (
        BackboneSpec("convnext_tiny", "layernorm2d", {"drop_path_rate": 0.4, "ls_init_value": 1.0}),
        "convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py",
    ),
    "convnext_small": (
        BackboneSpec("convnext_small", "layernorm2d", {"drop_path_rate": 0.3, "ls_init_value": 1.0}),
        "convnext/convnext-small_upernet_8xb2-amp-160k_ade20k-512x512.py",
    ),
    "convnext_base": (
        BackboneSpec("convnext_base", "layernorm2d", {"drop_path_rate": 0.4, "ls_init_value": 1.0}),
        "convnext/convnext-base_upernet_8xb2-amp-160k_ade20k-512x512.py",
    ),
    # Twins-SVT configs set norm_after_stage=True: a LayerNorm after every stage, whose output is both the
    # stage's feature and the next stage's input.
    "twins_svt_small": (
        BackboneSpec("twins_svt_small", "layernorm", _twins(0.2), norm_between_stages=True),
        "twins/twins_svt-s_uperhead_8xb2-160k_ade20k-512x512.py",
    ),
    "twins_svt_base": (
        BackboneSpec("twins_svt_base", "layernorm", _twins(0.2), norm_between_stages=True),
        "twins/twins_svt-b_uperhead_8xb2-160k_ade20k-512x512.py",
    ),
    "twins_svt_large": (
        BackboneSpec("twins_svt_large", "layernorm", _twins(0.3), norm_between_stages=True),
        "twins/twins_svt-l_uperhead_8xb2-160k_ade20k-512x512.py",
    ),
}

_D8_HEADS = {
    "fcn": ("fcn", "fcn/fcn_{depth}-d8_4xb4-160k_ade20k-512x512.py"),
    "pspnet": ("psp", "pspnet/pspnet_{depth}-d8_4xb4-160k_ade20k-512x512.py"),
    "deeplabv3": ("aspp", "deeplabv3/deeplabv3_{depth}-d8_4xb4-160k_ade20k-512x512.py"),
    "deeplabv3plus": ("sepaspp", "deeplabv3plus/deeplabv3plus_{depth}-d8_4xb4-160k_ade20k-512x512.py"),
}
# Where each model's numbers appear in the paper (scale-equalization.txt).
_D8_TABLES = {"r101": "Table 3", "r50": "Table 4"}


def build_segmentor(
    backbone: BackboneSpec,
    head: HeadSpec,
    num_classes: int = 150,
    pretrained: bool = False,
    backbone_weights: str | Path | None = None,
    aux_head: bool = True,
    input_size: tuple[int, int] = (512, 512),
) -> EncoderDecoder:
    """Assemble backbone + decode head (+ auxiliary FCNHead on stage 3) the way the mmseg configs do.

    Args:
        backbone: which timm model and how.
        head: which decode head and its widths.
        num_classes: output classes (150 for ADE20K).
        pretrained: timm's ImageNet weights (needs network access).
        backbone_weights: local timm-format backbone checkpoint (.safetensors or weights-only .pth).
        aux_head: build the auxiliary FCNHead (used only in training mode).
        input_size: the mirrored config's crop, recorded in ``eqsurgeon_cfg``.

    Returns:
        The model, in training mode like any fresh ``nn.Module``.

    >>> m = build_segmentor(BackboneSpec("test_convnext"), HeadSpec("fcn", 16, 8), num_classes=3)
    >>> type(m.decode_head).__name__, type(m.auxiliary_head).__name__
    ('FCNHead', 'FCNHead')
    """
    bb = TimmBackbone(
        backbone.timm_name,
        backbone.out_indices,
        pretrained=pretrained,
        weights=backbone_weights,
        out_norm=backbone.out_norm,
        norm_between_stages=backbone.norm_between_stages,
        **backbone.timm_kwargs,
    )
    chans = bb.channels
    if head.kind == "uper":
        decode: nn.Module = UPerHead(chans, head.channels, num_classes)
    elif head.kind == "segformer":
        decode = SegformerHead(chans, head.channels, num_classes)
    elif head.kind == "fcn":
        decode = FCNHead(chans[3], head.channels, num_classes, num_convs=2, concat_input=True, in_index=3)
    elif head.kind == "psp":
        decode = PSPHead(chans[3], head.channels, num_classes, in_index=3)
    elif head.kind == "aspp":
        decode = ASPPHead(chans[3], head.channels, num_classes, dilations=(1, 12, 24, 36), in_index=3)
    else:
        assert head.kind == "sepaspp", head.kind
        decode = DepthwiseSeparableASPPHead(
            chans[3], head.channels, num_classes, c1_in_channels=chans[0], c1_channels=head.c1_channels,
            dilations=(1, 12, 24, 36), in_index=3,
        )  # fmt: skip
    aux = None
    if aux_head and head.aux_channels > 0:
        aux = FCNHead(chans[2], head.aux_channels, num_classes, num_convs=1, concat_input=False, in_index=2)
    return EncoderDecoder(bb, decode, aux, input_size=input_size)


def _factory(name: str, backbone: BackboneSpec, head: HeadSpec, input_size: tuple[int, int]) -> Factory:
    def factory(
        num_classes: int = 150,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        aux_head: bool = True,
    ) -> EncoderDecoder:
        return build_segmentor(
            backbone, head, num_classes, pretrained, backbone_weights, aux_head, input_size
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"Zoo model {name}: timm {backbone.timm_name} + {head.kind} head (see build_segmentor)."
    return factory


def _register(
    name: str, backbone: BackboneSpec, head: HeadSpec, table: str = "", config: str = "",
    input_size: tuple[int, int] = (512, 512), tags: tuple[str, ...] = (),
) -> None:  # fmt: skip
    mmseg = _CFG + config if config else ""
    register_model(name, paper_table=table, mmseg_config=mmseg, tags=tags)(
        _factory(name, backbone, head, input_size)
    )


for _key, (_bb, _config) in _UPERNETS.items():
    _register(f"upernet_{_key}", _bb, HeadSpec("uper"), "Table 2", _config)

for _depth, _timm in (("r50", "resnet50c"), ("r101", "resnet101c")):
    for _prefix, (_kind, _config) in _D8_HEADS.items():
        _table = _D8_TABLES[_depth] if not (_depth == "r50" and _kind == "sepaspp") else ""
        _register(
            f"{_prefix}_{_depth}_d8", BackboneSpec(_timm, None, _D8, _RES_IDX), HeadSpec(_kind),
            _table, _config.format(depth=_depth),
        )  # fmt: skip

# SegFormer's MiT is not in timm; PVTv2 is its closest relative there (overlapping patch embedding,
# spatial-reduction attention, Mix-FFN with a depthwise conv, a LayerNorm after every stage).
_register(
    "segformer_pvt_v2_b0", BackboneSpec("pvt_v2_b0", None, {"drop_path_rate": 0.1}),
    HeadSpec("segformer", 256, 0), "", "segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py",
)  # fmt: skip
_register(
    "segformer_pvt_v2_b2", BackboneSpec("pvt_v2_b2", None, {"drop_path_rate": 0.1}),
    HeadSpec("segformer", 768, 0), "", "segformer/segformer_mit-b2_8xb2-160k_ade20k-512x512.py",
)  # fmt: skip

# Toy widths, same structure: for tests, the demo and the trainer's smoke runs (CPU, 128×128).
_TINY_CNX = BackboneSpec("test_convnext", "layernorm2d")
_TINY_RES = BackboneSpec("test_resnet", None, _D8, _RES_IDX)
_register("upernet_tiny", _TINY_CNX, HeadSpec("uper", 32, 16), input_size=(128, 128), tags=("tiny",))
_register("segformer_tiny", _TINY_CNX, HeadSpec("segformer", 32, 0), input_size=(128, 128), tags=("tiny",))
for _prefix, (_kind, _) in _D8_HEADS.items():
    _register(f"{_prefix}_tiny", _TINY_RES, HeadSpec(_kind, 32, 16, 8), input_size=(128, 128), tags=("tiny",))
