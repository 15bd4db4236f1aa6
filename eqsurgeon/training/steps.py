"""One training run's loop: the model placed and wrapped, its optimizer trio, and step after step with
logging, evaluation and checkpoints at their intervals (``eqsurgeon.training.loop.train`` sets it up)."""

from __future__ import annotations

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

from eqsurgeon.errors import DataError, RecipeError, TrainingError
from eqsurgeon.io import record_to_json, write_json
from eqsurgeon.outputs import split_outputs
from eqsurgeon.records import CalibrationRecord
from eqsurgeon.training import distributed, rundir
from eqsurgeon.training.augment import PaddedBatch
from eqsurgeon.training.checkpoint import restore, rng_state, save_checkpoint, write_weights
from eqsurgeon.training.config import TrainConfig
from eqsurgeon.training.device_data import PlannedDataset, augments_on_device, collate_planned, model_input
from eqsurgeon.training.evaluate import autocast, evaluate
from eqsurgeon.training.grad_log import grad_ratio_hooks
from eqsurgeon.training.losses import loss_parts
from eqsurgeon.training.metrics import SegMetrics
from eqsurgeon.training.monitor import Monitor
from eqsurgeon.training.optim import build_optimizer, build_scheduler
from eqsurgeon.training.sampler import InfiniteSampler
from eqsurgeon.training.transforms import PadCollate

LogFn = Callable[[dict[str, Any]], None]


@dataclass
class Start:
    """The model a run starts from: fresh, from ``model.init``, equalized, or resumed from a checkpoint."""

    model: nn.Module
    state: dict[str, Any] | None  # the training state of the checkpoint resumed from
    iteration: int
    best_miou: float | None
    eq_record: CalibrationRecord | None


