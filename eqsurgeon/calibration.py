"""Calibrate: measure each fusion site on real images until σ converges, then equalize it (Algorithm 1).

Sites are handled one at a time in topological order (``find_sites`` order). Equalizing a site changes
everything downstream of it, so each site gets its own measuring pass over ``batches``, run after every
earlier site was folded or wrapped. A pass stops when the relative standard error of every input's σ,
estimated across batches (delta method on each batch's mean and variance), is below ``tolerance``
with 95% confidence (``Moments.std_rel_se_bound``; after ``min_batches``), or at ``max_images``.

    pass 1: measure site A ──▶ fold A        pass 2: measure site B (sees A folded) ──▶ fold B
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from eqsurgeon.analysis import var_ratio
from eqsurgeon.equalize import InputStat, compute_scales, fold_into, insert_equalizers
from eqsurgeon.errors import EqSurgeonError
from eqsurgeon.measure import MomentHooks, measuring_mode
from eqsurgeon.records import FusionSite, InputRecord, Moments, SiteRecord, Subject
from eqsurgeon.reduce import MeasureState

MODES = ("fold", "insert")
BIAS_CORRECTIONS = ("auto", "on", "off")


@dataclass(frozen=True)
class Progress:
    """One progress report (after each batch) for a progress bar."""

    site: int  # index of the site being measured, 0-based
    sites: int
    layer: str
    images: int
    max_images: int | None
    std_rel_se_bound: float  # worst 95% bound over the site's inputs: what is compared with the tolerance


@dataclass(frozen=True)
class SiteCalibration:
    """One site after calibration: its moments, the scales applied (None when skipped) and why."""

    site: FusionSite
    moments: tuple[Moments, ...]
    scales: tuple[float, ...] | None
    status: str
    reason: str | None = None
    images: int = 0
    bias_corrected: bool = False
    note: str | None = None

    @property
    def std_rel_se(self) -> float:
        return max((m.std_rel_se for m in self.moments), default=math.inf)

    @property
    def std_rel_se_bound(self) -> float:
        return max((m.std_rel_se_bound for m in self.moments), default=math.inf)

    @property
    def var_ratio_before(self) -> float | None:
        return var_ratio([m.var for m in self.moments]) if self.moments else None

    @property
    def var_ratio_after(self) -> float | None:
        return var_ratio([m.var for m in self.moments], self.scales) if self.scales else None


@dataclass(frozen=True)
class CalibrationResult:
    """Every site's calibration, and how the measurement went."""

    sites: tuple[SiteCalibration, ...]
    mode: str
    bn_mode: str
    bias_correction: str
    tolerance: float
    converged: bool  # every equalized site reached the tolerance (else max_images/data ran out)

    @property
    def images(self) -> int:
        """Images of the longest measuring pass (each site's pass re-reads from the first image)."""
        return max((s.images for s in self.sites), default=0)

    @property
    def equalized(self) -> tuple[SiteCalibration, ...]:
        return tuple(s for s in self.sites if s.status == "ok")


