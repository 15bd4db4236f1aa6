"""The training loop, top to bottom: set up, (equalize), iterate, log, evaluate, checkpoint.

One process or many under torchrun (DDP detected from ``RANK``); rank 0 alone writes files and calls
``on_log``. Everything a resumed run needs to continue bit-exactly lives in the checkpoint: weights,
optimizer, scheduler, grad scaler, RNG per rank, and the data position (the sampler is a pure function of
it, and each sample's augmentation is seeded by (seed, epoch, index)).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqsurgeon.errors import CheckpointError, RecipeError
from eqsurgeon.io import (
    METADATA_KEY,
    fit_state_dict,
    read_state_dict,
    rebuild_equalizers,
    record_from_header,
    record_to_dict,
    write_json,
)
from eqsurgeon.records import CalibrationRecord
from eqsurgeon.training import distributed, rundir
from eqsurgeon.training.checkpoint import (
    checkpoint_files,
    load_state,
)
from eqsurgeon.training.classes import recipe_class_names
from eqsurgeon.training.config import TrainConfig
from eqsurgeon.training.datasets import make_datasets
from eqsurgeon.training.metrics import SegMetrics
from eqsurgeon.training.model import build_model, init_record
from eqsurgeon.training.steps import LogFn, Loop, Start


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced (on rank 0; other ranks get the same paths)."""

    run_dir: Path
    iterations: int
    weights: Path
    best_miou: float | None
    metrics: SegMetrics | None
    seconds: float
    eq: CalibrationRecord | None
    model: nn.Module  # the trained model, unwrapped from DDP/compile, on its device
    class_names: tuple[str, ...] = ()  # one per class: the recipe's, else the dataset's standard ones
    is_main: bool = True  # rank 0 (the process that wrote the run folder)


def train(cfg: TrainConfig, *, resume: bool = False, on_log: LogFn | None = None) -> TrainResult:
    """Train ``cfg``'s model on its data (recipe keys and the run folder: README, `eqsurgeon train`).

    Args:
        cfg: the resolved recipe.
        resume: continue the run in ``cfg.run.out`` from its latest checkpoint.
        on_log: called on rank 0 with each record written to metrics.jsonl, plus ``phase`` ("train" with
            ``eta_s``, "eval" with ``classes``) and notes (``phase`` "note", ``text``).

    Raises:
        DataError, RecipeError, CheckpointError, OutputExistsError: bad input, before training starts.
        TrainingError: the loss became NaN or inf; the last good checkpoint is left as it was.

    >>> # see tests/test_train_loop.py for runnable examples; a run takes seconds even on tiny data
    """
    info = distributed.setup(cfg.run.device)
    try:
        with rundir.removed_on_failure(Path(cfg.run.out), enabled=info.is_main):
            return _train(cfg, resume, on_log or (lambda record: None), info)
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, resume: bool, on_log: LogFn, info: distributed.DistInfo) -> TrainResult:
    t_start = time.perf_counter()
    run_dir, d = Path(cfg.run.out), cfg.data
    if not d.root and d.format != "synthetic":
        raise RecipeError("no dataset: set data.root in the recipe or pass --data DIR")
    if d.num_classes < 1:
        raise RecipeError("data.num_classes must be set to the number of classes (e.g. 150 for ADE20K)")

    # -- data, then the run folder: rank 0 checks it and every rank learns the outcome (or the error)
    train_set, val_set = make_datasets(cfg)
    ckpt = _on_rank0(info, lambda: rundir.check(run_dir, cfg, resume))
    start = _prepare_model(cfg, ckpt, train_set, info)
    names = recipe_class_names(cfg.data)
    loop = Loop(cfg, info, start, ckpt, on_log, names)
    if ckpt is None and info.is_main:
        rundir.create(run_dir, cfg)  # only now: a start that failed on bad input leaves no folder behind
    if cfg.eq.mode != "none" and start.eq_record is not None and ckpt is None and info.is_main:
        write_json(run_dir / "eq.json", record_to_dict(start.eq_record))
    distributed.barrier()
    metrics = loop.run(train_set, val_set, start.iteration)
    final = checkpoint_files(run_dir, cfg.schedule.iters).weights
    result = TrainResult(
        run_dir, cfg.schedule.iters, final, loop.best_miou, metrics, time.perf_counter() - t_start,
        start.eq_record, loop.raw, names, info.is_main,
    )  # fmt: skip
    if info.is_main:
        summary = {"iterations": result.iterations, "weights": str(final), "best_mIoU": loop.best_miou,
                   "mIoU": metrics.miou if metrics else None, "seconds": result.seconds}  # fmt: skip
        write_json(run_dir / "summary.json", summary)
    return result


def _prepare_model(cfg: TrainConfig, ckpt: Any, train_set: Any, info: distributed.DistInfo) -> Start:
    # Identical init on every rank; then per-rank RNG streams (dropout, drop-path). A resumed run takes its
    # weights (and equalizer structure) from the checkpoint, not from model.init.
    torch.manual_seed(cfg.run.seed)
    model = build_model(dataclasses.replace(cfg.model, init="") if ckpt else cfg.model)
    start = Start(model, None, 0, None, init_record(cfg.model))
    if ckpt is not None:
        state = load_state(ckpt)
        start.state, start.eq_record = state, _state_record(state.get("eq"), ckpt.state)
        if start.eq_record is not None:  # insert mode added equalizer modules: rebuild them before loading
            rebuild_equalizers(model, start.eq_record)
        fit_state_dict(model, read_state_dict(ckpt.weights)[0], ckpt.weights)
        start.iteration, start.best_miou = int(state["iter"]), state.get("best_miou")
        if len(state["rng"]) != info.world:
            raise RecipeError(
                f"{cfg.run.out} was trained with {len(state['rng'])} processes; resume with the same number"
            )
    elif cfg.eq.mode != "none":
        from eqsurgeon.training.equalize import equalize_in_loop

        if start.eq_record is not None and start.eq_record.equalized_sites:
            raise CheckpointError(
                f"{cfg.model.init or cfg.model.name} is already equalized ({start.eq_record.mode} mode); "
                'equalizing again would divide by σ twice: set eq.mode = "none" to train it as is'
            )
        start.model, start.eq_record = equalize_in_loop(model, cfg, train_set, info)
    torch.manual_seed(cfg.run.seed + 1000 * info.rank)
    return start


def _on_rank0(info: distributed.DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and share its result, or its user error, with every rank."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as exc:  # re-raised below on every rank, so no rank hangs in a collective
            error = exc
    result, error = distributed.broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def _state_record(saved: str | dict[str, Any] | None, source: Path) -> CalibrationRecord | None:
    # Training states store the record as its JSON text; older ones stored the parsed dict.
    if saved is None:
        return None
    return record_from_header({METADATA_KEY: saved if isinstance(saved, str) else json.dumps(saved)}, source)
