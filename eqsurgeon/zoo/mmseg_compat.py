"""Where timm's Swin and Twins compute something other than mmseg's, make them compute mmseg's.

Weights and state-dict keys never change; modules are patched in place by switching their class to a
subclass whose ``forward`` follows mmseg. What differs, and only at sizes that are not whole windows:

    patch embedding    mmseg pads bottom/right to whole patches (AdaptivePadding, padding='corner');
                       timm's Swin asserts, timm's Twins floors (drops the last rows)
    Swin shifted MSA   mmseg pads to whole windows and then rolls; timm rolls and then pads, so the
                       padding lands in other windows
    Twins local MSA    mmseg masks padded tokens (-1000) when both the bottom and the right are padded;
                       timm never masks
    Twins stages       mmseg's SVT (norm_after_stage=True) feeds each stage's normalized output to the
                       next stage; timm has no such norm (the zoo's ``out_norms`` supply it)

>>> import timm
>>> body = make_mmseg_compatible(timm.create_model("twins_svt_small", features_only=True))
>>> [tuple(f.shape[-2:]) for f in body(torch.randn(1, 3, 67, 93))]
[(17, 24), (9, 12), (5, 6), (3, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed as TimmPatchEmbed
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from timm.models.twins import LocallyGroupedAttn
from timm.models.twins import PatchEmbed as TwinsPatchEmbed
from torch import nn


def make_mmseg_compatible(body: nn.Module) -> nn.Module:
    """Patch every Swin/Twins part of ``body`` to mmseg's semantics (see the module docstring); in place.

    >>> import timm
    >>> body = make_mmseg_compatible(timm.create_model("test_convnext", features_only=True))
    >>> len(body(torch.randn(1, 3, 33, 43)))
    4
    """
    for module in body.modules():
        if isinstance(module, TimmPatchEmbed) and not module.strict_img_size:
            module.dynamic_img_pad = True
        elif type(module) is TwinsPatchEmbed:
            module.__class__ = CornerPaddedTwinsPatchEmbed
        elif type(module) is SwinTransformerBlock:
            module.__class__ = PadThenShiftSwinBlock
        elif type(module) is LocallyGroupedAttn:
            module.__class__ = MaskedLocallyGroupedAttn
    return body


def chain_stage_norms(body: nn.Module, norms: Sequence[nn.Module]) -> None:
    """Feed stage i's output through ``norms[i]`` before Twins' next patch embedding (mmseg's SVT).

    The norms stay registered where they are (the backbone's ``out_norms``); each patch embedding only
    holds a reference, so the state dict does not change.
    """
    embeds = [m for m in body.modules() if isinstance(m, CornerPaddedTwinsPatchEmbed)]
    for embed, norm in zip(embeds[1:], norms, strict=False):
        embed.__dict__["input_norm"] = norm  # not a submodule: no second state-dict key


class CornerPaddedTwinsPatchEmbed(TwinsPatchEmbed):
    """timm's Twins ``PatchEmbed`` that pads bottom/right to whole patches first, as mmseg's does."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        norm = self.__dict__.get("input_norm")
        if norm is not None:  # LayerNorm over channels of an NCHW map
            x = norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        ph, pw = self.patch_size
        x = F.pad(x, (0, (pw - x.shape[-1] % pw) % pw, 0, (ph - x.shape[-2] % ph) % ph))
        return super().forward(x)


class PadThenShiftSwinBlock(SwinTransformerBlock):
    """timm's Swin block with mmseg's order in shifted-window attention: pad to whole windows, then roll."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, c = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
        hp, wp = x.shape[1], x.shape[2]
        shift = any(self.shift_size)
        if shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, c)
        mask = self.get_attn_mask(x) if shift else None  # the mask of the padded, rolled map
        windows = self.attn(windows, mask=mask).view(-1, wh, ww, c)
        x = window_reverse(windows, self.window_size, hp, wp)
        if shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


class MaskedLocallyGroupedAttn(LocallyGroupedAttn):
    """timm's Twins local attention with mmseg's padding mask (applied when bottom and right are padded).

    mmseg builds the mask with ``mask[:, -pad_b:, :] = 1`` and ``mask[:, :, -pad_r:] = 1``; with one pad
    0, the slice ``-0:`` covers everything, the mask is uniform and nothing is masked. That is kept.
    """

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = size
        ws = self.ws
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
        gh, gw = x.shape[1] // ws, x.shape[2] // ws
        x = x.reshape(b, gh, ws, gw, ws, c).transpose(2, 3)
        qkv = self.qkv(x).reshape(b, gh * gw, ws * ws, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if pad_r > 0 and pad_b > 0:
            attn = attn + _padding_mask(gh, gw, ws, h, w, x.device).unsqueeze(2)
        x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(2, 3).reshape(b, gh, gw, ws, ws, c).transpose(2, 3).reshape(b, gh * ws, gw * ws, c)
        x = x[:, :h, :w, :].reshape(b, n, c)
        return self.proj_drop(self.proj(x))


def _padding_mask(gh: int, gw: int, ws: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    # [1, windows, ws*ws, ws*ws]: -1000 between a padded and a real token, 0 elsewhere (mmseg's values)
    pad = torch.zeros(1, gh * ws, gw * ws, device=device)
    pad[:, h:, :] = 1
    pad[:, :, w:] = 1
    pad = pad.reshape(1, gh, ws, gw, ws).transpose(2, 3).reshape(1, gh * gw, ws * ws)
    diff = pad.unsqueeze(2) - pad.unsqueeze(3)
    return torch.where(diff != 0, -1000.0, 0.0)
