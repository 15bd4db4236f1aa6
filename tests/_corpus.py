"""A corpus of public segmentation models, each with the fusion sites its library's source says it has.

Built from transformers, segmentation_models_pytorch, torchvision and timm with random initialization and
tiny configurations (no downloads). Every entry writes down, from reading the library's code (versions:
transformers 5.24, segmentation-models-pytorch 0.6.0, torchvision 0.29, timm 1.0.31), where each concat
or add is and what reaches it; channel widths are derived from the configuration in the comments. The
rule applied is DESIGN.md's: a channel concat is a site at the conv/linear it reaches through
scale-preserving and channel-keeping ops; an add is reported when an interpolation reaches it through
scale-preserving ops only.

smp's models check that the input size is a multiple of the output stride with a Python ``if`` on the
input's shape, which symbolic tracing cannot follow; several entries turn that check off
(``requires_divisible_input_shape = False``) so that both frontends capture them, the rest keep it and are
captured by export (the ``auto`` fallback).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

Input = tuple[int, int, str | None]  # channel range [start, stop) and the upsample mode reaching it


@dataclass(frozen=True)
class Site:
    """An expected fusion site: the fusing layer and its concat inputs in channel order."""

    layer: str
    inputs: tuple[Input, ...]
    op: str = "conv2d"
    channel_dim: int = 1


@dataclass(frozen=True)
class Add:
    """An expected upsample → add fusion: the add's module path, and per term (width, upsample mode)."""

    at: str
    inputs: tuple[tuple[int, str | None], ...]


@dataclass(frozen=True)
class Entry:
    """One corpus model: how to build it, where its sites are in the source, and what is expected.

    ``frontends`` are the ones that capture the model; ``default`` is the one ``frontend="auto"`` ends on.
    """

    name: str
    build: Callable[[], nn.Module]
    source: str
    sites: tuple[Site, ...]
    adds: tuple[Add, ...] = ()
    frontends: tuple[str, ...] = ("fx", "export")
    default: str = "fx"
    size: int = 64
    slow: bool = False


def cat(*parts: tuple[int, str | None]) -> tuple[Input, ...]:
    """Consecutive channel ranges from (width, upsample mode) parts, as a concat lays them out."""
    out, start = [], 0
    for width, mode in parts:
        out.append((start, start + width, mode))
        start += width
    return tuple(out)


def _fx_ready(model: nn.Module) -> nn.Module:
    model.requires_divisible_input_shape = False  # see the module docstring
    return model


# --------------------------------------------------------------------------------------------- smp
def smp_unet_mobilevit() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet("tu-mobilevit_xxs", encoder_weights=None, decoder_channels=(32, 16, 16, 8, 8), classes=3)


def smp_unet_scse() -> nn.Module:
    import segmentation_models_pytorch as smp

    model = smp.Unet(
        "tu-efficientnet_b0",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(32, 16, 16),
        decoder_attention_type="scse",
        classes=3,
    )
    return _fx_ready(model)


def smp_unetplusplus() -> nn.Module:
    import segmentation_models_pytorch as smp

    model = smp.UnetPlusPlus(
        "tu-resnet10t", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 8), classes=3
    )
    return _fx_ready(model)


def smp_fpn() -> nn.Module:
    import segmentation_models_pytorch as smp

    model = smp.FPN(
        "tu-regnetx_002",
        encoder_weights=None,
        decoder_pyramid_channels=16,
        decoder_segmentation_channels=32,  # GroupNorm(32, ·) needs a multiple of 32
        classes=3,
    )
    return _fx_ready(model)


def smp_linknet() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Linknet("tu-resnet10t", encoder_weights=None, classes=3)


def smp_pan() -> nn.Module:
    import segmentation_models_pytorch as smp

    return _fx_ready(smp.PAN("tu-resnet10t", encoder_weights=None, decoder_channels=16, classes=3))


def smp_deeplabv3plus() -> nn.Module:
    import segmentation_models_pytorch as smp

    model = smp.DeepLabV3Plus(
        "tu-mobilenetv3_small_050", encoder_weights=None, decoder_channels=16, classes=3
    )
    return _fx_ready(model)


def smp_pspnet() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.PSPNet("tu-resnet10t", encoder_weights=None, psp_out_channels=16, classes=3)


def smp_manet() -> nn.Module:
    import segmentation_models_pytorch as smp

    model = smp.MAnet(
        "tu-resnet10t",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(16, 8, 8),
        decoder_pab_channels=8,
        classes=3,
    )
    return _fx_ready(model)


