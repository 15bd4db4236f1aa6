"""The training recipe: one frozen dataclass per TOML table, loaded with clear errors for any bad key.

    [model] name, kwargs, init      [data] where and how to read     [optim] / [schedule]  optimizer, lr
    [loss] aux weight, averaging     [eval] / [checkpoint]  when      [eq] equalization      [run] runtime

Every key has a default, so a recipe states only what differs. ``--set section.key=value`` overrides a key
with a TOML value (``--set optim.lr=1e-4``, ``--set data.crop_size=[256,256]``).

TOML has no null. A factory argument that must be ``None`` is written ``{ none = true }``
(``kwargs = { encoder_weights = { none = true } }``, or ``--set 'model.kwargs.aux_params={none=true}'``);
the recipe keeps that spelling (so a run folder's config.toml reads back the same), and
:func:`factory_kwargs` turns it into ``None`` when the model is built.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqsurgeon.errors import RecipeError
from eqsurgeon.training.ranges import check_ranges
from eqsurgeon.training.toml_read import apply_override, build_table, read_toml


@dataclass(frozen=True)
class ModelConfig:
    name: str = ""  # spec: zoo name, file.py:factory, package.module:factory or a save_pretrained folder
    kwargs: dict[str, Any] = field(default_factory=dict)  # factory keyword arguments; None is { none = true }
    init: str = ""  # checkpoint (file or save_pretrained folder) to start from; --init overrides
    drop_path_rate: float | None = None  # stochastic depth of the backbone's last block; [] = the model's own


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # dataset folder; --data overrides
    format: str = "auto"  # auto | folder | ade20k | cityscapes | voc | synthetic (random, in memory)
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    ignore_index: int = 255
    crop_size: tuple[int, int] = (512, 512)  # (height, width)
    scale: tuple[int, int] = (2048, 512)  # RandomResize (long edge, short edge) before the ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0-255
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    batch_size: int = 2  # per process (per GPU)
    workers: int = 2  # data-loader workers per process
    augment: str = "auto"  # where resize/crop/colour/normalize run: workers | device | auto (device on CUDA)
    max_pixels: int = 40_000_000  # images (and masks) whose header declares more are refused undecoded
    max_aspect: float = 50.0  # likewise for a longer side over this × the shorter


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 6e-5
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    no_decay_norm_bias: bool = True  # no weight decay on norm weights and biases (1-d params)
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    no_decay_names: tuple[str, ...] = ()  # also no weight decay where a parameter name contains one of these
    layer_decay_rate: float = 1.0  # ConvNeXt stage-wise lr decay (MMSeg's LR-decay constructor)
    layer_decay_num_layers: int = 0  # its paramwise_cfg num_layers (6 for ConvNeXt-T, 12 for S/B); 0 = off


@dataclass(frozen=True)
class ScheduleConfig:
    iters: int = 160_000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6  # lr at step 0 = lr × warmup_ratio
    power: float = 1.0  # poly decay power
    min_lr: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    aux_weight: float = 0.4
    average: str = "all"  # all: MMSeg (sum over pixels / all pixels); valid: / non-ignored pixels


@dataclass(frozen=True)
class EvalConfig:
    interval: int = 16_000  # iterations between evaluations; 0 evaluates only at the end
    split: str = "val"
    scale: tuple[int, int] | None = (2048, 512)  # test-time keep-ratio resize; empty list = none
    mode: str = "whole"  # whole | slide
    crop_size: tuple[int, int] = (512, 512)  # slide window
    stride: tuple[int, int] = (341, 341)
    max_images: int = 0  # 0 = the whole split


@dataclass(frozen=True)
class CheckpointConfig:
    interval: int = 16_000
    keep: int = 3  # last K iteration checkpoints kept (plus the best by mIoU)


@dataclass(frozen=True)
class EqConfig:
    mode: str = "none"  # none | fold | insert
    images: int = 64  # training crops to calibrate on at most (over all ranks)
    batch_size: int = 8
    tolerance: float = 0.005  # stop earlier once every σ has this relative standard error
    bn_mode: str = "auto"  # auto | batch | eval
    bias_correction: str = "auto"


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    log_interval: int = 50
    tensorboard: str = "auto"  # auto: log to run/tb when tensorboard is installed; on: also say when not; off
    deterministic: bool = False  # cudnn.deterministic; CPU runs are deterministic already
    gpus: int = 0  # GPUs the recipe was written for: total batch = data.batch_size × gpus; 0 = any


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eq: EqConfig = field(default_factory=EqConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES = {
    "data.format": ("auto", "folder", "ade20k", "cityscapes", "voc", "synthetic"),
    "data.augment": ("auto", "workers", "device"),
    "optim.name": ("adamw", "sgd"),
    "loss.average": ("all", "valid"),
    "eval.mode": ("whole", "slide"),
    "eq.mode": ("none", "fold", "insert"),
    "eq.bn_mode": ("auto", "batch", "eval"),
    "eq.bias_correction": ("auto", "on", "off"),
    "run.device": ("auto", "cpu", "cuda"),
    "run.amp": ("none", "bf16", "fp16"),
    "run.tensorboard": ("auto", "on", "off"),
}


NONE = {"none": True}  # the recipe spelling of None


def factory_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The factory's keyword arguments with every ``{ none = true }`` (at any depth) replaced by None.

    >>> factory_kwargs({"encoder_weights": {"none": True}, "aux_params": {"classes": 3}})
    {'encoder_weights': None, 'aux_params': {'classes': 3}}
    """
    return {k: _none(v) for k, v in kwargs.items()}


