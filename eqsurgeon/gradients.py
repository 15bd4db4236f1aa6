"""Gradients: how large the fusing layer's weight gradient is over each concat input's slice.

The paper's Proposition 3.1 is about gradients: the weight slice W_i that multiplies concat input x_i
gets the gradient G_i = Σ_p δ_p x_{i,p}ᵀ, where δ is the gradient at the layer's output. δ is the same
for every slice of one layer, so the slices' gradient sizes differ only through their inputs: a slice
whose input is σ× smaller gets a gradient about σ× smaller. This module measures it::

    batches ──forward──▶ logits ──loss──▶ autograd.grad(loss, fusing weights) ──slice──▶ RMS per input

Fold mode scales W_i by 1/σ_i but feeds the layer the raw x_i, so its gradient is still x_i·δ; insert
mode feeds (x_i − μ_i)/σ_i, so its gradient is ((x_i − μ_i)/σ_i)·δ. Both are measured here the same way.

The loss: with masks (a segmentation folder), pixel cross-entropy ignoring 255. Without labels, a
fixed random projection of the logits (:class:`RandomProjection`): it gives a δ with no label
information, which is a fair probe of the *ratio* between slices because all slices share that δ.

Layouts (``FusionSite.op``): conv weight [out, in/groups, *k] with input channel c in group
c // (in/groups) at index c % (in/groups); ConvTranspose [in, out/groups, *k]; Linear [out, in]
(columns, whatever the input's ``channel_dim``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eqsurgeon import stats
from eqsurgeon.errors import DataError, EqSurgeonError
from eqsurgeon.records import FusionSite, SliceGradient

IGNORE_INDEX = 255
LossFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class GradientMeasurement:
    """Per site (keyed by ``FusionSite.layer``) the gradient of each input's weight slice.

    Attributes:
        gradients: one :class:`SliceGradient` per input, in the site's input order.
        loss: ``"cross_entropy"`` (masks given) or ``"random_projection"`` (the surrogate).
        images: images the gradient was averaged over.
        bn_mode: ``"batch"`` or ``"eval"``, as in :func:`eqsurgeon.measure.measure`.
    """

    gradients: dict[str, tuple[SliceGradient, ...]]
    loss: str
    images: int
    bn_mode: str


def measure_gradients(
    model: nn.Module,
    sites: Iterable[FusionSite],
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    bn_mode: str = "auto",
) -> GradientMeasurement:
    """Forward and backward on ``batches``; the RMS of each ok site's weight gradient per input slice.

    The gradient is that of the loss averaged over all images (each batch weighted by its size). Only
    the fusing weights are differentiated (``torch.autograd.grad``): no ``.grad`` is written, and the
    model is left bit-identical (parameters, ``.grad``, ``requires_grad``, buffers, train/eval flags).

    Args:
        model: the eager model, plain, folded, or with ``EqualizedInput`` wrappers (insert mode; a site
            may name the wrapper or its ``.layer``).
        sites: from :func:`eqsurgeon.find_sites`; skipped sites are left out.
        batches: image tensors, or ``(images, masks)`` pairs with masks ``[N, H, W]`` (255 = ignore).
        loss_fn: ``loss_fn(logits, masks or None)``; default: cross-entropy when masks are given,
            else :class:`RandomProjection`.
        bn_mode: ``"batch"``, ``"eval"`` or ``"auto"``, as in :func:`eqsurgeon.measure.measure`.

    Raises:
        EqSurgeonError: the loss does not reach a fusing weight, or no batch was given.

    >>> from eqsurgeon.records import Subject
    >>> conv = nn.Conv2d(4, 2, 1)
    >>> site = FusionSite("", "conv2d", 1, (Subject((0, 2), "a"), Subject((2, 4), "b")))
    >>> x = torch.cat([torch.randn(2, 2, 8, 8), 10 * torch.randn(2, 2, 8, 8)], 1)
    >>> g = measure_gradients(conv, [site], [x]).gradients[""]
    >>> g[1].rms / g[0].rms > 3
    True
    """
    from eqsurgeon.measure import measuring_mode
    from eqsurgeon.state import preserved_grads

    sites = [s for s in sites if s.ok]
    weights = [fusing_layer(model, s.layer).weight for s in sites]
    totals = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    projection, images, kinds = RandomProjection(), 0, set()
    with (
        measuring_mode(model, bn_mode) as resolved,
        preserved_grads(model),
        _only_requiring_grad(model, weights),
        torch.enable_grad(),
    ):
        for batch in batches:
            x, target = batch if isinstance(batch, (tuple, list)) else (batch, None)
            fn = loss_fn or (cross_entropy if target is not None else projection)
            kinds.add(_loss_name(fn))
            loss = fn(logits_of(model(x)), target)
            if weights and not loss.requires_grad:
                raise EqSurgeonError(
                    "the loss does not depend on any fusing layer's weight; nothing to measure"
                )
            grads = torch.autograd.grad(loss, weights, allow_unused=True) if weights else ()
            for total, grad in zip(totals, grads, strict=True):
                if grad is not None:
                    total.add_(grad.double(), alpha=x.shape[0])
            images += x.shape[0]
    if images == 0:
        raise EqSurgeonError("measuring gradients needs at least one batch of images")
    out = {}
    for site, weight, total in zip(sites, weights, totals, strict=True):
        grad_sq = slice_sums((total / images).square(), site)
        weight_sq = slice_sums(weight.detach().double().square(), site)
        counts = slice_counts(weight, site)
        out[site.layer] = tuple(
            SliceGradient(math.sqrt(g / n), math.sqrt(w / n)) for g, w, n in zip(grad_sq, weight_sq, counts)
        )
    return GradientMeasurement(out, "+".join(sorted(kinds)), images, resolved)


def grad_ratio(gradients: Sequence[SliceGradient]) -> float:
    """max/min of the slices' gradient RMS (``inf`` when one is 0 or not finite).

    >>> grad_ratio([SliceGradient(0.5, 1.0), SliceGradient(2.0, 1.0)])
    4.0
    """
    return stats.grad_ratio([g.rms for g in gradients])


def fusing_layer(model: nn.Module, layer: str) -> nn.Module:
    """``model.<layer>``, or the layer inside it when it is an ``EqualizedInput`` wrapper (insert mode)."""
    from eqsurgeon.equalize import EqualizedInput

    module = model.get_submodule(layer)
    return module.layer if isinstance(module, EqualizedInput) else module


def original_layer(model: nn.Module, layer: str) -> str:
    """The name the fusing layer had before insert mode wrapped it: ``a.conv.layer`` → ``a.conv``.

    >>> original_layer(nn.Sequential(nn.Linear(1, 1)), "0")
    '0'
    """
    from eqsurgeon.equalize import EqualizedInput

    parent, _, child = layer.rpartition(".")
    if child == "layer" and parent and isinstance(model.get_submodule(parent), EqualizedInput):
        return parent
    return layer


def per_channel_sums(tensor: torch.Tensor, op: str, groups: int = 1) -> torch.Tensor:
    """Sum of a weight-shaped tensor over everything but the input channel: one value per input channel.

    >>> per_channel_sums(torch.ones(2, 3, 3, 3), "conv2d")  # 2 rows × 9 taps per input channel
    tensor([18., 18., 18.])
    >>> per_channel_sums(torch.arange(8.0).view(4, 1, 2), "conv1d", groups=2)  # depthwise-like
    tensor([ 6., 22.])
    """
    if op == "linear":
        return tensor.sum(0)
    if op.startswith("conv_transpose"):
        return tensor.reshape(tensor.shape[0], -1).sum(1)
    assert op.startswith("conv"), f"unknown fusing op {op!r}"
    out, in_per_group = tensor.shape[0], tensor.shape[1]
    # row o belongs to group o // (out/groups); its index j is input channel g*(in/groups) + j
    grouped = tensor.reshape(groups, out // groups, in_per_group, -1)
    return grouped.sum((1, 3)).reshape(-1)


def slice_sums(tensor: torch.Tensor, site: FusionSite) -> list[float]:
    """``per_channel_sums`` added up over each input's channel range."""
    per_channel = per_channel_sums(tensor, site.op, site.groups)
    return [float(per_channel[a:b].sum()) for a, b in (s.channels for s in site.subjects)]