def smp_upernet() -> nn.Module:
    import segmentation_models_pytorch as smp

    return _fx_ready(smp.UPerNet("tu-convnext_atto", encoder_weights=None, decoder_channels=16, classes=3))


def smp_segformer() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Segformer("tu-resnet10t", encoder_weights=None, decoder_segmentation_channels=16, classes=3)


# --------------------------------------------------------------------------------------------- torchvision
def tv_deeplabv3() -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    return deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3, aux_loss=False)


def tv_lraspp() -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)


# --------------------------------------------------------------------------------------------- transformers
_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def hf_upernet_convnext() -> nn.Module:
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=_STAGES)
    cfg = UperNetConfig(backbone_config=backbone, hidden_size=16, use_auxiliary_head=False, num_labels=3)
    return UperNetForSemanticSegmentation(cfg)


def hf_beit() -> nn.Module:
    from transformers import BeitConfig, BeitForSemanticSegmentation

    cfg = BeitConfig(
        image_size=64,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_indices=[1, 2, 3, 4],
        pool_scales=[1, 2, 3, 6],
        use_auxiliary_head=False,
        num_labels=3,
    )
    return BeitForSemanticSegmentation(cfg)


def hf_dpt() -> nn.Module:
    from transformers import DPTConfig, DPTForSemanticSegmentation

    cfg = DPTConfig(
        image_size=64,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=16,
        readout_type="project",
        use_auxiliary_head=False,
        num_labels=3,
    )
    return DPTForSemanticSegmentation(cfg)


def hf_mobilenetv2_deeplab() -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2ForSemanticSegmentation

    cfg = MobileNetV2Config(depth_multiplier=0.35, num_labels=3, tf_padding=True, image_size=64)
    return MobileNetV2ForSemanticSegmentation(cfg)


def hf_mobilevit_deeplab() -> nn.Module:
    from transformers import MobileViTConfig, MobileViTForSemanticSegmentation

    cfg = MobileViTConfig(
        image_size=64,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 48],
        aspp_out_channels=16,
        num_labels=3,
    )
    return MobileViTForSemanticSegmentation(cfg)


def hf_segformer() -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = SegformerConfig(
        hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 2, 2],
        depths=[1, 1, 1, 1],
        decoder_hidden_size=16,
        num_labels=3,
    )
    return SegformerForSemanticSegmentation(cfg)


def _swin_backbone() -> object:
    from transformers import SwinConfig

    return SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, out_features=_STAGES
    )


def hf_mask2former() -> nn.Module:
    # The model without its loss (the loss needs scipy); the pixel decoder is the part under test.
    from transformers import Mask2FormerConfig, Mask2FormerModel

    cfg = Mask2FormerConfig(
        backbone_config=_swin_backbone(),
        feature_size=32,  # GroupNorm(32, ·) needs a multiple of 32
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_queries=4,
        num_attention_heads=2,
        common_stride=4,
    )
    return Mask2FormerModel(cfg)


def hf_maskformer() -> nn.Module:
    from transformers import MaskFormerConfig, MaskFormerModel

    decoder = {
        "model_type": "detr",
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 32,
        "decoder_ffn_dim": 32,
        "num_queries": 4,
    }
    cfg = MaskFormerConfig(
        backbone_config=_swin_backbone(),
        fpn_feature_size=32,
        mask_feature_size=32,
        num_queries=4,
        decoder_config=decoder,
    )
    return MaskFormerModel(cfg)


SMP = "segmentation_models_pytorch/decoders/"
HF = "transformers/models/"
TV = "torchvision/models/segmentation/"
N, B = "nearest", "bilinear"

