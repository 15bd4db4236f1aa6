"""Test helpers for users who want scale equilibrium enforced in their own test suite (pytest or any)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from eqsurgeon.api import DataOptions, MeasureOptions, check
from eqsurgeon.checking import DEFAULT_MAX_RATIO
from eqsurgeon.records import CalibrationRecord


def assert_scale_equilibrium(
    model: nn.Module,
    example_input: torch.Tensor,
    checkpoint: Path | str | None = None,
    *,
    max_ratio: float = DEFAULT_MAX_RATIO,
    bn_mode: str = "auto",
    frontend: str = "auto",
    record: CalibrationRecord | None = None,
    checkpoint_key: str | None = None,
) -> None:
    """Raise ``AssertionError`` naming each fusion site whose effective var_ratio is above ``max_ratio``.

    Scales folded into the weights count, as in ``eqsurgeon check``: the calibration record's (of
    ``checkpoint``, or ``record``), else those recognized from the weights themselves, so a
    fold-calibrated model passes even after a save that dropped its record. ``ScaleEqualizer`` modules
    count because they sit in the measured path. Under pytest the traceback ends at the caller's line.

    Args:
        model: the architecture; left bit-identical (a checkpoint is loaded into a copy).
        example_input: a batch of normalized images, on the model's device.
        checkpoint: weights to check (any format ``eqsurgeon.io.read`` takes), with their record.
        max_ratio: the largest effective var_ratio that passes.
        bn_mode: "auto", "batch" or "eval" (see ``eqsurgeon.measure``).
        frontend: "auto", "fx" or "export".
        record: the calibration record when ``model`` already holds calibrated weights.
        checkpoint_key: the entry of a pickled checkpoint holding the weights (``state_dict_ema``).

    Raises:
        AssertionError: a site is out of equilibrium; the message gives each ratio and the limit.
        EqSurgeonError: the checkpoint or record does not fit the model.

    >>> assert_scale_equilibrium(nn.Conv2d(3, 3, 1), torch.randn(2, 3, 8, 8))
    """
    __tracebackhide__ = True  # pytest: the failure points at the test, not into eqsurgeon
    if checkpoint is not None:
        from eqsurgeon.io import apply_checkpoint, read

        loaded = read(checkpoint, checkpoint_key)
        model = copy.deepcopy(model)
        apply_checkpoint(model, loaded.tensors, loaded.record, checkpoint)
        record = record or loaded.record
    opts = DataOptions(batch_size=max(int(example_input.shape[0]), 1), device=str(example_input.device))
    how = MeasureOptions(bn_mode=bn_mode, frontend=frontend)
    result = check(model, [example_input], opts, how, max_ratio, record=record).result
    assert result is not None
    failed = [v for v in result.verdicts if not v.passed]
    if failed:
        lines = ", ".join(
            f"{v.layer} (var_ratio {v.ratio:.3f}{_how(v.scales_from)})" if v.ratio is not None else v.layer
            for v in failed
        )
        raise AssertionError(f"scale disequilibrium above max_ratio {max_ratio:g} at: {lines}")


def _how(scales_from: str | None) -> str:
    if scales_from is None:
        return ""
    return f", folded scales {'from the record' if scales_from == 'record' else 'read from the weights'}"
