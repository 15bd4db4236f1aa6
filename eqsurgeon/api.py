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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqsurgeon.calibration import CalibrationOptions, CalibrationResult, Progress, RecordSource, build_record
from eqsurgeon.checking import DEFAULT_MAX_RATIO, CheckResult
from eqsurgeon.errors import EqSurgeonError, OptionError, check_choice, check_range
from eqsurgeon.images import Skipped
from eqsurgeon.inputs import (
    input_size,
    make_batches,
    materialize,
    normalization,
    require_batch_for_bn,
)
from eqsurgeon.records import Analysis, CalibrationRecord, InputInfo
from eqsurgeon.verification import Verification

FRONTENDS = ("auto", "fx", "export")
MAX_SIDE = 16384  # a larger input side is a typo, and its activations would not fit in memory


@dataclass(frozen=True)
class ModelRef:
    """A model as the commands name it: a spec, its factory's keyword arguments and a checkpoint.

    >>> ModelRef("upernet_tiny", {"num_classes": 5}).spec
    'upernet_tiny'
    """

    spec: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


ModelLike = nn.Module | ModelRef | str
Data = Path | str | Iterable[torch.Tensor] | None


@dataclass(frozen=True)
class DataOptions:
    """How batches are made, for every call.

    Attributes:
        input_size: (height, width); None: the size the model declares, else 512×512.
        batch_size: images per forward.
        batches: forwards to measure over (analyze, check); calibrate and verify read the whole folder.
        max_images: read at most this many images of a folder.
        workers: image decoding worker processes.
        mean: per-channel input mean on the 0–1 scale; None: the model's declared mean, else ImageNet's.
        std: likewise for the std.
        seed: seeds model initialization, synthetic input and image sampling.
        device: "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
    """

    input_size: tuple[int, int] | None = None
    batch_size: int = 8
    batches: int = 1
    max_images: int | None = None
    workers: int = 2
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 0)
        check_range("batches", self.batches, 0)
        check_range("workers", self.workers, -1)
        if self.max_images is not None:
            check_range("max_images", self.max_images, 0)
        if self.input_size is not None and not (
            len(self.input_size) == 2 and all(1 <= s <= MAX_SIDE for s in self.input_size)
        ):
            raise OptionError("input_size", self.input_size, f"needs two sides from 1 to {MAX_SIDE}")


@dataclass(frozen=True)
class MeasureOptions:
    """How analyze and check measure: BN mode, capture frontend, and whether to measure gradients.

    Attributes:
        bn_mode: "auto", "batch" or "eval" (see :func:`eqsurgeon.measure.measure`).
        frontend: "auto", "fx" or "export".
        gradients: also run a backward and measure each input's weight-gradient RMS
            (:func:`eqsurgeon.gradients.measure_gradients`): cross-entropy when the data is a
            segmentation folder (images/ + masks/), else a random projection of the logits.
    """

    bn_mode: str = "auto"
    frontend: str = "auto"
    gradients: bool = False

    def __post_init__(self) -> None:
        from eqsurgeon.measure import BN_MODES

        check_choice("bn_mode", self.bn_mode, BN_MODES)
        check_choice("frontend", self.frontend, FRONTENDS)


@dataclass(frozen=True)
class Analyzed:
    """What :func:`analyze` and :func:`check` measured, with the checkpoint's record and skipped files."""

    analysis: Analysis
    record: CalibrationRecord | None = None
    skipped: tuple[Skipped, ...] = ()


@dataclass(frozen=True)
class Checked(Analyzed):
    """:func:`check`'s verdict on top of the analysis."""

    result: CheckResult | None = None


@dataclass(frozen=True)
class Calibrated:
    """What :func:`calibrate` did, and where it wrote the weights (None when ``out`` was not given)."""

    result: CalibrationResult
    record: CalibrationRecord
    model: nn.Module
    out: Path | None
    skipped: tuple[Skipped, ...] = ()


