"""The training loop, top to bottom: set up, (equalize), iterate, log, evaluate, checkpoint.

One process or many under torchrun (DDP detected from ``RANK``); rank 0 alone writes files and calls
``on_log``. Everything a resumed run needs to continue bit-exactly lives in the checkpoint: weights,
optimizer, scheduler, grad scaler, RNG per rank, and the data position (the sampler is a pure function of
it, and each sample's augmentation is seeded by (seed, epoch, index)).
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from eqsurgeon.errors import CheckpointError, DataError, RecipeError, TrainingError
from eqsurgeon.io import (
    METADATA_KEY,
    fit_state_dict,
    read_state_dict,
    rebuild_equalizers,
    record_from_header,
    record_to_dict,
    record_to_json,
    write_json,
)
from eqsurgeon.outputs import split_outputs
from eqsurgeon.records import CalibrationRecord
from eqsurgeon.training import distributed, rundir
from eqsurgeon.training.augment import PaddedBatch
from eqsurgeon.training.checkpoint import (
    checkpoint_files,
    load_state,
    restore,
    rng_state,
    save_checkpoint,
    write_weights,
)
from eqsurgeon.training.config import TrainConfig
from eqsurgeon.training.datasets import make_datasets
from eqsurgeon.training.evaluate import autocast, evaluate, to_input
from eqsurgeon.training.grad_log import grad_ratio_hooks
from eqsurgeon.training.losses import segmentation_loss
from eqsurgeon.training.metrics import SegMetrics
from eqsurgeon.training.model import build_model, init_record
from eqsurgeon.training.optim import build_optimizer, build_scheduler
from eqsurgeon.training.sampler import InfiniteSampler
from eqsurgeon.training.transforms import PadCollate

LogFn = Callable[[dict[str, Any]], None]


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


def train(cfg: TrainConfig, *, resume: bool = False, on_log: LogFn | None = None) -> TrainResult:
    """Train ``cfg``'s model on its data (recipe keys and the run folder: README, `eqsurgeon train`).

    Args:
        cfg: the resolved recipe.
        resume: continue the run in ``cfg.run.out`` from its latest checkpoint.
        on_log: called on rank 0 with each record written to metrics.jsonl (plus ``eta_s``, ``phase``).

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
    run_dir, d, device = Path(cfg.run.out), cfg.data, info.device
    if not d.root and d.format != "synthetic":
        raise RecipeError("no dataset: set data.root in the recipe or pass --data DIR")
    if d.num_classes < 1:
        raise RecipeError("data.num_classes must be set to the number of classes (e.g. 150 for ADE20K)")

    # -- data, then the run folder: rank 0 checks it and every rank learns the outcome (or the error)
    train_set, val_set = make_datasets(cfg)
    ckpt = _on_rank0(info, lambda: rundir.check(run_dir, cfg, resume))

    # -- model: identical init on every rank; then per-rank RNG streams (dropout, drop-path)
    torch.manual_seed(cfg.run.seed)
    # A resumed run takes its weights (and equalizer structure) from the checkpoint, not from --init.
    model = build_model(dataclasses.replace(cfg.model, init="") if ckpt else cfg.model)
    start_iter, best_miou, eq_record = 0, None, init_record(cfg.model)
    state: dict[str, Any] | None = None
    if ckpt is not None:
        state = load_state(ckpt)
        eq_record = _state_record(state.get("eq"), ckpt.state)
        if eq_record is not None:  # insert mode added equalizer modules: rebuild them before loading
            rebuild_equalizers(model, eq_record)
        fit_state_dict(model, read_state_dict(ckpt.weights)[0], ckpt.weights)
        start_iter, best_miou = int(state["iter"]), state.get("best_miou")
        if len(state["rng"]) != info.world:
            raise RecipeError(
                f"{run_dir} was trained with {len(state['rng'])} processes; resume with the same number"
            )
    elif cfg.eq.mode != "none":
        from eqsurgeon.training.equalize import equalize_in_loop

        if eq_record is not None and eq_record.equalized_sites:
            raise CheckpointError(
                f"{cfg.model.init or cfg.model.name} is already equalized ({eq_record.mode} mode); "
                'equalizing again would divide by σ twice: set eq.mode = "none" to train it as is'
            )

        model, eq_record = equalize_in_loop(model, cfg, train_set, info)
    torch.manual_seed(cfg.run.seed + 1000 * info.rank)

    if device.type == "cuda":  # MMSeg's default: autotuned convolutions unless asked to be deterministic
        torch.backends.cudnn.benchmark = not cfg.run.deterministic
        torch.backends.cudnn.deterministic = cfg.run.deterministic
    model.to(device)
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    if info.world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    raw = model  # the unwrapped module: its state dict is what checkpoints hold
    grad_hooks = grad_ratio_hooks(raw, cfg, device)  # per-site grad_ratio on logged steps
    net: nn.Module = model
    if info.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if device.type == "cuda" else None
        )
    if cfg.run.compile:
        net = torch.compile(net)

    optimizer = build_optimizer(raw, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.optim.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.run.amp == "fp16")
    if state is not None:
        objects = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        restore(ckpt, state, objects, info.rank)
        if info.is_main:
            rundir.truncate_metrics(run_dir, start_iter)

    if ckpt is None and info.is_main:
        rundir.create(run_dir, cfg)  # only now: a start that failed on bad input leaves no folder behind
    if cfg.eq.mode != "none" and eq_record is not None and ckpt is None and info.is_main:
        write_json(run_dir / "eq.json", record_to_dict(eq_record))
    distributed.barrier()

    sampler = InfiniteSampler(
        len(train_set), cfg.run.seed, info.rank, info.world, start=start_iter * d.batch_size
    )
    loader = DataLoader(
        train_set,
        batch_size=d.batch_size,
        sampler=sampler,
        num_workers=d.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=d.workers > 0,
        generator=torch.Generator(),  # keep the global RNG untouched by loader start-up
        collate_fn=PadCollate(d.crop_size, d.ignore_index),  # padded after normalization, as in mmseg
    )
    batches = iter(loader)
    writer = rundir.open_tensorboard(run_dir) if info.is_main else None

    # -- the loop
    net.train()
    loss_sum = torch.zeros((), device=device)  # summed on device, read at log time: no sync per step
    window_start, window_iters, metrics = time.perf_counter(), 0, None
    for it in range(start_iter, cfg.schedule.iters):
        batch = _next_batch(batches)
        grad_hooks.armed = (it + 1) % cfg.run.log_interval == 0
        x = to_input(batch.images.to(device, non_blocking=True), d, cfg.run.channels_last, batch.sizes)
        y = batch.masks.to(device, non_blocking=True).long()
        with autocast(device, cfg.run.amp):
            out = net(x)
            if it == start_iter:
                _check_classes(split_outputs(out)[0], d.num_classes)
            loss = segmentation_loss(out, y, d.ignore_index, cfg.loss.aux_weight, cfg.loss.average)
        scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(raw.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss_sum += loss.detach()
        window_iters += 1
        done = it + 1
        last = done == cfg.schedule.iters
        evaluating = bool(cfg.eval.interval and done % cfg.eval.interval == 0) or last
        checkpointing = done % cfg.checkpoint.interval == 0 or last

        # The loss is checked for NaN/inf here, so never after evaluating or saving bad weights.
        if done % cfg.run.log_interval == 0 or evaluating or checkpointing:
            mean_loss = distributed.all_reduce_sum(loss_sum / window_iters).item() / info.world
            if not math.isfinite(mean_loss):
                raise TrainingError(
                    f"loss became {mean_loss} between iterations {done - window_iters + 1} and {done}; "
                    f"the last good checkpoint in {run_dir} is kept; lower optim.lr or set optim.grad_clip"
                )
            elapsed = time.perf_counter() - window_start
            record = {
                "iter": done,
                "loss": mean_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "img_s": window_iters * d.batch_size * info.world / max(elapsed, 1e-9),
                "peak_mem_mb": _peak_memory_mb(device),
            }
            if ratios := grad_hooks.read():
                record["grad_ratio"] = ratios
            if info.is_main:
                rundir.log_record(run_dir, writer, record)
                on_log(
                    {
                        **record,
                        "phase": "train",
                        "eta_s": elapsed / window_iters * (cfg.schedule.iters - done),
                    }
                )
            loss_sum.zero_()
            window_start, window_iters = time.perf_counter(), 0

        if evaluating:
            distributed.broadcast_buffers(raw)
            metrics = evaluate(raw, val_set, d, cfg.eval, device, cfg.run.amp, cfg.run.channels_last)
            record = {"iter": done, "mIoU": metrics.miou, "aAcc": metrics.aacc, "IoU": list(metrics.iou)}
            if info.is_main:
                rundir.log_record(run_dir, writer, record)
                on_log({**record, "phase": "eval"})
                if best_miou is None or metrics.miou > best_miou:
                    best_miou = metrics.miou
                    write_weights(run_dir / "best.safetensors", raw.state_dict(), eq_record, cfg.model, done)
                    write_json(run_dir / "best.json", {"iter": done, "mIoU": metrics.miou})
            best_miou = distributed.broadcast_object(best_miou)
            window_start = time.perf_counter()  # evaluation time is not training throughput

        if checkpointing:
            # every rank contributes its RNG state; rank 0 writes
            rng = distributed.gather_objects(rng_state())
            epoch, offset = sampler.position(done * d.batch_size)
            train_state = {
                "iter": done,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng,
                "data": {
                    "epoch": epoch,
                    "offset": offset,
                    "position": done * d.batch_size,
                    "seed": cfg.run.seed,
                    "world": info.world,
                },
                "best_miou": best_miou,
                "eq": None if eq_record is None else record_to_json(eq_record),
            }
            if info.is_main:
                save_checkpoint(
                    run_dir,
                    done,
                    raw.state_dict(),
                    train_state,
                    eq_record,
                    cfg.model,
                    cfg.checkpoint.keep,
                )
            distributed.barrier()

    if writer is not None:
        writer.close()
    final = checkpoint_files(run_dir, cfg.schedule.iters).weights
    result = TrainResult(
        run_dir, cfg.schedule.iters, final, best_miou, metrics, time.perf_counter() - t_start, eq_record, raw
    )
    if info.is_main:
        write_json(
            run_dir / "summary.json",
            {
                "iterations": result.iterations,
                "weights": str(final),
                "best_mIoU": best_miou,
                "mIoU": metrics.miou if metrics else None,
                "seconds": result.seconds,
            },
        )
    return result


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


def _next_batch(batches: Any) -> PaddedBatch:
    try:
        return next(batches)
    except DataError as exc:
        # A worker's DataError arrives wrapped with its traceback; keep the one-line message.
        raise DataError(str(exc).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None


def _check_classes(logits: torch.Tensor, num_classes: int) -> None:
    if logits.shape[1] != num_classes:
        raise RecipeError(
            f"the model predicts {logits.shape[1]} classes but data.num_classes = {num_classes}; "
            "set model.kwargs.num_classes (or the factory's equivalent) to match"
        )


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _state_record(saved: str | dict[str, Any] | None, source: Path) -> CalibrationRecord | None:
    # Training states store the record as its JSON text; older ones stored the parsed dict.
    if saved is None:
        return None
    return record_from_header({METADATA_KEY: saved if isinstance(saved, str) else json.dumps(saved)}, source)