class Loop:
    """The training loop: placement and wrapping of the model, its optimizer trio, and one step after
    another with logging, evaluation and checkpoints at their intervals."""

    def __init__(
        self,
        cfg: TrainConfig,
        info: distributed.DistInfo,
        start: Start,
        ckpt: Any,
        on_log: LogFn,
        class_names: tuple[str, ...] = (),
    ) -> None:
        self.cfg, self.info, self.on_log, self.device = cfg, info, on_log, info.device
        self.class_names = class_names or tuple(map(str, range(cfg.data.num_classes)))
        self.run_dir, self.eq_record, self.best_miou = Path(cfg.run.out), start.eq_record, start.best_miou
        self.raw, self.net = _place(start.model, cfg, info)  # raw: its state dict is what checkpoints hold
        self.grad_hooks = grad_ratio_hooks(self.raw, cfg, self.device)  # per-site grad_ratio on log steps
        self.optimizer = build_optimizer(self.raw, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.optim.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.run.amp == "fp16")
        if start.state is not None:
            objects = {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}
            restore(ckpt, start.state, objects, info.rank)
            if info.is_main:
                rundir.truncate_metrics(self.run_dir, start.iteration)
        self.monitor: Monitor | None = None
        # (total, decode, aux) loss summed on the device and read at log time: no sync per step
        self.loss_sum = torch.zeros(3, device=self.device)
        self.has_aux = False
        self.window_start, self.window_iters = time.perf_counter(), 0

    def run(self, train_set: Any, val_set: Any, start_iter: int) -> SegMetrics | None:
        """Iterate from ``start_iter`` to the schedule's end; the last evaluation's metrics."""
        cfg, d = self.cfg, self.cfg.data
        self.sampler = InfiniteSampler(
            len(train_set), cfg.run.seed, self.info.rank, self.info.world, start=start_iter * d.batch_size
        )
        on_device = augments_on_device(d, self.device, train_set)
        if on_device:  # workers decode and plan; the batch is augmented on the device (device_data.py)
            train_set = PlannedDataset(train_set, d, encoded_jpeg=self.device.type == "cuda")
        loader = DataLoader(
            train_set, batch_size=d.batch_size, sampler=self.sampler, num_workers=d.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=d.workers > 0,
            generator=torch.Generator(),  # keep the global RNG untouched by loader start-up
            # padded after normalization, as in mmseg
            collate_fn=collate_planned if on_device else PadCollate(d.crop_size, d.ignore_index),
        )  # fmt: skip
        batches = iter(loader)
        self.monitor = Monitor(self.run_dir, cfg, self.class_names, self.on_log, self.info.is_main)
        self.net.train()
        metrics = None
        self.window_start = time.perf_counter()
        for it in range(start_iter, cfg.schedule.iters):
            self._step(_next_batch(batches), it, first=it == start_iter)
            done = it + 1
            last = done == cfg.schedule.iters
            evaluating = bool(cfg.eval.interval and done % cfg.eval.interval == 0) or last
            checkpointing = done % cfg.checkpoint.interval == 0 or last
            # The loss is checked for NaN/inf here, so never after evaluating or saving bad weights.
            if done % cfg.run.log_interval == 0 or evaluating or checkpointing:
                self._log(done)
            if evaluating:
                metrics = self._evaluate(val_set, done)
            if checkpointing:
                self._checkpoint(done)
        self.monitor.close()
        return metrics

    def _step(self, batch: PaddedBatch | tuple[Any, ...], it: int, first: bool) -> None:
        cfg, d, device = self.cfg, self.cfg.data, self.device
        self.grad_hooks.armed = (it + 1) % cfg.run.log_interval == 0
        x, y = model_input(batch, d, device, cfg.run.channels_last)
        with autocast(device, cfg.run.amp):
            out = self.net(x)
            if first:
                main, aux = split_outputs(out)
                _check_classes(main, d.num_classes)
                self.has_aux = aux is not None and cfg.loss.aux_weight != 0
            loss, parts = loss_parts(out, y, d.ignore_index, cfg.loss.aux_weight, cfg.loss.average)
        self.scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # Under DDP the gradients are views into its buckets (distributed.wrap): zero them, keep them.
        self.optimizer.zero_grad(set_to_none=self.info.world == 1)
        self.scheduler.step()
        self.loss_sum += parts
        self.window_iters += 1

    def _log(self, done: int) -> None:
        cfg, info = self.cfg, self.info
        means = (distributed.all_reduce_sum(self.loss_sum / self.window_iters) / info.world).tolist()
        mean_loss = means[0]
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"loss became {mean_loss} between iterations {done - self.window_iters + 1} and {done}; the "
                f"last good checkpoint in {self.run_dir} is kept; lower optim.lr or set optim.grad_clip"
            )
        elapsed = time.perf_counter() - self.window_start
        record = {
            "iter": done,
            "loss": mean_loss,
            "loss_decode": means[1],
            **({"loss_aux": means[2]} if self.has_aux else {}),
            "lr": self.optimizer.param_groups[0]["lr"],
            "img_s": self.window_iters * cfg.data.batch_size * info.world / max(elapsed, 1e-9),
            "peak_mem_mb": _peak_memory_mb(self.device),
        }
        if ratios := self.grad_hooks.read():
            record["grad_ratio"] = ratios
        if self.monitor is not None:  # it writes and calls on_log on rank 0 alone
            self.monitor.train(record, eta_s=elapsed / self.window_iters * (cfg.schedule.iters - done))
        self.loss_sum.zero_()
        self.window_start, self.window_iters = time.perf_counter(), 0

    def _evaluate(self, val_set: Any, done: int) -> SegMetrics:
        cfg, d = self.cfg, self.cfg.data
        distributed.broadcast_buffers(self.raw)
        metrics = evaluate(self.raw, val_set, d, cfg.eval, self.device, cfg.run.amp, cfg.run.channels_last)
        if self.monitor is not None:
            self.monitor.evaluate(done, metrics)
        if self.info.is_main and (self.best_miou is None or metrics.miou > self.best_miou):
            self.best_miou = metrics.miou
            best = self.run_dir / "best.safetensors"
            write_weights(best, self.raw.state_dict(), self.eq_record, cfg.model, done)
            write_json(self.run_dir / "best.json", {"iter": done, "mIoU": metrics.miou})
        self.best_miou = distributed.broadcast_object(self.best_miou)
        self.window_start = time.perf_counter()  # evaluation time is not training throughput
        return metrics

    def _checkpoint(self, done: int) -> None:
        cfg, info, batch = self.cfg, self.info, self.cfg.data.batch_size
        rng = distributed.gather_objects(rng_state())  # every rank contributes its RNG state
        epoch, offset = self.sampler.position(done * batch)
        train_state = {
            "iter": done,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "data": {
                "epoch": epoch, "offset": offset, "position": done * batch, "seed": cfg.run.seed,
                "world": info.world,
            },
            "best_miou": self.best_miou,
            "eq": None if self.eq_record is None else record_to_json(self.eq_record),
        }
        if info.is_main:  # rank 0 writes
            save_checkpoint(self.run_dir, done, self.raw.state_dict(), train_state, self.eq_record, cfg.model,
                            cfg.checkpoint.keep)  # fmt: skip
        distributed.barrier()


def _place(model: nn.Module, cfg: TrainConfig, info: distributed.DistInfo) -> tuple[nn.Module, nn.Module]:
    """(the model on its device, the module the loop calls: DDP- and compile-wrapped when asked)."""
    device = info.device
    if device.type == "cuda":  # MMSeg's default: autotuned convolutions unless asked to be deterministic
        torch.backends.cudnn.benchmark = not cfg.run.deterministic
        torch.backends.cudnn.deterministic = cfg.run.deterministic
    model.to(device)
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    if info.world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = distributed.wrap(model, info)
    if cfg.run.compile:
        net = torch.compile(net)
    return model, net


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