def _none(value: Any) -> Any:
    if value == NONE:
        return None
    if isinstance(value, dict):
        return {k: _none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_none(v) for v in value]
    return value


def load_config(path: Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a recipe TOML (or only defaults when ``path`` is None) and apply ``key=value`` overrides.

    Raises:
        RecipeError: unreadable TOML, unknown table or key, wrong type, or a value outside its choices.

    >>> cfg = load_config(None, ["optim.lr=1e-3", "data.crop_size=[64, 64]"])
    >>> cfg.optim.lr, cfg.data.crop_size
    (0.001, (64, 64))
    """
    raw = read_toml(Path(path), "recipe") if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    source = " + ".join(([str(path)] if path is not None else []) + (["--set"] if overrides else []))
    return config_from_dict(raw, source=source or "defaults")


def config_from_dict(raw: dict[str, Any], source: str = "recipe") -> TrainConfig:
    """Validate a nested dict (as TOML parses it) into a :class:`TrainConfig`.

    >>> config_from_dict({"run": {"seed": 3}}).run.seed
    3
    """
    sections = {}
    for f in dataclasses.fields(TrainConfig):
        table = raw.get(f.name, {})
        if not isinstance(table, dict):
            raise RecipeError(f"{source}: [{f.name}] must be a table, got {type(table).__name__}")
        sections[f.name] = build_table(_SECTIONS[f.name], f.name, table, source, CHOICES)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise RecipeError(f"{source}: unknown table [{unknown[0]}]; tables are {', '.join(_SECTIONS)}")
    cfg = TrainConfig(**sections)
    check_ranges(cfg, source)
    _check_eq(cfg.eq, source)
    return cfg


def _check_eq(eq: EqConfig, source: str) -> None:
    # The calibration library validates its own options; its errors name its parameters, so they are
    # re-worded here as the recipe keys the user wrote (eq.tolerance = 0 ...), when the recipe loads.
    if eq.mode == "none":
        return
    from eqsurgeon.calibration import CalibrationOptions
    from eqsurgeon.errors import OptionError

    try:
        CalibrationOptions(
            mode=eq.mode, bias_correction=eq.bias_correction, bn_mode=eq.bn_mode, tolerance=eq.tolerance,
            max_images=eq.images,
        )  # fmt: skip
    except OptionError as exc:
        name = "images" if exc.name == "max_images" else exc.name
        raise RecipeError(f"{source}: {exc.render(f'eq.{name} = ')}") from None


def load_config_text(text: str, source: str = "config.toml") -> TrainConfig:
    """Parse recipe TOML text (used for the run folder's resolved config)."""
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise RecipeError(f"{source} is not valid TOML ({exc})") from None
    return config_from_dict(raw, source=source)


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "loss": LossConfig,
    "eval": EvalConfig,
    "checkpoint": CheckpointConfig,
    "eq": EqConfig,
    "run": RunConfig,
}
