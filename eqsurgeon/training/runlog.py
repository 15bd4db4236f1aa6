"""Plain-text log lines in MMSegmentation's style, and the run folder's ``train.log`` that keeps them.

    2025/01/31 12:00:00 - eqsurgeon - INFO - Iter(train) [ 50/300]  lr: 9.2857e-03  eta: 0:00:21
        img/s: 85.3  memory: 788  loss: 0.5123  decode.loss_ce: 0.4106  aux.loss_ce: 0.1017
    2025/01/31 12:00:09 - eqsurgeon - INFO - Iter(val) [100/300]  mIoU: 83.27  aAcc: 95.12 ...

One line per record (wrapped above only for this docstring). The same lines go to stdout when it is not a
terminal (a log file, SLURM, nohup), so a job's output reads like MMSegmentation's and can be grepped. The
trainer writes the file on rank 0; the CLI prints.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

LOG_NAME = "train.log"
# Tables longer than this are summarized on a terminal (worst and best classes); files keep every row.
SUMMARY_ROWS = 5


def stamp(message: str, now: datetime.datetime | None = None) -> str:
    """Prefix ``message`` with the time and logger name, as mmengine's logger does.

    >>> stamp("hello", datetime.datetime(2025, 1, 31, 12, 0, 0))
    '2025/01/31 12:00:00 - eqsurgeon - INFO - hello'
    """
    now = now or datetime.datetime.now()
    return f"{now:%Y/%m/%d %H:%M:%S} - eqsurgeon - INFO - {message}"


def train_line(record: dict[str, Any], total: int) -> str:
    """One training record (the trainer's ``on_log`` record, phase "train") as a plain line.

    >>> r = {"iter": 50, "lr": 0.01, "eta_s": 3725, "img_s": 85.25, "peak_mem_mb": 788.4,
    ...      "loss": 0.5, "loss_decode": 0.4, "loss_aux": 0.1}
    >>> train_line(r, 300)
    'Iter(train) [ 50/300]  lr: 1.0000e-02  eta: 1:02:05  img/s: 85.2  memory: 788  loss: 0.5000  \
decode.loss_ce: 0.4000  aux.loss_ce: 0.1000'
    """
    width = len(str(total))
    parts = [
        f"Iter(train) [{record['iter']:>{width}}/{total}]",
        f"lr: {record['lr']:.4e}",
        f"eta: {eta(record.get('eta_s', math.nan))}",
        f"img/s: {record['img_s']:.1f}",
        f"memory: {record['peak_mem_mb']:.0f}",
        f"loss: {record['loss']:.4f}",
    ]
    if "loss_decode" in record:
        parts.append(f"decode.loss_ce: {record['loss_decode']:.4f}")
    if "loss_aux" in record:
        parts.append(f"aux.loss_ce: {record['loss_aux']:.4f}")
    return "  ".join(parts)


def eval_line(record: dict[str, Any], total: int) -> str:
    """The headline of one evaluation record (phase "eval"): mIoU, aAcc and mAcc in percent.

    >>> eval_line({"iter": 100, "mIoU": 0.8327, "aAcc": 0.95, "Acc": [0.9, 0.8]}, 300)
    'Iter(val) [100/300]  mIoU: 83.27  aAcc: 95.00  mAcc: 85.00'
    """
    width = len(str(total))
    line = f"Iter(val) [{record['iter']:>{width}}/{total}]  mIoU: {pct(record['mIoU'])}"
    line += f"  aAcc: {pct(record['aAcc'])}"
    accs = [a for a in record.get("Acc", ()) if a is not None and not math.isnan(a)]
    if accs:
        line += f"  mAcc: {pct(sum(accs) / len(accs))}"
    return line


def class_table(names: Sequence[str], iou: Sequence[float], acc: Sequence[float]) -> list[str]:
    """Per-class IoU and accuracy as fixed-width text rows (every class; a file keeps them all).

    >>> print("\\n".join(class_table(["sky", "road"], [0.5, float("nan")], [0.75, float("nan")])))
    +-------+--------+--------+
    | Class |    IoU |    Acc |
    +-------+--------+--------+
    | sky   |  50.00 |  75.00 |
    | road  |      – |      – |
    +-------+--------+--------+
    """
    width = max([len("Class"), *(len(n) for n in names)])
    rule = f"+-{'-' * width}-+--------+--------+"
    rows = [rule, f"| {'Class':<{width}} |    IoU |    Acc |", rule]
    rows += [f"| {n:<{width}} | {pct(i):>6} | {pct(a):>6} |" for n, i, a in zip(names, iou, acc)]
    return [*rows, rule]


def class_rows(names: Sequence[str], iou: Sequence[float], limit: int = 2 * SUMMARY_ROWS + 10) -> list[int]:
    """The classes a terminal shows: all of them up to ``limit``, else the worst and best by IoU, with -1
    marking the gap between them.

    >>> class_rows(["a", "b", "c"], [0.2, 0.9, 0.5])
    [0, 1, 2]
    >>> class_rows([str(i) for i in range(40)], [i / 40 for i in range(40)], limit=10)
    [0, 1, 2, 3, 4, -1, 39, 38, 37, 36, 35]
    """
    if len(names) <= limit:
        return list(range(len(names)))
    worst, best = summary_indices(iou)
    return [*worst, -1, *best]


def summary_indices(iou: Sequence[float], rows: int = SUMMARY_ROWS) -> tuple[list[int], list[int]]:
    """(worst, best) class indices by IoU, ``rows`` each, classes without a score left out.

    >>> summary_indices([0.1, 0.9, float("nan"), 0.5, 0.3], rows=2)
    ([0, 4], [1, 3])
    """
    scored = sorted((v, i) for i, v in enumerate(iou) if not math.isnan(v))
    worst = [i for _, i in scored[:rows]]
    best = [i for _, i in reversed(scored[-rows:])]
    return worst, best


def eta(seconds: float) -> str:
    """``H:MM:SS`` (with days, as mmengine prints them); "–" when unknown.

    >>> eta(90061.7), eta(float("nan"))
    ('1 day, 1:01:01', '–')
    """
    if not math.isfinite(seconds):
        return "–"
    return str(datetime.timedelta(seconds=int(seconds)))


def pct(value: float | None) -> str:
    """A 0–1 fraction as a percentage with two decimals; "–" for a class that never occurred.

    >>> pct(0.83271), pct(float("nan"))
    ('83.27', '–')
    """
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}"


class RunLog:
    """Appends stamped lines to ``run_dir/train.log``, each flushed to disk as it is written.

    Open it on rank 0 only. A resumed run appends to the same file.

    >>> import tempfile
    >>> log = RunLog(Path(tempfile.mkdtemp()))
    >>> log.write(["Iter(train) [1/2]"])
    >>> log.path.read_text().endswith("INFO - Iter(train) [1/2]\\n")
    True
    >>> log.close()
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOG_NAME
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)

    def write(self, lines: Sequence[str]) -> None:
        """Append ``lines``, each with the time stamp."""
        if self._file is None:
            return
        now = datetime.datetime.now()
        self._file.writelines(stamp(line, now) + "\n" for line in lines)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file (further writes are dropped)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun), before any setup.

    For code that must decide before training whether to print, e.g. the CLI's progress display.

    >>> launched_rank() if "RANK" not in os.environ else 0
    0
    """
    return int(os.environ.get("RANK", "0"))
