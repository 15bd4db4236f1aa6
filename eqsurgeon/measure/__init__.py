"""Measure: every concat input's global mean and variance on the real eager model.

Forward pre-hooks on every fusing layer slice its input by channel range and accumulate float64 moments
(``hooks``); the model's parameters, buffers and train/eval flags are identical afterwards. This package
owns all measuring: one pass over given batches (:func:`measure`), a pass that stops when σ has
converged (:func:`measure_until`, the stopping rule calibrate uses), and pooling across DDP ranks
(``pool``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from eqsurgeon.errors import check_choice
from eqsurgeon.measure.hooks import MomentHooks, batch_moments
from eqsurgeon.measure.pool import MeasureState, ddp_reduce, merge_moments
from eqsurgeon.records import FusionSite, Moments
from eqsurgeon.state import preserved_state

__all__ = [
    "BN_MODES",
    "MeasureState",
    "Measurement",
    "MomentHooks",
    "StopRule",
    "batch_moments",
    "ddp_reduce",
    "measure",
    "measure_until",
    "measuring_mode",
    "merge_moments",
    "resolve_bn_mode",
]

BN_MODES = ("auto", "batch", "eval")


@dataclass(frozen=True)
class Measurement:
    """Moments per site (keyed by ``FusionSite.layer``), with how they were measured."""

    moments: dict[str, tuple[Moments, ...]]
    bn_mode: str
    images: int


def measure(
    model: nn.Module, sites: Iterable[FusionSite], batches: Iterable[torch.Tensor], bn_mode: str = "auto"
) -> Measurement:
    """Run ``model`` on ``batches`` and return every ok site's input moments.

    Args:
        model: the eager model; unchanged afterwards.
        sites: from :func:`eqsurgeon.find_sites`; skipped sites are not measured.
        batches: image tensors ``[N, C, H, W]`` already on the model's device.
        bn_mode: ``"batch"`` (BN on batch statistics, running buffers untouched), ``"eval"``, or ``"auto"``
            (batch when some BN layer has never seen data).

    >>> conv = nn.Conv2d(4, 2, 1)
    >>> from eqsurgeon.records import Subject
    >>> site = FusionSite("", "conv2d", 1, (Subject((0, 2), "a"), Subject((2, 4), "b")))
    >>> m = measure(conv, [site], [torch.ones(2, 4, 3, 3)])
    >>> m.moments[""][0].mean
    1.0
    """
    sites = [s for s in sites if s.ok]
    images = 0
    with measuring_mode(model, bn_mode) as resolved, MomentHooks(model, sites) as hooks, torch.no_grad():
        for batch in batches:
            if resolved == "batch" and batch.shape[0] < 2:
                continue  # BN cannot normalize over one image: a short last batch
            model(batch)
            images += batch.shape[0]
    return Measurement(hooks.moments(), resolved, images)


def resolve_bn_mode(model: nn.Module, bn_mode: str = "auto") -> str:
    """``"batch"`` or ``"eval"``: ``auto`` picks batch when any BN's running stats are still (0, 1)."""
    check_choice("bn_mode", bn_mode, BN_MODES)
    if bn_mode != "auto":
        return bn_mode
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and _never_saw_data(m):
            return "batch"  # eval mode would not show what training sees
    return "eval"