def calibrate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    sites: Sequence[FusionSite] | None = None,
    mode: str = "fold",
    bias_correction: str = "auto",
    bn_mode: str = "auto",
    tolerance: float = 0.005,
    max_images: int | None = None,
    min_batches: int = 8,
    frontend: str = "auto",
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    reduce: Callable[[MeasureState], MeasureState] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> CalibrationResult:
    """Measure and equalize every fusion site of ``model`` in place (fold: weights; insert: wrappers).

    Args:
        model: the eager model; changed in place. Its buffers and train/eval flags are restored.
        batches: image tensors [N, 3, H, W]. Iterated once per equalized site, so pass something that can
            be iterated again (a DataLoader, a list) when the model has more than one site.
        sites: from ``find_sites``; found on the first batch when None.
        mode: "fold" (scale weight slices, same state-dict keys) or "insert" (``EqualizedInput`` wrappers).
        bias_correction: "on", "off" or "auto": fold −Σ W_i μ_i/σ_i into the bias unless the module run
            right after the fusing layer removes per-channel constants anyway (BatchNorm on batch
            statistics, InstanceNorm). Never for insert mode, whose equalizers subtract μ themselves.
        bn_mode: "auto", "batch" or "eval" (see ``eqsurgeon.measure.measuring_mode``).
        tolerance: stop a pass when every input's σ has a relative standard error below this, with 95%
            confidence (the estimated standard error times a chi-square factor for the batches seen).
        max_images: stop a pass after this many images, converged or not.
        min_batches: batches a pass measures at least, so the standard error itself is not a fluke (its own
            relative uncertainty is about 1/sqrt(2 (batches − 1)): 41% at 4 batches, 27% at 8).
        frontend: capture frontend when ``sites`` is None.
        device: move each batch there (non-blocking) before the forward.
        autocast_dtype: run forwards under ``torch.autocast`` with this dtype (e.g. torch.bfloat16).
        reduce: called after every batch with this rank's ``MeasureState``, returns the state pooled over
            all DDP ranks (see ``ddp_reduce``); every rank then takes the same stopping decision.
        progress: called after every batch.

    Raises:
        EqSurgeonError: the model has no equalizable site, or no site could be equalized.

    >>> from eqsurgeon.sites import Subject
    >>> conv = nn.Conv2d(4, 2, 1)
    >>> site = FusionSite("", "conv2d", 1, (Subject((0, 2), "a"), Subject((2, 4), "b")))
    >>> x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> data = [x * torch.tensor([1.0, 1.0, 3.0, 3.0]).view(1, 4, 1, 1)] * 4
    >>> result = calibrate(conv, data, sites=[site], min_batches=1)
    >>> [round(s, 1) for s in result.sites[0].scales]
    [1.0, 0.3]
    """
    _check_choices(mode, bias_correction, tolerance)
    to_device = (lambda x: x.to(device, non_blocking=True)) if device is not None else (lambda x: x)
    first = _first(batches)
    if iter(batches) is batches:  # a one-shot iterator: give the first batch back to the only pass
        batches = _Replay(first, batches)
    if sites is None:
        from eqsurgeon.sites import find_sites

        sites = find_sites(model, to_device(first), frontend)
    todo = [s for s in sites if s.ok]
    if not todo:
        raise EqSurgeonError(
            "the model has no equalizable fusion site (upsample → concat → conv); nothing to calibrate — "
            "run `eqsurgeon analyze` to see what was found"
        )
    if len(todo) > 1 and isinstance(batches, _Replay):
        raise ValueError("calibrate needs re-iterable batches (a list or DataLoader) for several sites")
    follows = {}
    if mode == "fold" and bias_correction == "auto":
        follows = _next_modules(model, [s.layer for s in todo], to_device(first), bn_mode)
    done: dict[str, SiteCalibration] = {}
    resolved = bn_mode
    for index, site in enumerate(todo):

        def report(images: int, se: float, _i: int = index, _layer: str = site.layer) -> None:
            if progress is not None:
                progress(Progress(_i, len(todo), _layer, images, max_images, se))

        moments, images, resolved = _measure_site(
            model, site, map(to_device, batches), bn_mode, tolerance, max_images, min_batches,
            autocast_dtype, reduce, report,
        )  # fmt: skip
        done[site.layer] = _equalize_site(
            model,
            site,
            moments,
            images,
            mode,
            _wants_bias(bias_correction, follows.get(site.layer), resolved),
        )
    results = tuple(done.get(s.layer) or SiteCalibration(s, (), None, "skipped", s.reason) for s in sites)
    equalized = [s for s in results if s.status == "ok"]
    if not equalized:
        reasons = "; ".join(f"{s.site.layer}: {s.reason}" for s in results)
        raise EqSurgeonError(f"no site could be equalized ({reasons}); check the model and the images")
    converged = all(s.std_rel_se_bound < tolerance for s in equalized)
    return CalibrationResult(results, mode, resolved, bias_correction, tolerance, converged)


def site_records(result: CalibrationResult) -> tuple[SiteRecord, ...]:
    """The per-site part of a checkpoint's ``eqsurgeon`` metadata."""
    return tuple(_record(s) for s in result.sites)


def _measure_site(
    model: nn.Module,
    site: FusionSite,
    batches: Iterator[torch.Tensor],
    bn_mode: str,
    tolerance: float,
    max_images: int | None,
    min_batches: int,
    autocast_dtype: torch.dtype | None,
    reduce: Callable[[MeasureState], MeasureState] | None,
    report: Callable[[int, float], None],
) -> tuple[tuple[Moments, ...], int, str]:
    state = MeasureState(0, {})
    images = 0
    with measuring_mode(model, bn_mode) as resolved, MomentHooks(model, [site]) as hooks, torch.no_grad():
        for batch in batches:
            if resolved == "batch" and batch.shape[0] < 2:
                continue  # BN cannot take batch statistics of one image (a short last batch)
            images += batch.shape[0]
            state, se = measure_step(model, batch, hooks, site.layer, images, autocast_dtype, reduce)
            report(state.images, se)
            enough = all(m.batches >= min_batches for m in state.moments[site.layer]) and se < tolerance
            if enough or (max_images is not None and state.images >= max_images):
                break
    return state.moments.get(site.layer, ()), state.images, resolved


def measure_step(
    model: nn.Module,
    batch: torch.Tensor,
    hooks: MomentHooks,
    layer: str,
    images: int,
    autocast_dtype: torch.dtype | None = None,
    reduce: Callable[[MeasureState], MeasureState] | None = None,
) -> tuple[MeasureState, float]:
    """One measuring forward: run the batch under ``hooks``, pool, and return the worst bound on a σ's
    relative standard error (``Moments.std_rel_se_bound``).

    This is the unit the benchmark times against a plain forward.
    """
    with _autocast(batch, autocast_dtype):
        model(batch)
    state = MeasureState(images, hooks.moments())
    if reduce is not None:
        state = reduce(state)
    return state, max(m.std_rel_se_bound for m in state.moments[layer])


