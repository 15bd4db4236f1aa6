"""Convert MMSegmentation 1.x checkpoints to the zoo's state dicts: a key map plus a few re-layouts.

The zoo's decode and auxiliary heads carry mmseg's module names, so their keys pass unchanged; only the
backbone differs, because the zoo builds it from timm. Supported: every zoo model whose mmseg backbone is
``ResNetV1c`` (the D8 models), ``SwinTransformer``, mmpretrain's ``ConvNeXt`` or ``SVT`` (Twins).

Re-layouts besides renaming:

    Swin     stages.i.downsample (mmseg, after stage i)  →  layers_{i+1}.downsample (timm, before stage i+1)
             PatchMerging's input channels: nn.Unfold order (c, kh, kw) → timm's concat order (kw, kh, c)
             attn.w_msa.relative_position_index is a derived buffer and is dropped; the qkv Linear and
             the relative position bias tables keep their layout (both follow the original Swin)
    Twins    global attention: nn.MultiheadAttention's in_proj (q; k; v) → timm's q and kv

>>> from eqsurgeon.zoo.convert_mmseg import zoo_key
>>> zoo_key("backbone.stages.0.blocks.1.ffn.layers.0.0.weight", "swin")
'backbone.body.layers_0.blocks.1.mlp.fc1.weight'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from eqsurgeon.errors import CheckpointError, ModelLoadError

# (pattern, replacement) on mmseg's backbone keys, after the ``backbone.`` prefix; first match wins.
_RULES: dict[str, list[tuple[str, str]]] = {
    "resnet": [
        (r"stem\.([0-6])\.", r"body.conv1.\1."),
        (r"stem\.7\.", "body.bn1."),
        (r"(layer\d\..*)", r"body.\1"),
    ],
    "swin": [
        (r"patch_embed\.projection\.", "body.patch_embed.proj."),
        (r"patch_embed\.norm\.", "body.patch_embed.norm."),
        (r"stages\.(\d)\.blocks\.(\d+)\.attn\.w_msa\.", r"body.layers_\1.blocks.\2.attn."),
        (r"stages\.(\d)\.blocks\.(\d+)\.ffn\.layers\.0\.0\.", r"body.layers_\1.blocks.\2.mlp.fc1."),
        (r"stages\.(\d)\.blocks\.(\d+)\.ffn\.layers\.1\.", r"body.layers_\1.blocks.\2.mlp.fc2."),
        (r"stages\.(\d)\.blocks\.(\d+)\.(norm[12])\.", r"body.layers_\1.blocks.\2.\3."),
        (r"stages\.0\.downsample\.", "body.layers_1.downsample."),  # mmseg: after stage i; timm: before i+1
        (r"stages\.1\.downsample\.", "body.layers_2.downsample."),
        (r"stages\.2\.downsample\.", "body.layers_3.downsample."),
        (r"norm(\d)\.", r"out_norms.\1."),
    ],
    "convnext": [
        (r"downsample_layers\.0\.([01])\.", r"body.stem_\1."),
        (r"downsample_layers\.(\d)\.([01])\.", r"body.stages_\1.downsample.\2."),
        (r"stages\.(\d)\.(\d+)\.depthwise_conv\.", r"body.stages_\1.blocks.\2.conv_dw."),
        (r"stages\.(\d)\.(\d+)\.pointwise_conv1\.", r"body.stages_\1.blocks.\2.mlp.fc1."),
        (r"stages\.(\d)\.(\d+)\.pointwise_conv2\.", r"body.stages_\1.blocks.\2.mlp.fc2."),
        (r"stages\.(\d)\.(\d+)\.(norm|gamma)", r"body.stages_\1.blocks.\2.\3"),
        (r"norm(\d)\.", r"out_norms.\1."),
    ],
    "twins": [
        (r"patch_embeds\.(\d)\.projection\.", r"body.model.patch_embeds.\1.proj."),
        (r"patch_embeds\.(\d)\.norm\.", r"body.model.patch_embeds.\1.norm."),
        (r"position_encodings\.(\d)\.proj\.", r"body.model.pos_block.\1.proj.0."),
        (r"layers\.(\d)\.(\d+)\.attn\.attn\.in_proj_", r"body.model.blocks.\1.\2.attn.<q|kv>."),
        (r"layers\.(\d)\.(\d+)\.attn\.attn\.out_proj\.", r"body.model.blocks.\1.\2.attn.proj."),
        (r"layers\.(\d)\.(\d+)\.attn\.", r"body.model.blocks.\1.\2.attn."),
        (r"layers\.(\d)\.(\d+)\.ffn\.layers\.0\.0\.", r"body.model.blocks.\1.\2.mlp.fc1."),
        (r"layers\.(\d)\.(\d+)\.ffn\.layers\.1\.", r"body.model.blocks.\1.\2.mlp.fc2."),
        (r"layers\.(\d)\.(\d+)\.(norm[12])\.", r"body.model.blocks.\1.\2.\3."),
        (r"norm_list\.(\d)\.", r"out_norms.\1."),
    ],
}
_DROPPED = re.compile(r"(relative_position_index|data_preprocessor\.)")


def backbone_family(model: str) -> str:
    """Which mmseg backbone a zoo model's converter maps from ("resnet", "swin", "convnext", "twins").

    Raises:
        ModelLoadError: the zoo model has no mmseg counterpart (e.g. the ``*_tiny`` models, SegFormer).

    >>> backbone_family("upernet_swin_tiny"), backbone_family("pspnet_r101_d8")
    ('swin', 'resnet')
    """
    for family, pattern in (
        ("swin", r"upernet_swin_(tiny|small|base)"),
        ("convnext", r"upernet_convnext_(tiny|small|base)"),
        ("twins", r"upernet_twins_svt_(small|base|large)"),
        ("resnet", r"(fcn|pspnet|deeplabv3|deeplabv3plus)_r(50|101)_d8"),
    ):
        if re.fullmatch(pattern, model):
            return family
    raise ModelLoadError(
        f"no MMSegmentation counterpart for zoo model {model!r}; convert-mmseg supports upernet_swin_*, "
        "upernet_convnext_*, upernet_twins_svt_* and the *_r50_d8/*_r101_d8 models"
    )


def zoo_key(key: str, family: str) -> str | None:
    """The zoo key of one mmseg key (None when it is dropped); heads keep their names.

    Twins' ``in_proj_weight`` maps to ``...attn.<q|kv>.weight``: its first third is ``q.weight``, the
    rest ``kv.weight`` (:func:`convert_state_dict` splits it).

    >>> zoo_key("backbone.stem.7.weight", "resnet"), zoo_key("decode_head.conv_seg.bias", "resnet")
    ('backbone.body.bn1.weight', 'decode_head.conv_seg.bias')
    """
    if _DROPPED.search(key):
        return None
    if not key.startswith("backbone."):
        return key
    rest = key[len("backbone.") :]
    for pattern, replacement in _RULES[family]:
        if re.match(pattern, rest):
            return "backbone." + re.sub(pattern, replacement, rest, count=1)
    raise CheckpointError(f"mmseg key {key} has no counterpart in the zoo's {family} backbone")


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    """The zoo model ``model``'s state dict from an mmseg ``EncoderDecoder`` state dict.

    Args:
        state_dict: mmseg keys (``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``).
        model: the zoo model it corresponds to, e.g. ``upernet_swin_tiny``.

    Raises:
        ModelLoadError: ``model`` has no mmseg counterpart.
        CheckpointError: a key has no place in the zoo model.

    >>> sd = {"backbone.stem.0.weight": torch.zeros(32, 3, 3, 3), "decode_head.conv_seg.bias": torch.zeros(3)}
    >>> sorted(convert_state_dict(sd, "fcn_r50_d8"))
    ['backbone.body.conv1.0.weight', 'decode_head.conv_seg.bias']
    """
    family = backbone_family(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = zoo_key(key, family)
        if new is None:
            continue
        if "<q|kv>" in new:
            # nn.MultiheadAttention stacks (q; k; v); timm's Twins has q and kv = (k; v)
            c = value.shape[0] // 3
            out[new.replace("<q|kv>", "q")], out[new.replace("<q|kv>", "kv")] = value[:c], value[c:]
        elif family == "swin" and ".downsample." in new:
            out[new] = _unfold_to_timm_order(value) if not new.endswith("reduction.bias") else value
        else:
            out[new] = value
    return out


def _unfold_to_timm_order(value: torch.Tensor) -> torch.Tensor:
    # PatchMerging's 4C inputs: nn.Unfold(2, stride=2) lays out channel c of window offset (kh, kw) at
    # c*4 + kh*2 + kw; timm concatenates the offsets (0,0), (1,0), (0,1), (1,1), i.e. kw*2C + kh*C + c.
    lead, c = value.shape[:-1], value.shape[-1] // 4
    return value.reshape(*lead, c, 2, 2).movedim(-3, -1).transpose(-3, -2).reshape(*lead, 4 * c)


def read_mmseg_checkpoint(path: Path | str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an mmseg/mmengine ``.pth``, read with ``torch.load(weights_only=True)``.

    mmengine writes numpy scalars and arrays into ``meta`` (iteration counters, seeds) and its logger's
    buffers into ``message_hub``; :func:`eqsurgeon.io.pth_file.load_pickle` allows exactly those while
    unpickling, nothing else.

    Raises:
        CheckpointError: missing file, or a pickle that needs other classes (e.g. a full training state).
    """
    from eqsurgeon.io.pth_file import load_pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an MMSegmentation .pth file")
    obj = load_pickle(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; pass an MMSegmentation checkpoint")
    return dict(state)


def convert_checkpoint(path: Path | str, model: str, out: Path | str, force: bool = False) -> Path:
    """Read an mmseg ``.pth``, convert it for zoo ``model`` and write ``out`` (.safetensors, atomically).

    The result is checked against the model (built on the meta device): every key present, every shape
    equal. ``num_classes`` follows the checkpoint's ``decode_head.conv_seg``.

    Raises:
        CheckpointError, ModelLoadError, OutputExistsError: unreadable input, a key or shape that does not
            fit the model, or an existing ``out`` without ``force``.

    >>> # eqsurgeon convert-mmseg upernet_swin.pth --model upernet_swin_tiny --out swin.safetensors
    """
    from eqsurgeon.io import check_output, save_checkpoint

    out = check_output(out, force, (".safetensors",))  # before reading a large checkpoint
    converted = convert_state_dict(read_mmseg_checkpoint(path), model)
    check_fits(converted, model, source=str(path))
    return save_checkpoint(out, converted, None, force=force, extra={"source": "mmseg"})


def check_fits(state: Mapping[str, torch.Tensor], model: str, source: str = "the checkpoint") -> None:
    """Raise ``CheckpointError`` naming the keys/shapes of ``state`` that do not fit zoo ``model``."""
    from eqsurgeon.registry import create_model

    head = state.get("decode_head.conv_seg.weight")
    kwargs = {"num_classes": int(head.shape[0])} if head is not None else {}
    kwargs["aux_head"] = any(k.startswith("auxiliary_head.") for k in state)
    with torch.device("meta"):
        expected = create_model(model, **kwargs).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        problems = [f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                    for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
                    if keys]  # fmt: skip
        raise CheckpointError(
            f"{source} does not fit zoo model {model} after conversion ({'; '.join(problems)}); "
            "check that --model names the architecture the checkpoint was trained with"
        )