def _never_saw_data(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    if bn.running_mean is None or bn.running_var is None:
        return False
    return bool(bn.running_mean.eq(0).all()) and bool(bn.running_var.eq(1).all())


@contextmanager
def measuring_mode(model: nn.Module, bn_mode: str = "auto") -> Iterator[str]:
    """Put ``model`` in measuring mode (dropout off, BN per ``bn_mode``) and restore everything after.

    cuDNN autotuning (``torch.backends.cudnn.benchmark``, which the trainer turns on) is off meanwhile:
    a measuring pass runs a few dozen forwards at shapes training never sees, where autotuning costs
    more than it saves (calibration took 10.2 s instead of 4.6 s on an H200) and its trial workspaces
    briefly took 133 GiB of the GPU's memory.

    Yields the resolved mode, ``"batch"`` or ``"eval"``.
    """
    resolved = resolve_bn_mode(model, bn_mode)
    autotune = torch.backends.cudnn.benchmark
    with preserved_state(model):
        model.eval()
        if resolved == "batch":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()  # batch statistics; the buffers it updates are restored on exit
        torch.backends.cudnn.benchmark = False
        try:
            yield resolved
        finally:
            torch.backends.cudnn.benchmark = autotune


@dataclass(frozen=True)
class StopRule:
    """When a measuring pass has seen enough.

    Attributes:
        tolerance: stop when every input's σ has a relative standard error below this with 95%
            confidence (``Moments.std_rel_se_bound``).
        min_batches: measure at least this many batches, so the standard error is not itself a fluke
            (its own relative uncertainty is about 1/sqrt(2 (batches − 1)): 41% at 4 batches, 27% at 8).
        max_images: stop after this many images, converged or not (None: when the data ends).
    """

    tolerance: float = 0.005
    min_batches: int = 8
    max_images: int | None = None

    def done(self, moments: tuple[Moments, ...], images: int) -> bool:
        """Whether a pass that has these moments after ``images`` images stops now.

        >>> rule = StopRule(0.01, min_batches=2)
        >>> many, one = Moments(10, 0.0, 1.0, 30, 0.001), Moments(10, 0.0, 1.0, 1, 0.001)
        >>> rule.done((many,), 4), rule.done((one,), 4)
        (True, False)
        """
        enough = all(m.batches >= self.min_batches for m in moments) and worst_bound(moments) < self.tolerance
        return enough or (self.max_images is not None and images >= self.max_images)


@dataclass(frozen=True)
class PassOptions:
    """How :func:`measure_until` runs its forwards."""

    bn_mode: str = "auto"
    autocast_dtype: torch.dtype | None = None
    reduce: Callable[[MeasureState], MeasureState] | None = None  # pools across ranks (``ddp_reduce``)
    progress: Callable[[int, float], None] | None = None  # (images so far, worst σ SE bound) per batch


def measure_until(
    model: nn.Module, site: FusionSite, batches: Iterable[torch.Tensor], rule: StopRule, options: PassOptions
) -> tuple[tuple[Moments, ...], int, str]:
    """Measure one site's inputs batch by batch until ``rule`` says stop or the batches end.

    Under BN on batch statistics a one-image batch is skipped (BN cannot normalize over one image).

    Returns:
        (moments per input, images measured over all ranks, the resolved bn mode).
    """
    state = MeasureState(0, {})
    images = 0
    with measuring_mode(model, options.bn_mode) as resolved, MomentHooks(model, [site]) as hooks:
        for batch in batches:
            if resolved == "batch" and batch.shape[0] < 2:
                continue  # a short last batch of one image
            images += batch.shape[0]
            state = measure_step(model, batch, hooks, images, options)
            moments = state.moments[site.layer]
            if options.progress is not None:
                options.progress(state.images, worst_bound(moments))
            if rule.done(moments, state.images):
                break
    return state.moments.get(site.layer, ()), state.images, resolved


def measure_step(
    model: nn.Module, batch: torch.Tensor, hooks: MomentHooks, images: int, options: PassOptions
) -> MeasureState:
    """One measuring forward under ``hooks``, pooled across ranks: the unit the benchmark times."""
    autocast = (
        torch.autocast(batch.device.type, dtype=options.autocast_dtype)
        if options.autocast_dtype is not None
        else nullcontext()
    )
    with torch.no_grad(), autocast:
        model(batch)
    state = MeasureState(images, hooks.moments())
    return options.reduce(state) if options.reduce is not None else state


def worst_bound(moments: Iterable[Moments]) -> float:
    """The largest 95% bound on a σ's relative standard error (``inf`` for none)."""
    return max((m.std_rel_se_bound for m in moments), default=float("inf"))
