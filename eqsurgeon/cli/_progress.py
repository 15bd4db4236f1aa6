"""A rich progress bar per calibration measuring pass: images, images/s, worst σ standard error, ETA."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class CalibrationBar:
    """Feed it ``eqsurgeon.calibration.Progress`` reports; one task per site."""

    def __init__(self, out: Console, max_images: int | None) -> None:
        self.max_images = max_images
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s  σ SE ≤ {task.fields[se]}"), TimeRemainingColumn(),
            console=out, transient=False,
        )  # fmt: skip
        self.tasks: dict[int, Any] = {}
        self.start = self.last = 0.0

    def __enter__(self) -> CalibrationBar:
        self.bar.__enter__()
        self.last = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(self, p: Any) -> None:
        if p.site not in self.tasks:
            label = escape(f"site {p.site + 1}/{p.sites} {p.layer}")
            self.tasks[p.site] = self.bar.add_task(label, total=p.max_images, rate="-", se="-")
            self.start = self.last  # this pass began when the previous report (or the bar) ended
        self.last = time.perf_counter()
        rate = p.images / max(self.last - self.start, 1e-9)
        se = f"{p.std_rel_se_bound:.4f}" if p.std_rel_se_bound < float("inf") else "-"
        self.bar.update(self.tasks[p.site], completed=p.images, rate=f"{rate:.1f}", se=se)