@dataclass(frozen=True)
class Verified:
    """:func:`verify`'s effective statistics and the record they were computed against."""

    verification: Verification
    record: CalibrationRecord
    size: tuple[int, int]
    skipped: tuple[Skipped, ...] = ()


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
    from eqsurgeon.capture import capture
    from eqsurgeon.measure import measure as run_measure
    from eqsurgeon.sites import find

    opts, how = options or DataOptions(), measure or MeasureOptions()
    net, record, name = materialize(model, opts)
    require_batch_for_bn(net, opts.batch_size, how.bn_mode)
    batches, source, loader = make_batches(net, data, opts, record, limit=opts.batch_size * opts.batches)
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
    )  # fmt: skip
    if how.gradients:
        analysis = _with_gradients(analysis, net, data, batches, opts, record)
    return Analyzed(analysis, record, _skipped(loader))


def check(
    model: ModelLike,
    data: Data = None,
    options: DataOptions | None = None,
    measure: MeasureOptions | None = None,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> Checked:
    """Analyze, then judge each site: it passes when its effective var_ratio ≤ ``max_ratio``.

    Scales folded into the weights (read from the checkpoint's calibration record) count.
    """
    from eqsurgeon.checking import check as verdicts

    check_range("max_ratio", max_ratio, 0.999999)
    done = analyze(model, data, options, measure)
    return Checked(done.analysis, done.record, done.skipped, verdicts(done.analysis, max_ratio, done.record))


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
        out: ``.safetensors`` to write: the full state dict plus the calibration record.
        options: mode, bias correction, tolerance... (:class:`CalibrationOptions`).
        data_options: batch making; by default the whole folder, batches of 8.
        force: overwrite ``out``.
        allow_equalized: equalize weights whose record says they already are (scales twice).
        progress: called after every measuring batch.

    Raises:
        OutputExistsError: ``out`` exists without ``force`` (checked before any work).
        CheckpointError: the weights are already equalized and ``allow_equalized`` is False.
    """
    from eqsurgeon.calibration import calibrate as run_calibration
    from eqsurgeon.io import check_output, refuse_double_equalization, save_checkpoint

    opts, cal = data_options or DataOptions(), options or CalibrationOptions()
    if out is not None:
        out = check_output(out, force, (".safetensors",))  # fail before minutes of measuring
    if data is None:
        raise OptionError("data", None, "is missing; calibrate needs training images")
    net, record, name = materialize(model, opts)
    refuse_double_equalization(record, _label(model), allow_equalized)
    require_batch_for_bn(net, opts.batch_size, cal.bn_mode)
    batches, _, loader = make_batches(net, data, opts, record, limit=opts.max_images)
    result = run_calibration(net, batches, cal, progress=progress)
    mean, std = normalization(net, opts, record)
    source = RecordSource(
        model=name, data_fingerprint=loader.source.fingerprint() if loader else "batches",
        model_kwargs=dict(model.kwargs) if isinstance(model, ModelRef) else {}, seed=opts.seed,
        input_size=input_size(net, opts, record), image_mean=mean, image_std=std,
        skipped_files=len(_skipped(loader)),
    )  # fmt: skip
    new_record = build_record(result, source)
    if out is not None:
        save_checkpoint(out, net.state_dict(), new_record, force=force)
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
    net, own, _ = materialize(model, opts)
    record = record or own
    if record is None:
        raise CheckpointError(f"{_label(model)} has no calibration record; pass weights written by calibrate")
    batches, _, loader = make_batches(net, data, opts, record, limit=opts.max_images)
    result = run_verify(net, batches, record, bn_mode)
    return Verified(result, record, input_size(net, opts, record), _skipped(loader))


def _with_gradients(
    analysis: Analysis, net: nn.Module, data: Data, batches: Iterable[torch.Tensor], opts: DataOptions,
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