CORPUS: tuple[Entry, ...] = (
    Entry(
        "smp_unet_mobilevit",
        smp_unet_mobilevit,
        "timm/models/mobilevit.py:277 MobileVitBlock.forward: conv_fusion(cat((shortcut, x), 1)), "
        "conv_fusion = conv_norm_act(in_chs + out_chs, out_chs) (:233); mobilevit_xxs (:89-95) has one "
        "MobileVitBlock per stage 2-4 with in = out = 48, 64, 80. "
        f"{SMP}unet/decoder.py:50-56 UnetDecoderBlock.forward: interpolate(mode='nearest') then "
        "cat([x, skip], 1) -> attention1 (Identity) -> conv1 (Conv2dReLU: conv is .0). Encoder channels "
        "16, 24, 48, 64, 320 (num_features=320); decoder in = [320, 32, 16, 16, 8], "
        "skip = [64, 48, 24, 16, 0]",
        (
            Site("encoder.model.stages_2.1.conv_fusion.conv", cat((48, None), (48, None))),
            Site("encoder.model.stages_3.1.conv_fusion.conv", cat((64, None), (64, None))),
            Site("encoder.model.stages_4.1.conv_fusion.conv", cat((80, None), (80, None))),
            Site("decoder.blocks.0.conv1.0", cat((320, N), (64, None))),
            Site("decoder.blocks.1.conv1.0", cat((32, N), (48, None))),
            Site("decoder.blocks.2.conv1.0", cat((16, N), (24, None))),
            Site("decoder.blocks.3.conv1.0", cat((16, N), (16, None))),
        ),
    ),
    Entry(
        "smp_unet_scse",
        smp_unet_scse,
        f"{SMP}unet/decoder.py:56-57: cat([x, skip], 1) -> attention1 = SCSEModule "
        "(segmentation_models_pytorch/base/modules.py:117-130: x * cSE(x) + x * sSE(x), "
        "sSE = Sequential(Conv2d(C, 1, 1), Sigmoid)). The gate rescales channels, so conv1 is not reached; "
        "sSE's conv reads the concat directly and is the site; cSE starts with an average pool (no site). "
        "efficientnet_b0 channels 16, 24, 40 at depth 3: decoder in = [40, 32, 16], skip = [24, 16, 0]",
        (
            Site("decoder.blocks.0.attention1.attention.sSE.0", cat((40, N), (24, None))),
            Site("decoder.blocks.1.attention1.attention.sSE.0", cat((32, N), (16, None))),
        ),
    ),
    Entry(
        "smp_unetplusplus",
        smp_unetplusplus,
        f"{SMP}unetplusplus/decoder.py:54-59 DecoderBlock.forward: interpolate(nearest) then cat([x, skip]); "
        ":176 UnetPlusPlusDecoder.forward passes skip = cat(dense outputs + [feature]), a nested concat that "
        "flattens. resnet10t channels 64 (stem), 64, 128 at depth 3: head 128, skips 64, 64; "
        "x_0_0 = (128 up, 64), x_1_1 = (64 up, 64), x_0_1 = (16 up, cat(x_1_1 64, feature 64))",
        (
            Site("decoder.blocks.x_0_0.conv1.0", cat((128, N), (64, None))),
            Site("decoder.blocks.x_1_1.conv1.0", cat((64, N), (64, None))),
            Site("decoder.blocks.x_0_1.conv1.0", cat((16, N), (64, None), (64, None))),
        ),
    ),
    Entry(
        "smp_fpn",
        smp_fpn,
        f"{SMP}fpn/decoder.py:39-41 FPNBlock.forward: interpolate(nearest) + skip_conv(skip); :72 "
        "MergeBlock.forward (policy 'add'): stack(x).sum(0) of the four segmentation branches, the upper "
        "three ending in interpolate(bilinear) (:23 Conv3x3GNReLU). No concat: no fusion site",
        (),
        (
            Add("decoder.p4", ((16, N), (16, None))),
            Add("decoder.p3", ((16, N), (16, None))),
            Add("decoder.p2", ((16, N), (16, None))),
            Add("decoder.merge", ((32, B), (32, B), (32, B), (32, None))),
        ),
    ),
    Entry(
        "smp_linknet",
        smp_linknet,
        f"{SMP}linknet/decoder.py:49-55 DecoderBlock.forward: block (1x1 conv, "
        "TransposeX2 = ConvTranspose2d, 1x1 conv) then x + skip. Upsampling is a transposed conv, not an "
        "interpolation: no add site, and no concat. The decoder branches on skip.shape[1], so symbolic "
        "tracing fails",
        (),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "smp_pan",
        smp_pan,
        f"{SMP}pan/decoder.py:119-163 FPABlock.forward: x2 + up(x3) (:143), up(x) + conv1(x1) (:152), "
        "mid * x + up(branch1) (:161); :192-208 GAUBlock.forward: up(y) + conv2(x) * conv1(y). FPA's pyramid "
        "has 1 channel, the rest 16. The FPA pools need an input of at least 128",
        (),
        (
            Add("decoder.fpa", ((1, None), (1, B))),
            Add("decoder.fpa", ((1, B), (1, None))),
            Add("decoder.fpa", ((16, None), (16, B))),
            Add("decoder.gau3", ((16, B), (16, None))),
            Add("decoder.gau2", ((16, B), (16, None))),
            Add("decoder.gau1", ((16, B), (16, None))),
        ),
        size=128,
    ),
    Entry(
        "smp_deeplabv3plus",
        smp_deeplabv3plus,
        f"{SMP}deeplabv3/decoder.py:225-230 ASPP.forward: cat of 1x1, three atrous convs and the image pool "
        "(interpolate bilinear, :187), 16 channels each -> project; :133-138 DeepLabV3PlusDecoder.forward: "
        "cat([up(aspp) (UpsamplingBilinear2d x4), block1(features[2]) 48 ch]) -> block2, whose first layer "
        "is SeparableConv2d's depthwise conv",
        (
            Site("decoder.aspp.0.project.0", cat((16, None), (16, None), (16, None), (16, None), (16, B))),
            Site("decoder.block2.0.0", cat((16, B), (48, None))),
        ),
    ),
    Entry(
        "smp_pspnet",
        smp_pspnet,
        f"{SMP}pspnet/decoder.py:72-74 PSPModule.forward: cat([blocks(x)..., x]); each PSPBlock pools, "
        "convs and interpolates bilinear (:47). resnet10t at depth 3 gives 128 channels, each of the four "
        "branches 128 / 4 = 32",
        (Site("decoder.conv.0", cat((32, B), (32, B), (32, B), (32, B), (128, None))),),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "smp_manet",
        smp_manet,
        f"{SMP}manet/decoder.py:105-116 MFABBlock.forward: hl_conv(x) -> interpolate -> x * attention -> "
        "cat([x, skip]) -> conv1. The product with the attention map stops the walk back: that input has "
        "no upsample. hl_conv maps to the skip width: (64, 64) twice",
        (
            Site("decoder.blocks.0.conv1.0", cat((64, None), (64, None))),
            Site("decoder.blocks.1.conv1.0", cat((64, None), (64, None))),
        ),
    ),
    Entry(
        "smp_upernet",
        smp_upernet,
        f"{SMP}upernet/decoder.py:41-53 PSPModule.forward: cat([feature, up(pooled)...]) -> out_conv; :82-93 "
        "FPNLateralBlock.forward: up(state) + conv(lateral); :203-209 UPerNetDecoder.forward: "
        "cat(up(fpn outputs)[::-1]) -> fusion_block. convnext_atto's last stage has 320 channels",
        (
            Site("decoder.psp.out_conv.0", cat((320, None), (16, B), (16, B), (16, B), (16, B))),
            Site("decoder.fusion_block.0", cat((16, B), (16, B), (16, B), (16, B))),
        ),
        (
            Add("decoder.fpn_lateral_blocks.0", ((16, B), (16, None))),
            Add("decoder.fpn_lateral_blocks.1", ((16, B), (16, None))),
            Add("decoder.fpn_lateral_blocks.2", ((16, B), (16, None))),
        ),
    ),
    Entry(
        "smp_segformer",
        smp_segformer,
        f"{SMP}segformer/decoder.py:56-71 SegformerDecoder.forward: each level -> MLP -> interpolate "
        "(bilinear) -> cat -> fuse_stage; five levels of resnet10t, 16 channels each",
        (Site("decoder.fuse_stage.0", cat((16, B), (16, B), (16, B), (16, B), (16, B))),),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "tv_deeplabv3",
        tv_deeplabv3,
        f"{TV}deeplabv3.py:109-114 ASPP.forward: cat of 1x1, three atrous convs and ASPPPooling "
        "(interpolate bilinear, :83), 256 channels each -> project (Sequential: conv is .0)",
        (Site("classifier.0.project.0", cat((256, None), (256, None), (256, None), (256, None), (256, B))),),
    ),
    Entry(
        "tv_lraspp",
        tv_lraspp,
        f"{TV}lraspp.py:70-79 LRASPPHead.forward: low_classifier(low) + high_classifier(up(x)). A conv "
        "classifies the upsampled branch before the add, so it is an add of two convs' outputs: no add site",
        (),
    ),
    Entry(
        "hf_upernet_convnext",
        hf_upernet_convnext,
        f"{HF}upernet/modeling_upernet.py:166-167 UperNetHead.psp_forward: cat([x, up(pooled)...]) -> "
        "bottleneck; :181 laterals[i - 1] + interpolate(bilinear); :194-195 cat(fpn_outs) -> fpn_bottleneck. "
        "ConvNext stage 4 has 32 channels; hidden_size 16",
        (
            Site("decode_head.bottleneck.conv", cat((32, None), (16, B), (16, B), (16, B), (16, B))),
            Site("decode_head.fpn_bottleneck.conv", cat((16, None), (16, B), (16, B), (16, B))),
        ),
        (
            Add("decode_head", ((16, None), (16, B))),
            Add("decode_head", ((16, None), (16, B))),
            Add("decode_head", ((16, None), (16, B))),
        ),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "hf_beit",
        hf_beit,
        f"{HF}beit/modeling_beit.py:837-840 BeitUperHead.psp_forward: cat([x, *psp_modules(x)]) -> "
        "psp_bottleneck; :854 laterals + interpolate(bilinear); :869-870 cat(fpn_outs) -> fpn_bottleneck. "
        "hidden_size 32 everywhere",
        (
            Site(
                "decode_head.psp_bottleneck.convolution", cat((32, None), (32, B), (32, B), (32, B), (32, B))
            ),
            Site("decode_head.fpn_bottleneck.convolution", cat((32, None), (32, B), (32, B), (32, B))),
        ),
        (
            Add("decode_head", ((32, None), (32, B))),
            Add("decode_head", ((32, None), (32, B))),
            Add("decode_head", ((32, None), (32, B))),
        ),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "hf_dpt",
        hf_dpt,
        f"{HF}dpt/modeling_dpt.py:548 DPTReassembleStage.forward: "
        "readout_projects[i](cat((tokens, cls), -1)), "
        "readout_projects[i] = Sequential(Linear(2 * hidden, hidden), GELU): a channels-last Linear fusion "
        "per backbone output; :546 cls = cls_token.unsqueeze(1).expand_as(tokens) repeats one token over "
        "every position, a replicating (nearest) upsample as from a pooled 1x1 map. The fusion stage adds "
        "conv outputs (the upsample is followed by a projection conv): no add site",
        tuple(
            Site(f"neck.reassemble_stage.readout_projects.{i}.0", cat((32, None), (32, N)), "linear", -1)
            for i in range(4)
        ),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "hf_mobilenetv2_deeplab",
        hf_mobilenetv2_deeplab,
        f"{HF}mobilenet_v2/modeling_mobilenet_v2.py:495-497 MobileNetV2DeepLabV3Plus.forward: "
        "cat([up(conv_pool) bilinear, conv_aspp], 1) -> conv_projection, a MobileNetV2ConvLayer whose "
        "forward applies TF padding before its convolution (:146 apply_tf_padding, a F.pad by zero for a "
        "1x1 conv). 256 channels each",
        (Site("segmentation_head.conv_projection.convolution", cat((256, B), (256, None))),),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "hf_mobilevit_deeplab",
        hf_mobilevit_deeplab,
        f"{HF}mobilevit/modeling_mobilevit.py:490 MobileViTLayer.forward: "
        "fusion(cat((residual, features), 1)) "
        "in the three transformer stages (neck_hidden_sizes 16, 24, 32); :818-820 MobileViTASPP.forward: "
        "cat(pyramid) -> project, the pooling branch upsampled bilinear, aspp_out_channels 16",
        (
            Site("mobilevit.encoder.layer.2.fusion.convolution", cat((16, None), (16, None))),
            Site("mobilevit.encoder.layer.3.fusion.convolution", cat((24, None), (24, None))),
            Site("mobilevit.encoder.layer.4.fusion.convolution", cat((32, None), (32, None))),
            Site(
                "segmentation_head.aspp.project.convolution",
                cat((16, None), (16, None), (16, None), (16, None), (16, B)),
            ),
        ),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "hf_segformer",
        hf_segformer,
        f"{HF}segformer/modeling_segformer.py:496-518 SegformerDecodeHead.forward: each level -> MLP -> "
        "interpolate(bilinear) to the first level's size -> cat(reversed) -> linear_fuse; decoder_hidden 16",
        (Site("decode_head.linear_fuse", cat((16, B), (16, B), (16, B), (16, B))),),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "hf_maskformer",
        hf_maskformer,
        f"{HF}maskformer/modeling_maskformer.py:1388-1392 MaskFormerFPNLayer.forward: "
        "down = interpolate(down, nearest); down += proj(left), three FPN layers; no concat",
        (),
        (
            Add("pixel_level_module.decoder.fpn.layers.0", ((32, N), (32, None))),
            Add("pixel_level_module.decoder.fpn.layers.1", ((32, N), (32, None))),
            Add("pixel_level_module.decoder.fpn.layers.2", ((32, N), (32, None))),
        ),
        frontends=("export",),
        default="export",
    ),
    Entry(
        "hf_mask2former",
        hf_mask2former,
        f"{HF}mask2former/modeling_mask2former.py:1407 Mask2FormerPixelDecoder.forward: "
        "lateral_conv(feature) + interpolate(bilinear), one extra FPN level for common_stride 4; no concat",
        (),
        (Add("pixel_level_module.decoder", ((32, None), (32, B))),),
        frontends=("export",),
        default="export",
        slow=True,
    ),
)
