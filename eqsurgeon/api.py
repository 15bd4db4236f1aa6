"""The library calls behind the commands: ``analyze``, ``check``, ``calibrate`` and ``verify``.

Each takes the model (an ``nn.Module``, a spec string, or a :class:`ModelRef` with factory arguments and
a checkpoint), the data (an image folder, a list of batches, or None for synthetic input) and a small
frozen options record, and returns a typed result. The CLI is a thin shell over these four calls.

    spec ──load──▶ module ──capture──▶ graph ──find──▶ sites ──measure──▶ moments ──equalize──▶ weights

>>> import torch
>>> from torch import nn
>>> result = analyze(nn.Conv2d(3, 3, 1), [torch.randn(2, 3, 8, 8)])
>>> result.analysis.frontend, len(result.analysis.sites)
('fx', 0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqsurgeon.calibration import CalibrationOptions, Progress, RecordSource, build_record
from eqsurgeon.checking import DEFAULT_MAX_RATIO
from eqsurgeon.errors import EqSurgeonError, OptionError, check_range
from eqsurgeon.images import Skipped
from eqsurgeon.inputs import (
    Data,
    DataOptions,
    ModelLike,
    ModelRef,
    input_size,
    make_batches,
    materialize,
    normalization,
    require_batch_for_bn,
)
from eqsurgeon.records import Analysis, CalibrationRecord, InputInfo
from eqsurgeon.results import Analyzed, Calibrated, Checked, MeasureOptions, Verified


def analyze(
    model: ModelLike,
    data: Data = None,
    options: DataOptions | None = None,
    measure: MeasureOptions | None = None,
) -> Analyzed:
    """Capture the model on the first batch, find its sites and measure them over all batches.

    The model is left bit-identical (parameters, buffers, train/eval flags).

    Args:
        model: a module, a spec or a :class:`ModelRef`.
        data: an image folder, batches of normalized images, or None for synthetic N(0, 1) input.
        options: batch making (:class:`DataOptions`); analyze's default is one batch of 8.
        measure: BN mode and capture frontend.
    """
    return _analyze(model, data, options, measure)[0]


def _analyze(
    model: ModelLike, data: Data, options: DataOptions | None, measure: MeasureOptions | None
) -> tuple[Analyzed, nn.Module]:
    from eqsurgeon.capture import capture
    from eqsurgeon.measure import measure as run_measure
    from eqsurgeon.sites import find

    opts, how = options or DataOptions(), measure or MeasureOptions()
    net, record, name, _ = materialize(model, opts)
    require_batch_for_bn(net, opts.batch_size, how.bn_mode)
    batches, source, loader = make_batches(net, data, opts, record, limit=opts.batch_size * opts.batches)
    if loader is not None:
        require_batch_for_bn(net, opts.batch_size, how.bn_mode, len(loader.source.paths))
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise EqSurgeonError("analyze needs at least one batch of images")
    captured = capture(net, first, how.frontend)
    findings = find(captured, net)
    measured = run_measure(net, findings.sites, _chain(first, it), how.bn_mode)
    size = (int(first.shape[-2]), int(first.shape[-1]))
    analysis = Analysis(
        name, captured.frontend, captured.fx_error, measured.bn_mode,
        InputInfo(source, measured.images, size), findings.sites, findings.add_sites, measured.moments,
        findings.unsearched,
    )  # fmt: skip
    if how.gradients:
        analysis = _with_gradients(analysis, net, data, batches, opts, record)
    return Analyzed(analysis, record, _skipped(loader)), net


def check(
    model: ModelLike,
    data: Data = None,
    options: DataOptions | None = None,
    measure: MeasureOptions | None = None,
    max_ratio: float = DEFAULT_MAX_RATIO,
    record: CalibrationRecord | None = None,
    allow_unsearched: bool = False,
) -> Checked:
    """Analyze, then judge each site: it passes when its effective var_ratio ≤ ``max_ratio``.

    Scales folded into the weights count: the calibration record's (from the checkpoint, or ``record``
    for a module), else the scales recognized from the weights themselves (``eqsurgeon.recognize``).
    A leaf module that could not be searched may hide a site: it fails unless ``allow_unsearched``.

    Raises:
        CheckpointError: the record names other layers or channel ranges than the model's sites.
    """
    from eqsurgeon.checking import check_model

    check_range("max_ratio", max_ratio, 0.999999)
    done, net = _analyze(model, data, options, measure)
    record = record or done.record
    result = check_model(net, done.analysis, max_ratio, record, _label(model), allow_unsearched)
    return Checked(done.analysis, record, done.skipped, result)


def calibrate(
    model: ModelLike,
    data: Data,
    *,
    out: Path | str | None = None,
    options: CalibrationOptions | None = None,
    data_options: DataOptions | None = None,
    force: bool = False,
    allow_equalized: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> Calibrated:
    """Measure every site on ``data`` until σ converges, equalize it, and write ``out`` when given.

    Args:
        model: a module, a spec or a :class:`ModelRef` (its checkpoint is the starting weights).
        data: an image folder (or batches) of training images.
        out: where to write the full state dict plus the calibration record: ``.safetensors``,
            ``.pth``/``.pt`` (MMSegmentation layout, keeping a ``.pth`` source's ``meta``), or a folder
            (``save_pretrained`` of a transformers or smp model, fold mode).
        options: mode, bias correction, tolerance... (:class:`CalibrationOptions`).
        data_options: batch making; by default the whole folder, batches of 8.
        force: overwrite ``out``.
        allow_equalized: equalize weights that already are (by their record, or as recognized from
            the weights): scales twice.
        progress: called after every measuring batch.

    Raises:
        OutputExistsError: ``out`` exists without ``force`` (checked before any work).
        CheckpointError: the weights are already equalized and ``allow_equalized`` is False.
        OptionError: ``out`` is a folder for a model that has no ``save_pretrained``, or for insert mode.
    """
    from eqsurgeon.calibration import calibrate as run_calibration
    from eqsurgeon.io import check_out, check_writable, refuse_double_equalization, write
    from eqsurgeon.recognize import refuse_recognized

    opts, cal = data_options or DataOptions(), options or CalibrationOptions()
    if out is not None:
        out = check_out(out, force)  # fail before minutes of measuring
    if data is None:
        raise OptionError("data", None, "is missing; calibrate needs training images")
    net, record, name, origin = materialize(model, opts)
    if out is not None:
        check_writable(out, net, cal.mode)
    refuse_double_equalization(record, _label(model), allow_equalized)
    require_batch_for_bn(net, opts.batch_size, cal.bn_mode)
    batches, _, loader = make_batches(net, data, opts, record, limit=opts.max_images)
    if loader is not None:
        require_batch_for_bn(net, opts.batch_size, cal.bn_mode, len(loader.source.paths))
    sites = None  # found by the recognition below, else by the calibration
    if not allow_equalized:
        sites = refuse_recognized(net, batches, cal.bn_mode, cal.frontend, _label(model))
    result = run_calibration(net, batches, cal, sites=sites, progress=progress)
    mean, std = normalization(net, opts, record)
    source = RecordSource(
        model=name, data_fingerprint=loader.source.fingerprint() if loader else "batches",
        model_kwargs=dict(model.kwargs) if isinstance(model, ModelRef) else {}, seed=opts.seed,
        input_size=input_size(net, opts, record), image_mean=mean, image_std=std,
        skipped_files=len(_skipped(loader)),
    )  # fmt: skip
    new_record = build_record(result, source)
    if out is not None:
        write(out, net, new_record, origin, force=force)
    return Calibrated(result, new_record, net, Path(out) if out is not None else None, _skipped(loader))


def verify(
    model: ModelLike,
    data: Data,
    data_options: DataOptions | None = None,
    bn_mode: str | None = None,
    record: CalibrationRecord | None = None,
) -> Verified:
    """Re-measure a calibrated model: each input's effective mean and variance, (x − μ)/σ.

    Input size and normalization default to the ones the record was calibrated with.

    Args:
        model: a :class:`ModelRef` whose checkpoint was written by calibrate, or a module with ``record``.
        data: images, ideally held out.
        data_options: batch making; by default the whole folder.
        bn_mode: as in analyze; default: the mode the record was calibrated with.
        record: the calibration record when ``model`` is a module.
    """
    from eqsurgeon.errors import CheckpointError
    from eqsurgeon.verification import verify as run_verify

    opts = data_options or DataOptions()
    net, own, _, _ = materialize(model, opts)
    record = record or own
    if record is None:
        raise CheckpointError(f"{_label(model)} has no calibration record; pass weights written by calibrate")
    batches, _, loader = make_batches(net, data, opts, record, limit=opts.max_images)
    images = len(loader.source.paths) if loader is not None else None
    require_batch_for_bn(net, opts.batch_size, bn_mode or record.bn_mode, images)
    result = run_verify(net, batches, record, bn_mode)
    return Verified(result, record, input_size(net, opts, record), _skipped(loader))


def _with_gradients(
    analysis: Analysis,
    net: nn.Module,
    data: Data,
    batches: Iterable[torch.Tensor],
    opts: DataOptions,
    record: CalibrationRecord | None,
) -> Analysis:
    # The backward runs on the images the moments came from, with their masks when the folder has them.
    from dataclasses import replace

    from eqsurgeon.gradients import measure_gradients
    from eqsurgeon.labeled import labeled_batches, segmentation_dirs

    if isinstance(data, (str, Path)) and segmentation_dirs(data) is not None:
        mean, std = normalization(net, opts, record)
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        pairs = labeled_batches(
            data, analysis.input.size, opts.batch_size, mean, std, opts.batch_size * opts.batches, opts.seed
        )  # fmt: skip
        batches = [(x.to(device), y.to(device)) for x, y in pairs]
    done = measure_gradients(net, analysis.sites, batches, bn_mode=analysis.bn_mode)
    return replace(analysis, gradients=done.gradients, grad_loss=done.loss)


def _skipped(loader: Any) -> tuple[Skipped, ...]:
    return tuple(loader.skipped) if loader is not None else ()


def _label(model: ModelLike) -> str:
    if isinstance(model, ModelRef):
        return str(model.checkpoint or model.spec)
    return model if isinstance(model, str) else type(model).__name__


def _chain(first: torch.Tensor, rest: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    yield first
    yield from rest
