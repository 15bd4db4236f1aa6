"""Analyze a model end to end: capture → find sites → measure, as one frozen record.

>>> import torch
>>> from torch import nn
>>> a = analyze(nn.Conv2d(3, 3, 1), [torch.randn(2, 3, 8, 8)])
>>> a.frontend, len(a.sites)
('fx', 0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from eqsurgeon.capture import capture
from eqsurgeon.measure import measure
from eqsurgeon.records import AddSite, FusionSite, Moments, UnsearchedLeaf
from eqsurgeon.sites import find

BN_RELU_VAR = (math.pi - 1) / (2 * math.pi)  # variance of ReLU(N(0, 1)): the reference scale


@dataclass(frozen=True)
class InputInfo:
    """What the statistics were measured on."""

    source: str  # "synthetic" or the image folder
    images: int
    size: tuple[int, int]


@dataclass(frozen=True)
class Analysis:
    """Sites of a model and the moments of every ok site's inputs.

    ``unsearched`` names the opaque leaves site finding could not look inside (a site there is unknown).
    """

    model: str
    frontend: str
    fx_error: str | None
    bn_mode: str
    input: InputInfo
    sites: tuple[FusionSite, ...]
    add_sites: tuple[AddSite, ...]
    moments: Mapping[str, tuple[Moments, ...]] = field(default_factory=dict)
    unsearched: tuple[UnsearchedLeaf, ...] = ()

    def var_ratio(self, site: FusionSite, scales: Sequence[float] | None = None) -> float | None:
        """max/min input variance of a measured site; ``scales`` folded into the weights count as x·s."""
        if site.layer not in self.moments:
            return None
        return var_ratio([m.var for m in self.moments[site.layer]], scales)


def analyze(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    frontend: str = "auto",
    bn_mode: str = "auto",
    model_name: str = "",
    source: str = "synthetic",
) -> Analysis:
    """Capture ``model`` on the first batch, find its sites and measure them over all batches.

    Args:
        model: the eager model; bit-identical afterwards.
        batches: image tensors on the model's device; the first one is also the capture example.
        frontend: ``"auto"``, ``"fx"`` or ``"export"``.
        bn_mode: ``"auto"``, ``"batch"`` or ``"eval"`` (see :func:`eqsurgeon.measure.measure`).
        model_name: the spec, for the report.
        source: ``"synthetic"`` or the image folder, for the report.
    """
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise ValueError("analyze needs at least one batch")
    captured = capture(model, first, frontend)
    findings = find(captured, model)
    measurement = measure(model, findings.sites, _chain(first, it), bn_mode)
    size = (int(first.shape[-2]), int(first.shape[-1]))
    return Analysis(
        model_name,
        captured.frontend,
        captured.fx_error,
        measurement.bn_mode,
        InputInfo(source, measurement.images, size),
        findings.sites,
        findings.add_sites,
        measurement.moments,
        findings.unsearched,
    )


def var_ratio(variances: Sequence[float], scales: Sequence[float] | None = None) -> float:
    """Largest over smallest variance; ``inf`` when one is zero or not finite.

    >>> var_ratio([0.34, 0.2])
    1.7
    >>> var_ratio([0.34, 0.2], scales=[1 / 0.34 ** 0.5, 1 / 0.2 ** 0.5])
    1.0
    """
    if scales is not None:
        variances = [v * s * s for v, s in zip(variances, scales)]
    if not variances or not all(math.isfinite(v) for v in variances) or min(variances) <= 0:
        return math.inf
    return round(max(variances) / min(variances), 12)


def synthetic_batches(
    size: tuple[int, int], batch_size: int, count: int = 1, seed: int = 0, device: str = "cpu"
) -> list[torch.Tensor]:
    """Normalized-image-like batches: i.i.d. N(0, 1) pixels, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, 3, *size, generator=gen).to(device) for _ in range(count)]


def _chain(first: torch.Tensor, rest: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    yield first
    yield from rest
