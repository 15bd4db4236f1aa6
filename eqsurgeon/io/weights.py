"""Putting read weights into a model: insert-mode equalizers first, then a strict load; and the checks
that a calibration record belongs to the model and that calibrating again would not scale twice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn

from eqsurgeon.errors import CheckpointError
from eqsurgeon.io.fitting import fit_state_dict
from eqsurgeon.io.formats import read
from eqsurgeon.records import CalibrationRecord, FusionSite


def apply_checkpoint(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    record: CalibrationRecord | None,
    source: Path | str,
) -> None:
    """Load read weights into ``model``: insert-mode equalizers first (per ``record``), then strictly."""
    if record is not None:
        check_record_layers(model, record, source)
        rebuild_equalizers(model, record)
    fit_state_dict(model, tensors, source)


def load(model: nn.Module, checkpoint: Path | str, checkpoint_key: str | None = None) -> nn.Module:
    """Load a (calibrated) checkpoint of any format into ``model``, rebuilding insert-mode equalizers first.

    Fold-mode checkpoints have the model's own keys. Insert-mode checkpoints hold ``<layer>.layer.*`` and
    ``<layer>.equalizers.<i>.*`` keys: the wrappers are inserted from the record, then the state dict
    is loaded with ``strict=True``.

    Args:
        model: the architecture the weights belong to.
        checkpoint: ``.safetensors``, ``.pth``/``.pt``/``.bin`` or a ``save_pretrained`` folder.
        checkpoint_key: the entry of a pickled checkpoint holding the weights (e.g. ``state_dict_ema``).

    Raises:
        CheckpointError: the checkpoint is unreadable or does not fit the model.

    >>> # model = eqsurgeon.load(build_my_model(), "calibrated.safetensors")
    """
    loaded = read(checkpoint, checkpoint_key)
    apply_checkpoint(model, loaded.tensors, loaded.record, checkpoint)
    return model


def rebuild_equalizers(model: nn.Module, record: CalibrationRecord) -> None:
    """Insert the equalizer wrappers an insert-mode record describes (no-op for fold mode)."""
    from eqsurgeon.equalize import EqualizedInput, InputStat, insert_equalizers

    if record.mode != "insert":
        return
    for site in record.equalized_sites:
        try:
            layer = model.get_submodule(site.layer)
        except AttributeError:
            raise CheckpointError(
                f"the record equalized {site.layer}, which this model lacks; pass the model it was made for"
            ) from None
        if isinstance(layer, EqualizedInput):
            continue  # already rebuilt (the record was applied before)
        stats = [InputStat(tuple(i.channels), i.mean, i.std) for i in site.inputs]
        insert_equalizers(model, site.layer, stats, site.channel_dim)


def check_record_layers(model: nn.Module, record: CalibrationRecord, source: Path | str) -> None:
    """Raise when the record names a layer the model lacks, or channels beyond the layer's inputs.

    >>> from eqsurgeon.records import SiteRecord
    >>> r = CalibrationRecord("m", "fold", "eval", 1, "", sites=(SiteRecord("head", "conv2d", 1, 1, "ok"),))
    >>> check_record_layers(nn.Sequential(), r, "w.pth")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.CheckpointError: the calibration record in w.pth does not match the model: ...
    """
    from eqsurgeon.equalize import EqualizedInput

    for site in record.equalized_sites:
        try:
            layer = model.get_submodule(site.layer)
        except AttributeError:
            _mismatch(source, f"it equalized layer {site.layer}, which the model lacks")
        if isinstance(layer, EqualizedInput):
            layer = layer.layer
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor):
            _mismatch(source, f"it equalized {site.layer}, which has no weight in this model")
        width = _in_channels(weight, site.op, site.groups)
        top = max((i.channels[1] for i in site.inputs), default=0)
        if top > width:
            _mismatch(source, f"it equalized channels up to {top} of {site.layer}, which takes {width}")


def check_record_fits(record: CalibrationRecord, sites: Sequence[FusionSite], source: Path | str) -> None:
    """Raise when the record's equalized sites are not the model's: other layers or channel ranges.

    Fold records only: an insert-mode model's sites are its equalizer wrappers' insides, whose layers
    ``rebuild_equalizers`` already matched to the record.

    >>> from eqsurgeon.records import InputRecord, SiteRecord, Subject
    >>> site = FusionSite("fuse", "conv2d", 1, (Subject((0, 4), "a"), Subject((4, 8), "b")))
    >>> inputs = (InputRecord((0, 2), 0.0, 1.0, 1.0), InputRecord((2, 8), 0.0, 1.0, 1.0))
    >>> r = CalibrationRecord("m", "fold", "eval", 1, "", sites=(SiteRecord("fuse", "conv2d", 1, 1, "ok",
    ...                       inputs=inputs),))
    >>> check_record_fits(r, [site], "w.pth")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.CheckpointError: ...channels 0:2, 2:8, and the model concatenates 0:4, 4:8; ...
    """
    if record.mode != "fold":
        return
    found = {s.layer: s for s in sites if s.ok}
    for site in record.equalized_sites:
        if site.layer not in found:
            _mismatch(source, f"it equalized {site.layer}, which is no fusion site of the model")
        ours = [tuple(s.channels) for s in found[site.layer].subjects]
        theirs = [tuple(i.channels) for i in site.inputs]
        if ours != theirs:
            _mismatch(
                source,
                f"at {site.layer} it equalized channels {_ranges(theirs)}, "
                f"and the model concatenates {_ranges(ours)}",
            )  # fmt: skip


def refuse_double_equalization(record: CalibrationRecord | None, source: Path | str, allow: bool) -> None:
    """Raise when the weights were already equalized (calibrating again would scale them twice).

    Folding moves 1/σ into the weights; the features feeding the fusing layer are unchanged, so measuring
    again finds the same σ and a second fold divides the weights by σ once more (σ² in total).
    """
    if record is None or not record.equalized_sites or allow:
        return
    raise CheckpointError(
        f"{source} is already scale-equalized ({record.mode} mode, {len(record.equalized_sites)} site(s)); "
        "the fused features are unchanged by folding, so calibrating it again would divide the weights "
        "by σ a second time. Calibrate the original weights, or pass allow_equalized=True to equalize on top"
    )


def _mismatch(source: Path | str, what: str) -> NoReturn:
    raise CheckpointError(
        f"the calibration record in {source} does not match the model: {what}; "
        "pass the model the weights were calibrated for"
    )


def _ranges(ranges: Sequence[tuple[int, ...]]) -> str:
    return ", ".join(f"{a}:{b}" for a, b in ranges)


def _in_channels(weight: torch.Tensor, op: str, groups: int) -> int:
    if op == "linear":
        return int(weight.shape[-1])
    if op.startswith("conv_transpose"):
        return int(weight.shape[0])
    return int(weight.shape[1]) * max(int(groups), 1)
