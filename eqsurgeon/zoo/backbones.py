"""Backbones: timm models with ``features_only=True``, returning NCHW features finest first.

``pretrained=True`` uses timm's own download (Hugging Face hub) and so needs network access; nothing in
eqsurgeon requires it. ``weights=FILE`` loads a local timm-format classification checkpoint
(``.safetensors``, or a ``.pth``/``.pt`` read with ``torch.load(weights_only=True)``) through timm's own
loader, so its checkpoint filters (e.g. Swin's relative-position tables) still apply.

Where MMSegmentation normalizes every output stage (Swin's ``norm{i}``, mmpretrain ConvNeXt's
``norm{i}``, Twins-SVT with ``norm_after_stage=True``), ``out_norm`` adds the same LayerNorms here; timm's
feature extractors return the raw stage outputs.

Any input size works, and gives mmseg's result: where timm's Swin and Twins compute otherwise at sizes that
are not whole patches or windows, :mod:`eqsurgeon.zoo.mmseg_compat` patches them to mmseg's semantics.

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
from timm.layers import LayerNorm2d
from torch import nn

from eqsurgeon.errors import ModelLoadError
from eqsurgeon.zoo.mmseg_compat import chain_stage_norms, make_mmseg_compatible


class TimmBackbone(nn.Module):
    """A timm feature extractor whose outputs are NCHW (NHWC ones, e.g. Swin's, are permuted).

    Args:
        name: timm model name.
        out_indices: which feature levels to return (timm's ``out_indices``).
        pretrained: download timm's pretrained weights (needs network access).
        weights: local timm-format state dict to load instead; overrides ``pretrained``.
        out_norm: None, ``"layernorm"`` (NHWC LayerNorm, eps 1e-5, as Swin/Twins in mmseg) or
            ``"layernorm2d"`` (channels-first, eps 1e-6, as mmpretrain's ConvNeXt) on every output.
        norm_between_stages: the next stage also sees the normalized output (mmseg's Twins SVT with
            ``norm_after_stage=True``); needs ``out_norm``.
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
        norm_between_stages: bool = False,
        **timm_kwargs: object,
    ) -> None:
        super().__init__()
        self.body = make_mmseg_compatible(_create(name, tuple(out_indices), pretrained, weights, timm_kwargs))
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
        if norm_between_stages:
            assert self.out_norms is not None, "norm_between_stages needs out_norm"
            chain_stage_norms(self.body, list(self.out_norms))

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
