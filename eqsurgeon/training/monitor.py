"""What a run reports, written on rank 0 only: every other rank's monitor is switched off.

    metrics.jsonl   one JSON record per log step and per evaluation (machine-readable, resumable)
    train.log       the same as plain MMSegmentation-style lines, evaluations with their full class table
    eval.json       the latest evaluation, per class with its name
    curves.png      loss, lr and mIoU against iteration, redrawn at each evaluation
    tb/             TensorBoard scalars, when tensorboard is installed (run.tensorboard)

and each record, with ``phase`` "train", "eval" or "note", goes to the caller's ``on_log``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from eqsurgeon.io import write_json
from eqsurgeon.training import rundir, runlog
from eqsurgeon.training.config import TrainConfig
from eqsurgeon.training.curves import CURVES_NAME, plot_run, read_records
from eqsurgeon.training.metrics import SegMetrics, metrics_json

LogFn = Callable[[dict[str, Any]], None]
EVAL_JSON = "eval.json"
TENSORBOARD_HINT = (
    'run.tensorboard = "on" but tensorboard is not installed: pip install "eqsurgeon[tensorboard]"; '
    "this run logs to metrics.jsonl, train.log and curves.png only"
)


class Monitor:
    """The run folder's logs and pictures, plus the ``on_log`` callback.

    Args:
        run_dir: the run folder (it exists when the monitor is made).
        cfg: the resolved recipe.
        class_names: one name per class, for tables and eval.json.
        on_log: called with each record (and ``phase``).
        enabled: False on every rank but 0: then nothing is written or called.

    >>> import tempfile
    >>> from eqsurgeon.training.config import TrainConfig
    >>> m = Monitor(Path(tempfile.mkdtemp()), TrainConfig(), ("a", "b"), print, enabled=False)
    >>> m.note("nothing happens on this rank")
    """

    def __init__(
        self, run_dir: Path, cfg: TrainConfig, class_names: tuple[str, ...], on_log: LogFn, enabled: bool
    ) -> None:
        self.run_dir, self.names, self.on_log, self.enabled = Path(run_dir), class_names, on_log, enabled
        self.total = cfg.schedule.iters
        self.log = runlog.RunLog(self.run_dir) if enabled else None
        self.writer = None
        if enabled and cfg.run.tensorboard != "off":
            self.writer = rundir.open_tensorboard(self.run_dir)
            if self.writer is None and cfg.run.tensorboard == "on":
                self.note(TENSORBOARD_HINT)

    def note(self, text: str) -> None:
        """A line for the reader of the log (the CLI prints it too)."""
        if self.enabled and self.log is not None:
            self.log.write([text])
            self.on_log({"phase": "note", "text": text})

    def train(self, record: dict[str, Any], eta_s: float) -> None:
        """A training log step: record to metrics.jsonl and TensorBoard, a line to train.log."""
        if not self.enabled or self.log is None:
            return
        rundir.log_record(self.run_dir, self.writer, record)
        full = {**record, "phase": "train", "eta_s": eta_s}
        self.log.write([runlog.train_line(full, self.total)])
        self.on_log(full)

    def evaluate(self, iteration: int, metrics: SegMetrics) -> None:
        """An evaluation: record, headline and full class table, eval.json, and a fresh curves.png."""
        if not self.enabled or self.log is None:
            return
        record = {
            "iter": iteration,
            "mIoU": metrics.miou,
            "aAcc": metrics.aacc,
            "IoU": list(metrics.iou),
            "Acc": list(metrics.acc),
        }
        rundir.log_record(self.run_dir, self.writer, record)
        lines = [runlog.eval_line(record, self.total)]
        lines += runlog.class_table(self.names, metrics.iou, metrics.acc)
        self.log.write(lines)
        write_json(self.run_dir / EVAL_JSON, {"iter": iteration, **metrics_json(metrics, self.names)})
        self.draw()
        self.on_log({**record, "phase": "eval", "classes": list(self.names)})

    def draw(self) -> None:
        """Redraw curves.png from metrics.jsonl (so a resumed run's picture starts at iteration 1)."""
        path = self.run_dir / rundir.METRICS_NAME
        if self.enabled and path.is_file():
            plot_run(read_records(path), self.run_dir / CURVES_NAME, title=str(self.run_dir))

    def close(self) -> None:
        """Flush and close the log file and the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.log is not None:
            self.log.close()
            self.log = None
