"""Verify: re-measure a calibrated model and report each input's *effective* statistics, (x − μ)/σ.

Fold mode leaves the features unchanged and moves 1/σ into the weights, so the effective input of the
fusing layer is computed from the raw one: mean (m − μ)/σ, variance v/σ². Insert mode is measured
behind the equalizers (on ``<layer>.layer``), where the features are already normalized.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from eqsurgeon.errors import CheckpointError
from eqsurgeon.measure import measure
from eqsurgeon.records import CalibrationRecord, FusionSite, SiteRecord, Subject
from eqsurgeon.stats import var_ratio


@dataclass(frozen=True)
class EffectiveInput:
    """One concat input as the fusing layer effectively sees it."""

    channels: tuple[int, int]
    source: str
    mean: float  # effective mean, (m − μ)/σ; 0 when calibrated on the same distribution
    var: float  # effective variance, v/σ²; 1 likewise


@dataclass(frozen=True)
class SiteVerification:
    layer: str
    inputs: tuple[EffectiveInput, ...]

    @property
    def var_ratio(self) -> float:
        return var_ratio([i.var for i in self.inputs])


@dataclass(frozen=True)
class Verification:
    sites: tuple[SiteVerification, ...]
    images: int
    bn_mode: str


def verify(
    model: nn.Module, batches: Iterable[torch.Tensor], meta: CalibrationRecord, bn_mode: str | None = None
) -> Verification:
    """Measure every equalized site of a calibrated ``model`` and return effective statistics.

    Args:
        model: the model with the calibrated checkpoint loaded (``eqsurgeon.load``); unchanged afterwards.
        batches: image tensors on the model's device, ideally held-out images.
        meta: the checkpoint's calibration record (``eqsurgeon.io.read_checkpoint(path)[1]``).
        bn_mode: as in ``measure``; default: the mode the checkpoint was calibrated with.

    Raises:
        CheckpointError: the checkpoint records no equalized site.
    """
    records = meta.equalized_sites
    if not records:
        raise CheckpointError("the checkpoint records no equalized site; pass a file written by calibrate")
    sites = [_probe(r, meta.mode) for r in records]
    for site in sites:
        try:
            model.get_submodule(site.layer)
        except AttributeError:
            raise CheckpointError(
                f"the checkpoint equalized {site.layer}, which this model lacks; "
                "pass the model it was made for"
            ) from None
    measurement = measure(model, sites, batches, bn_mode or meta.bn_mode)
    out = []
    for record, site in zip(records, sites, strict=True):
        effective = []
        for inp, m in zip(record.inputs, measurement.moments[site.layer], strict=True):
            if meta.mode == "insert":
                mean, var = m.mean, m.var
            else:
                mean, var = (m.mean - inp.mean) * inp.scale, m.var * inp.scale**2
            effective.append(EffectiveInput(tuple(inp.channels), inp.source, mean, var))
        out.append(SiteVerification(record.layer, tuple(effective)))
    return Verification(tuple(out), measurement.images, measurement.bn_mode)


def _probe(record: SiteRecord, mode: str) -> FusionSite:
    # Where to hook: the fusing layer itself (fold), or the original layer inside its wrapper (insert).
    layer = f"{record.layer}.layer" if mode == "insert" else record.layer
    subjects = tuple(Subject(tuple(i.channels), i.source) for i in record.inputs)
    return FusionSite(layer, record.op, record.groups, subjects, record.channel_dim)
