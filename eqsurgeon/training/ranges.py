"""The range of every number in a recipe, checked when the recipe is read, before any folder is made.

A value out of range would otherwise end minutes later in a ZeroDivisionError (``run.log_interval = 0``),
a torch error (``data.batch_size = 0``) or a silent no-op (``schedule.iters = 0``). The error names the key
the user wrote, in TOML, so it can be pasted back into ``--set``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from eqsurgeon.errors import RecipeError

MAX_SIDE = 16384  # as eqsurgeon.api.MAX_SIDE: a larger side is a typo, and would not fit in memory
MAX_PIXELS = 2**26  # 64 MP per crop: 8192 × 8192


@dataclass(frozen=True)
class Range:
    """Bounds of a number; ``open_low`` excludes ``low`` itself (a learning rate of 0 trains nothing)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def holds(self, value: float) -> bool:
        """Whether ``value`` is finite and within the bounds.

        >>> Range(0, open_low=True).holds(0.0), Range(1).holds(3)
        (False, True)
        """
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.open_high else value > self.high))

    def describe(self) -> str:
        """``it must be at least 1``, ``it must be above 0 and below 1``...

        >>> Range(0, 1, open_high=True).describe()
        'it must be at least 0 and below 1'
        """
        parts = []
        if self.low is not None:
            parts.append(f"{'above' if self.open_low else 'at least'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'below' if self.open_high else 'at most'} {self.high:g}")
        return "it must be " + (" and ".join(parts) if parts else "a finite number")


POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)  # a probability
COUNT = Range(1)
SIDE = Range(1, MAX_SIDE)

# Every number of the recipe; a tuple's items are checked one by one.
RANGES: dict[str, Range] = {
    "model.drop_path_rate": Range(0, 1, open_high=True),
    "data.num_classes": Range(0, 65535),
    "data.ignore_index": Range(0, 255),  # masks are 8-bit
    "data.crop_size": SIDE,
    "data.scale": Range(1, 4 * MAX_SIDE),
    "data.ratio_range": Range(0, 100, open_low=True),
    "data.cat_max_ratio": Range(0, 1, open_low=True),
    "data.flip_prob": FRACTION,
    "data.mean": Range(-1e6, 1e6),
    "data.std": Range(0, 1e6, open_low=True),
    "data.batch_size": Range(1, 4096),
    "data.workers": Range(0, 256),
    "data.max_pixels": Range(1, 2**31),
    "data.max_aspect": Range(1),
    "optim.lr": Range(0, 10, open_low=True),
    "optim.weight_decay": NON_NEGATIVE,
    "optim.momentum": Range(0, 1, open_high=True),
    "optim.betas": Range(0, 1, open_high=True),
    "optim.grad_clip": NON_NEGATIVE,
    "optim.layer_decay_rate": POSITIVE,
    "optim.layer_decay_num_layers": NON_NEGATIVE,
    "schedule.iters": COUNT,
    "schedule.warmup_iters": NON_NEGATIVE,
    "schedule.warmup_ratio": FRACTION,
    "schedule.power": NON_NEGATIVE,
    "schedule.min_lr": NON_NEGATIVE,
    "loss.aux_weight": NON_NEGATIVE,
    "eval.interval": NON_NEGATIVE,
    "eval.scale": Range(1, 4 * MAX_SIDE),
    "eval.crop_size": SIDE,
    "eval.stride": SIDE,
    "eval.max_images": NON_NEGATIVE,
    "checkpoint.interval": COUNT,
    "checkpoint.keep": NON_NEGATIVE,
    "eq.images": COUNT,
    "eq.batch_size": Range(1, 4096),
    "eq.tolerance": Range(0, 1, open_low=True, open_high=True),
    "run.seed": Range(0, 2**32 - 1),  # numpy's and the samplers' seed range
    "run.log_interval": COUNT,
    "run.gpus": Range(0, 65535),
}


def check_ranges(cfg: Any, source: str) -> None:  # cfg: a TrainConfig (config.py imports this module)
    """Raise :class:`RecipeError` naming the first key whose value is out of range.

    >>> from eqsurgeon.training.config import TrainConfig, ScheduleConfig
    >>> check_ranges(TrainConfig(schedule=ScheduleConfig(iters=0)), "--set")
    Traceback (most recent call last):
    ...
    eqsurgeon.errors.RecipeError: --set: schedule.iters = 0 is out of range; it must be at least 1
    """
    for key, bounds in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name, None)
        items = () if value is None else value if isinstance(value, tuple) else (value,)
        if not all(bounds.holds(v) for v in items):
            raise RecipeError(f"{source}: {key} = {_shown(value)} is out of range; {bounds.describe()}")
    _check_related(cfg, source)


def _check_related(cfg: Any, source: str) -> None:
    # Limits that tie two keys together.
    low, high = cfg.data.ratio_range
    if low > high:
        raise RecipeError(f"{source}: data.ratio_range = {_shown(cfg.data.ratio_range)} must be [low, high]")
    height, width = cfg.data.crop_size
    if height * width > MAX_PIXELS:
        raise RecipeError(
            f"{source}: data.crop_size = {_shown(cfg.data.crop_size)} has {height * width / 1e6:.0f} MP; "
            f"it must have at most {MAX_PIXELS / 1e6:.0f} MP"
        )
    e = cfg.eval
    if e.mode == "slide" and any(s > c for s, c in zip(e.stride, e.crop_size, strict=True)):
        raise RecipeError(
            f"{source}: eval.stride = {_shown(e.stride)} is larger than eval.crop_size = "
            f"{_shown(e.crop_size)}; sliding windows would leave gaps: use a stride at most the crop size"
        )


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)