def slice_counts(weight: torch.Tensor, site: FusionSite) -> list[int]:
    """Weight elements in each input's slice (every input channel owns the same number)."""
    in_channels = weight.shape[0] if site.op.startswith("conv_transpose") else None
    if site.op == "linear":
        in_channels = weight.shape[1]
    elif in_channels is None:
        in_channels = weight.shape[1] * site.groups
    per_channel = weight.numel() // in_channels
    return [per_channel * s.width for s in site.subjects]


def cross_entropy(logits: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """Pixel cross-entropy over non-ignored pixels (255); logits are resized to the masks first.

    >>> round(cross_entropy(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [255, 1]]])).item(), 4)
    0.6931
    """
    if masks is None:
        raise DataError("cross-entropy needs masks; pass a segmentation folder (images/ + masks/)")
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    masks = masks.long()
    bad = (masks >= logits.shape[1]) & (masks != IGNORE_INDEX)
    if bool(bad.any()):
        raise DataError(
            f"a mask has label {int(masks[bad][0])} but the model predicts {logits.shape[1]} classes; "
            "pass the model's num_classes or masks of its classes (255 = ignore)"
        )
    return F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)


class RandomProjection:
    """The surrogate loss without labels: L = mean over pixels of ⟨r_p, logits_p⟩, r ~ N(0, 1) fixed.

    Every call draws the next r from its own seeded generator (so equal seeds give equal losses, and
    the global RNG is untouched). Its δ at the logits is r / pixels: random, label-free, and shared by
    every slice of a fusing layer, so the *ratio* of slice gradients reflects the inputs alone. Absolute
    ``grad_rms`` values are not comparable with a cross-entropy's.

    >>> loss = RandomProjection(seed=0)
    >>> float(loss(torch.zeros(1, 3, 2, 2), None))
    0.0
    """

    name = "random_projection"

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        r = torch.randn(logits.shape, generator=self.generator).to(logits.device, logits.dtype)
        pixels = logits.numel() // logits.shape[1]
        return (r * logits).sum() / pixels


def logits_of(out: Any) -> torch.Tensor:
    """The main logits of a model output: a tensor, ``(main, aux)``, ``{"out": ...}`` or ``.logits``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, dict):
        return out["out"]
    return out.logits


def _loss_name(fn: LossFn) -> str:
    return getattr(fn, "name", getattr(fn, "__name__", type(fn).__name__))


@contextmanager
def _only_requiring_grad(model: nn.Module, weights: Sequence[torch.Tensor]) -> Iterator[None]:
    # Only the fusing weights need a gradient: the backward then stops where they stop mattering.
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    keep = {id(w) for w in weights}
    try:
        for p in params:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)

