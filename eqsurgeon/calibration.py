"""Calibrate: measure each fusion site on real images until σ converges, then equalize it (Algorithm 1).

A per-site loop, measure → decide scales → apply, in topological order (``find_sites`` order).
Equalizing a site changes everything downstream of it, so each site gets its own measuring pass
(``eqsurgeon.measure.measure_until``) over ``batches``, run after every earlier site was folded or
wrapped.

    pass 1: measure site A ──▶ fold A        pass 2: measure site B (sees A folded) ──▶ fold B
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from eqsurgeon.bias import next_modules, wants_bias
from eqsurgeon.equalize import InputStat, compute_scales, fold_into, insert_equalizers
from eqsurgeon.errors import EqSurgeonError, check_choice, check_range
from eqsurgeon.measure import MeasureState, PassOptions, StopRule, measure_until
from eqsurgeon.records import (
    CalibrationRecord,
    CalibrationResult,
    FusionSite,
    InputRecord,
    Moments,
    Progress,
    SiteCalibration,
    SiteRecord,
    Subject,
)

MODES = ("fold", "insert")
BIAS_CORRECTIONS = ("auto", "on", "off")


@dataclass(frozen=True)
class CalibrationOptions:
    """How to calibrate; every value is checked when the record is made.

    Attributes:
        mode: "fold" (scale weight slices, same state-dict keys) or "insert" (``EqualizedInput`` wrappers).
        bias_correction: "on", "off" or "auto": fold −Σ W_i μ_i/σ_i into the bias unless the module run
            right after the fusing layer removes per-channel constants anyway (BatchNorm on batch
            statistics, InstanceNorm). Never for insert mode, whose equalizers subtract μ themselves.
        bn_mode: "auto", "batch" or "eval" (see ``eqsurgeon.measure.measuring_mode``).
        tolerance: stop a pass when every input's σ has a relative standard error below this, with 95%
            confidence (see ``eqsurgeon.measure.StopRule``).
        max_images: stop a pass after this many images, converged or not.
        min_batches: batches a pass measures at least.
        frontend: capture frontend when the sites are not given.
        autocast_dtype: run forwards under ``torch.autocast`` with this dtype (e.g. torch.bfloat16).
    """

    mode: str = "fold"
    bias_correction: str = "auto"
    bn_mode: str = "auto"
    tolerance: float = 0.005
    max_images: int | None = None
    min_batches: int = 8
    frontend: str = "auto"
    autocast_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        from eqsurgeon.measure import BN_MODES

        check_choice("mode", self.mode, MODES)
        check_choice("bias_correction", self.bias_correction, BIAS_CORRECTIONS)
        check_choice("bn_mode", self.bn_mode, BN_MODES)
        check_range("tolerance", self.tolerance, 0, 1)
        check_range("min_batches", self.min_batches, 0)
        if self.max_images is not None:
            check_range("max_images", self.max_images, 0)


@dataclass(frozen=True)
class RecordSource:
    """Where a calibration came from, for its record. ``image_mean``/``image_std`` on the 0–1 scale."""

    model: str
    data_fingerprint: str
    model_kwargs: Mapping[str, object] = field(default_factory=dict)
    seed: int | None = None
    input_size: tuple[int, int] | None = None
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    skipped_files: int = 0


def calibrate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    options: CalibrationOptions | None = None,
    *,
    sites: Sequence[FusionSite] | None = None,
    device: torch.device | str | None = None,
    reduce: Callable[[MeasureState], MeasureState] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> CalibrationResult:
    """Measure and equalize every fusion site of ``model`` in place (fold: weights; insert: wrappers).

    Args:
        model: the eager model; changed in place. Its buffers and train/eval flags are restored.
        batches: image tensors [N, 3, H, W]. Iterated once per equalized site, so pass something that can
            be iterated again (a DataLoader, a list) when the model has more than one site.
        options: see :class:`CalibrationOptions`.
        sites: from ``find_sites``; found on the first batch when None.
        device: move each batch there (non-blocking) before the forward.
        reduce: called after every batch with this rank's ``MeasureState``, returns the state pooled over
            all DDP ranks (``eqsurgeon.measure.ddp_reduce``); every rank then stops at the same batch.
        progress: called after every batch.

    Raises:
        EqSurgeonError: the model has no equalizable site, or no site could be equalized.

    >>> from eqsurgeon.records import Subject
    >>> conv = nn.Conv2d(4, 2, 1)
    >>> site = FusionSite("", "conv2d", 1, (Subject((0, 2), "a"), Subject((2, 4), "b")))
    >>> x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> data = [x * torch.tensor([1.0, 1.0, 3.0, 3.0]).view(1, 4, 1, 1)] * 4
    >>> result = calibrate(conv, data, CalibrationOptions(min_batches=1), sites=[site])
    >>> [round(s, 1) for s in result.sites[0].scales]
    [1.0, 0.3]
    """
    opts = options or CalibrationOptions()
    to_device = (lambda x: x.to(device, non_blocking=True)) if device is not None else (lambda x: x)
    first = _first(batches)
    if iter(batches) is batches:  # a one-shot iterator: give the first batch back to the only pass
        batches = _Replay(first, batches)
    todo = _sites_to_do(model, to_device(first), sites, opts.frontend)
    if len(todo) > 1 and isinstance(batches, _Replay):
        raise ValueError("calibrate needs re-iterable batches (a list or DataLoader) for several sites")
    follows = {}
    if opts.mode == "fold" and opts.bias_correction == "auto":
        follows = next_modules(model, [s.layer for s in todo], to_device(first), opts.bn_mode)
    rule = StopRule(opts.tolerance, opts.min_batches, opts.max_images)
    done: dict[str, SiteCalibration] = {}
    resolved = opts.bn_mode
    for index, site in enumerate(todo):
        report = _reporter(progress, index, len(todo), site.layer, opts.max_images)
        pass_options = PassOptions(opts.bn_mode, opts.autocast_dtype, reduce, report)
        moments, images, resolved = measure_until(model, site, map(to_device, batches), rule, pass_options)
        bias = wants_bias(opts.bias_correction, follows.get(site.layer), resolved)
        done[site.layer] = _equalize_site(model, site, moments, images, opts.mode, bias)
    found = sites if sites is not None else todo
    results = tuple(done.get(s.layer) or SiteCalibration(s, (), None, "skipped", s.reason) for s in found)
    equalized = [s for s in results if s.status == "ok"]
    if not equalized:
        reasons = "; ".join(f"{s.site.layer}: {s.reason}" for s in results)
        raise EqSurgeonError(f"no site could be equalized ({reasons}); check the model and the images")
    converged = all(s.std_rel_se_bound < opts.tolerance for s in equalized)
    return CalibrationResult(results, opts.mode, resolved, opts.bias_correction, opts.tolerance, converged)


def build_record(result: CalibrationResult, source: RecordSource) -> CalibrationRecord:
    """The calibration record of ``result``: what ``calibrate`` and the trainer store with the weights.

    >>> from eqsurgeon.records import Subject
    >>> site = FusionSite("", "conv2d", 1, (Subject((0, 2), "a"),))
    >>> cal = SiteCalibration(site, (Moments(8, 0.0, 4.0, 2, 0.1),), (0.5,), "ok", images=2)
    >>> result = CalibrationResult((cal,), "fold", "batch", "auto", 0.005, False)
    >>> build_record(result, RecordSource("m", "ab")).sites[0].inputs[0].std
    2.0
    """
    return CalibrationRecord(
        model=source.model,
        mode=result.mode,
        bn_mode=result.bn_mode,
        images=result.images,
        data_fingerprint=source.data_fingerprint,
        model_kwargs=dict(source.model_kwargs),
        bias_correction=result.bias_correction,
        tolerance=result.tolerance,
        converged=result.converged,
        seed=source.seed,
        input_size=source.input_size,
        image_mean=source.image_mean,
        image_std=source.image_std,
        skipped_files=source.skipped_files,
        sites=tuple(_record(s) for s in result.sites),
        tool_version=_version(),
    )


def _sites_to_do(
    model: nn.Module, first: torch.Tensor, sites: Sequence[FusionSite] | None, frontend: str
) -> list[FusionSite]:
    if sites is None:
        from eqsurgeon.sites import find_sites

        sites = find_sites(model, first, frontend)
    todo = [s for s in sites if s.ok]
    if not todo:
        raise EqSurgeonError(
            "the model has no equalizable fusion site (upsample → concat → conv); nothing to calibrate — "
            "run `eqsurgeon analyze` to see what was found"
        )
    return todo


def _reporter(
    progress: Callable[[Progress], None] | None, index: int, total: int, layer: str, max_images: int | None
) -> Callable[[int, float], None] | None:
    if progress is None:
        return None
    return lambda images, bound: progress(Progress(index, total, layer, images, max_images, bound))


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


def _first(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    for batch in batches:
        return batch
    raise EqSurgeonError("no batch to calibrate on; pass --data a folder with images")


def _version() -> str:
    from eqsurgeon import __version__

    return __version__
