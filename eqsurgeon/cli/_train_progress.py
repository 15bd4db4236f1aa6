"""How ``eqsurgeon train`` shows a run: a live bar on a terminal, MMSegmentation-style plain lines when
stdout is a file or a pipe (SLURM, nohup), nothing on torchrun ranks other than 0."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from eqsurgeon.cli._common import console
from eqsurgeon.training import runlog
from eqsurgeon.training.config import TrainConfig


def pct(value: float) -> str:
    """A 0–1 fraction as a percentage with two decimals, "–" for NaN.

    >>> pct(0.5), pct(float("nan"))
    ('50.00', '–')
    """
    return "–" if math.isnan(value) else f"{100 * value:.2f}"


def progress(cfg: TrainConfig) -> AbstractContextManager[Callable[[dict[str, Any]], None]]:
    """How a run shows progress: a live bar on a terminal, plain log lines otherwise (a file, SLURM,
    nohup), nothing on ranks other than 0. Enter it to get the trainer's ``on_log``."""
    if runlog.launched_rank() != 0:
        return nullcontext(lambda record: None)
    if console.is_terminal:
        return _Bar(cfg)
    return _PlainLines(cfg)


class _PlainLines:
    """MMSegmentation-style log lines on stdout, one per record, each flushed as it is printed."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.total = cfg.schedule.iters
        self.run_dir = Path(cfg.run.out)

    def __enter__(self) -> Callable[[dict[str, Any]], None]:
        return self.update

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, record: dict[str, Any]) -> None:
        if record["phase"] == "train":
            lines = [runlog.train_line(record, self.total)]
        elif record["phase"] == "eval":
            lines = [runlog.eval_line(record, self.total)]
            names = record.get("classes") or [str(i) for i in range(len(record["IoU"]))]
            rows = runlog.class_rows(names, record["IoU"])
            shown = [i for i in rows if i >= 0]
            lines += runlog.class_table([names[i] for i in shown], [record["IoU"][i] for i in shown],
                                        [record["Acc"][i] for i in shown])  # fmt: skip
            if -1 in rows:
                lines.append(
                    f"(the {runlog.SUMMARY_ROWS} worst and best of {len(names)} classes; every class in "
                    f"{self.run_dir / runlog.LOG_NAME})"
                )
        else:
            lines = [record["text"]]
        for line in lines:
            console.print(runlog.stamp(line), markup=False, highlight=False, soft_wrap=True)
        console.file.flush()


class _Bar:
    """A rich progress bar fed by the trainer's log records (rank 0 only calls it)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.total = cfg.schedule.iters
        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} img/s"),
            TextColumn("ETA {task.fields[eta]}  mem {task.fields[mem]}  {task.fields[miou]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.bar.add_task(
            "train", total=self.total, loss="–", lr="–", speed="–", eta="–", mem="–", miou=""
        )

    def __enter__(self) -> Any:
        self.bar.start()
        return self.update

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, record: dict[str, Any]) -> None:
        if record["phase"] == "note":
            self.bar.console.print(Text.assemble(("note: ", "yellow"), record["text"]))
            return
        if record["phase"] == "eval":
            self.bar.update(self.task, miou=f"mIoU {pct(record['mIoU'])}")
            return
        eta = int(record["eta_s"])
        self.bar.update(
            self.task,
            completed=record["iter"],
            loss=f"{record['loss']:.4f}",
            lr=f"{record['lr']:.2e}",
            speed=f"{record['img_s']:.1f}",
            eta=f"{eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}",
            mem=f"{record['peak_mem_mb']:.0f} MiB",
        )
