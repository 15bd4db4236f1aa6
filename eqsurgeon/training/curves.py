"""``curves.png``: a run's loss, learning rate and mIoU against iterations, redrawn at each evaluation.

    loss (total, decode, aux)  |  lr  |  mIoU (%)          three panels sharing the iteration axis

Drawn from ``metrics.jsonl`` so a resumed run's picture includes the iterations before the resume.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eqsurgeon.io import atomic_write

CURVES_NAME = "curves.png"


def read_records(metrics_path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (blank lines skipped).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "m.jsonl"
    >>> _ = p.write_text('{"iter": 1, "loss": 2.0}\\n\\n')
    >>> read_records(p)
    [{'iter': 1, 'loss': 2.0}]
    """
    return [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]


def plot_run(records: Iterable[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Draw loss, lr and mIoU against iteration from trainer records into ``path`` (PNG, atomic).

    Args:
        records: metrics.jsonl records: training ones carry ``loss``/``lr`` (and ``loss_decode``,
            ``loss_aux``), evaluation ones ``mIoU``.
        path: the PNG to write; replaced atomically, so a reader never sees half a file.
        title: figure title, e.g. the run folder.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "curves.png"
    >>> plot_run([{"iter": 1, "loss": 1.0, "lr": 0.1}, {"iter": 1, "mIoU": 0.5}], out).stat().st_size > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, on every rank's machine
    import matplotlib.pyplot as plt

    records = list(records)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "mIoU" in r]
    fig, (ax_loss, ax_lr, ax_miou) = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for key, label in (("loss", "loss"), ("loss_decode", "decode.loss_ce"), ("loss_aux", "aux.loss_ce")):
        points = [(r["iter"], r[key]) for r in train if key in r]
        if points:
            ax_loss.plot(*zip(*points), label=label, lw=1.2 if key == "loss" else 0.8)
    ax_loss.set_title("training loss", fontsize=10)
    if any("loss_aux" in r for r in train):
        ax_loss.legend(fontsize=8)
    if train:
        ax_lr.plot([r["iter"] for r in train], [r["lr"] for r in train], color="tab:green")
    ax_lr.set_title("learning rate", fontsize=10)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if evals:
        mious = [100 * r["mIoU"] for r in evals]
        ax_miou.plot([r["iter"] for r in evals], mious, "o-", color="tab:red", ms=3)
    ax_miou.set_title("mIoU (%)", fontsize=10)
    for ax in (ax_loss, ax_lr, ax_miou):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
