"""Backbones: timm models with ``features_only=True``, returning NCHW features finest first.

``pretrained=True`` uses timm's own download (Hugging Face hub) and so needs network access; nothing in
eqsurgeon requires it. ``weights=FILE`` loads a local timm-format classification checkpoint
(``.safetensors``, or a ``.pth``/``.pt`` read with ``torch.load(weights_only=True)``) through timm's own
loader, so its checkpoint filters (e.g. Swin's relative-position tables) still apply.

Where MMSegmentation normalizes every output stage (Swin's ``norm{i}``, mmpretrain ConvNeXt's
``norm{i}``, Twins-SVT with ``norm_after_stage=True``), ``out_norm`` adds the same LayerNorms here; timm's
feature extractors return the raw stage outputs.

Any input size works. Where mmseg's patch embeddings pad their input bottom/right with zeros up to a multiple
of the patch size (``AdaptivePadding(padding='corner')`` in Swin's and Twins' ``PatchEmbed``), timm's either
assert (Swin) or floor (Twins); :func:`pad_patch_embeddings` makes them pad as mmseg does.

>>> import torch
>>> bb = TimmBackbone("test_convnext", out_norm="layernorm2d")
>>> [tuple(f.shape) for f in bb(torch.randn(1, 3, 64, 64))]
[(1, 24, 16, 16), (1, 32, 8, 8), (1, 48, 4, 4), (1, 64, 2, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.layers import PatchEmbed as TimmPatchEmbed
from timm.models.twins import PatchEmbed as TwinsPatchEmbed
from torch import nn

from eqsurgeon.errors import ModelLoadError


class TimmBackbone(nn.Module):
    """A timm feature extractor whose outputs are NCHW (NHWC ones, e.g. Swin's, are permuted).

    Args:
        name: timm model name.
        out_indices: which feature levels to return (timm's ``out_indices``).
        pretrained: download timm's pretrained weights (needs network access).
        weights: local timm-format state dict to load instead; overrides ``pretrained``.
        out_norm: None, ``"layernorm"`` (NHWC LayerNorm, eps 1e-5, as Swin/Twins in mmseg) or
            ``"layernorm2d"`` (channels-first, eps 1e-6, as mmpretrain's ConvNeXt) on every output.
        **timm_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``output_stride``...).

    Attributes:
        channels: channels of each returned level.
        reductions: stride of each returned level.
    """

    def __init__(
        self,
        name: str,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        pretrained: bool = False,
        weights: str | Path | None = None,
        out_norm: str | None = None,
        **timm_kwargs: object,
    ) -> None:
        super().__init__()
        self.body = pad_patch_embeddings(_create(name, tuple(out_indices), pretrained, weights, timm_kwargs))
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        # Decided once here, never per forward, so the traced graph has no shape-dependent branches.
        self.nhwc = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self.out_norms: nn.ModuleList | None = None
        if out_norm == "layernorm":
            self.out_norms = nn.ModuleList(nn.LayerNorm(c, eps=1e-5) for c in self.channels)
        elif out_norm == "layernorm2d":
            self.out_norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in self.channels)
        else:
            assert out_norm is None, f"unknown out_norm {out_norm!r}"
        self.out_norm = out_norm

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        outs = []
        # Index rather than iterate: if a tracer keeps the timm body as a leaf, its output is a Proxy.
        for i in range(len(self.channels)):
            f = feats[i]
            if self.out_norm == "layernorm" and not self.nhwc:
                f = f.permute(0, 2, 3, 1)  # mmseg norms the tokens (NHWC) before reshaping them
            if self.out_norms is not None:
                f = self.out_norms[i](f)
            if self.nhwc or self.out_norm == "layernorm":
                f = f.permute(0, 3, 1, 2).contiguous()
            outs.append(f)
        return outs


def pad_patch_embeddings(body: nn.Module) -> nn.Module:
    """Make every patch embedding in ``body`` pad its input up to the patch size, as mmseg's do.

    mmseg's ``PatchEmbed`` pads bottom/right with zeros (``AdaptivePadding``, ``padding='corner'``) before
    its k = stride convolution, so a 375×500 image gives ⌈375/4⌉ × ⌈500/4⌉ tokens. timm's generic
    ``PatchEmbed`` does the same with ``dynamic_img_pad`` (Swin builds it without, and asserts); Twins' own
    ``PatchEmbed`` floors, which drops the last rows at every stage. Weights and state-dict keys are
    unchanged; the change is in place and ``body`` is returned.

    >>> import timm
    >>> body = pad_patch_embeddings(timm.create_model("twins_svt_small", features_only=True))
    >>> [tuple(f.shape[-2:]) for f in body(torch.randn(1, 3, 67, 93))]
    [(17, 24), (9, 12), (5, 6), (3, 3)]
    """
    for module in body.modules():
        if isinstance(module, TimmPatchEmbed) and not module.strict_img_size:
            module.dynamic_img_pad = True
        elif type(module) is TwinsPatchEmbed:
            module.__class__ = CornerPaddedTwinsPatchEmbed
    return body


class CornerPaddedTwinsPatchEmbed(TwinsPatchEmbed):
    """timm's Twins ``PatchEmbed`` that pads bottom/right to whole patches first (mmseg's Twins does)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        ph, pw = self.patch_size
        x = F.pad(x, (0, (pw - x.shape[-1] % pw) % pw, 0, (ph - x.shape[-2] % ph) % ph))
        return super().forward(x)


def _create(
    name: str,
    out_indices: tuple[int, ...],
    pretrained: bool,
    weights: str | Path | None,
    timm_kwargs: dict[str, object],
) -> nn.Module:
    kwargs = dict(timm_kwargs)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ModelLoadError(f"backbone_weights file {path} does not exist; pass an existing file path")
        if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise ModelLoadError(
                f"backbone_weights {path} has an unknown suffix; use .safetensors or a weights-only .pth/.pt"
            )
        # timm's loader reads safetensors, or torch.load(weights_only=True), then applies its filters.
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        return timm.create_model(
            name, pretrained=pretrained, features_only=True, out_indices=out_indices, **kwargs
        )
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        if weights is not None:
            raise ModelLoadError(
                f"backbone_weights {weights} does not fit timm's {name}: {str(exc).splitlines()[0]}; "
                "pass a timm-format checkpoint of that model"
            ) from exc
        if pretrained:
            raise ModelLoadError(
                f"could not download timm's pretrained {name} ({type(exc).__name__}); pretrained=True needs "
                "network access: use backbone_weights=FILE or pretrained=False"
            ) from exc
        raise