def _equalize_site(
    model: nn.Module,
    site: FusionSite,
    moments: Sequence[Moments],
    images: int,
    mode: str,
    bias: tuple[bool, str | None],
) -> SiteCalibration:
    if not moments or any(m.count == 0 for m in moments):
        return SiteCalibration(
            site, tuple(moments), None, "skipped", "the layer never ran on the images", images
        )
    stats = [InputStat(s.channels, m.mean, m.std) for s, m in zip(site.subjects, moments, strict=True)]
    decision = compute_scales(stats)
    if decision.scales is None:
        return SiteCalibration(site, tuple(moments), None, "skipped", decision.reason, images)
    if mode == "insert":
        insert_equalizers(model, site.layer, stats, site.channel_dim)
        return SiteCalibration(site, tuple(moments), decision.scales, "ok", None, images)
    folded = fold_into(model, site.layer, site.op, stats, bias[0])
    note = folded.note or (None if folded.bias_corrected else bias[1])
    return SiteCalibration(
        site, tuple(moments), decision.scales, "ok", None, images, folded.bias_corrected, note
    )


def _wants_bias(choice: str, next_module: nn.Module | None, bn_mode: str) -> tuple[bool, str | None]:
    # (fold the means into the bias?, why not when not)
    if choice != "auto":
        return choice == "on", None if choice == "on" else "--bias-correction off"
    name = type(next_module).__name__
    if isinstance(next_module, nn.modules.batchnorm._BatchNorm) and bn_mode == "batch":
        return False, f"{name} follows: batch statistics remove a per-channel shift"
    if isinstance(next_module, nn.modules.instancenorm._InstanceNorm):
        return False, f"{name} follows: it removes a per-channel shift"
    return True, None  # BN on running statistics, LayerNorm and GroupNorm keep a per-channel shift


def _next_modules(
    model: nn.Module, layers: Sequence[str], batch: torch.Tensor, bn_mode: str
) -> dict[str, nn.Module | None]:
    # The leaf module that runs right after each fusing layer, from one forward: execution order is what
    # matters (a ConvModule may define its norm before its conv), module definition order is not.
    calls: list[str] = []
    handles = [
        m.register_forward_hook(lambda _m, _a, _o, _n=name: calls.append(_n))
        for name, m in model.named_modules()
        if not any(True for _ in m.children())
    ]
    try:
        with measuring_mode(model, bn_mode), torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    follows: dict[str, nn.Module | None] = {}
    for layer in layers:
        if layer in calls and calls.index(layer) + 1 < len(calls):
            follows[layer] = model.get_submodule(calls[calls.index(layer) + 1])
    return follows


class _Replay:
    """A one-shot iterator with its first item put back; can be iterated once."""

    def __init__(self, first: torch.Tensor, rest: Iterator[torch.Tensor]) -> None:
        self.first, self.rest = first, rest

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.first
        yield from self.rest


def _record(s: SiteCalibration) -> SiteRecord:
    scales = s.scales or (1.0,) * len(s.moments)
    inputs = tuple(
        InputRecord(sub.channels, m.mean, m.std, scale, sub.source, _upsample_text(sub))
        for sub, m, scale in zip(s.site.subjects, s.moments, scales, strict=True)
    )
    return SiteRecord(
        layer=s.site.layer,
        op=s.site.op,
        groups=s.site.groups,
        channel_dim=s.site.channel_dim,
        status=s.status,
        reason=s.reason,
        bias_corrected=s.bias_corrected,
        note=s.note,
        std_rel_se=_finite(s.std_rel_se),
        images=s.images or None,
        var_ratio_before=_finite(s.var_ratio_before),
        var_ratio_after=_finite(s.var_ratio_after),
        inputs=inputs,
    )


def _upsample_text(subject: Subject) -> str | None:
    up = subject.upsample
    return None if up is None else f"{up.mode} ×{'×'.join(f'{f:g}' for f in up.factor)}"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _autocast(batch: torch.Tensor, dtype: torch.dtype | None) -> object:
    return torch.autocast(batch.device.type, dtype=dtype) if dtype is not None else nullcontext()


def _first(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    for batch in batches:
        return batch
    raise EqSurgeonError("no batch to calibrate on; pass --data a folder with images")


def _check_choices(mode: str, bias_correction: str, tolerance: float) -> None:
    if mode not in MODES:
        raise EqSurgeonError(f"--mode {mode!r} is unknown; use fold or insert")
    if bias_correction not in BIAS_CORRECTIONS:
        raise EqSurgeonError(f"--bias-correction {bias_correction!r} is unknown; use auto, on or off")
    if not (0 < tolerance < 1):
        raise EqSurgeonError(f"--tolerance {tolerance} must be between 0 and 1, e.g. 0.005")
