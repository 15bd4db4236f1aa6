"""``eqsurgeon train RECIPE --compare --seeds N``: the A/B runs with progress, then the paper's table."""

from __future__ import annotations

import math
import os

from rich.table import Table
from rich.text import Text

from eqsurgeon.cli._common import console
from eqsurgeon.training.compare import Comparison, Stat, compare
from eqsurgeon.training.config import TrainConfig


def run_compare(cfg: TrainConfig, seeds: int, resume: bool) -> Comparison:
    """Run the comparison with a progress bar per run, print the table and where the files are."""
    from eqsurgeon.cli.train import _progress
    from eqsurgeon.training.loop import train as loop_train

    def train_one(run_cfg: TrainConfig, run_resume: bool) -> object:
        with _progress(run_cfg) as on_log:
            return loop_train(run_cfg, resume=run_resume, on_log=on_log)

    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone prints

    def announce(mode: str, seed: int, run_cfg: TrainConfig) -> None:
        if not main:
            return
        label = "w/o EQ" if mode == "none" else f"w/ EQ ({mode})"
        console.print(Text.assemble((label, "bold"), f", seed {seed} → {run_cfg.run.out}"))

    result = compare(cfg, seeds, resume=resume, train_fn=train_one, on_run=announce)
    if main:
        console.print(compare_table(result))
        grads = grad_table(result)
        if grads is not None:
            console.print(grads)
        console.print(f"wrote {result.json_path} and {result.png_path}", markup=False)
    return result


def batch_note(cfg: TrainConfig) -> str:
    """A warning when the GPU count differs from the recipe's ``run.gpus``: the total batch changed.

    Only rank 0 gets the note; "" when there is nothing to say.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not cfg.run.gpus or world == cfg.run.gpus or int(os.environ.get("RANK", "0")) != 0:
        return ""
    return (
        f"[yellow]note:[/yellow] the recipe is written for {cfg.run.gpus} GPUs "
        f"(total batch {cfg.data.batch_size * cfg.run.gpus}) but runs on {world} process(es): total batch "
        f"{cfg.data.batch_size * world}. To keep the recipe's, set data.batch_size; set run.gpus={world} "
        "to silence this note."
    )


def compare_table(result: Comparison) -> Table:
    """The paper's layout: w/o EQ, w/ EQ, Diff (mIoU %, mean ± std over seeds), one row per mode."""
    n = len(result.seeds)
    table = Table(title=f"mIoU (%) at the end of training, mean ± std over {n} seed{'s' * (n > 1)}")
    table.add_column("EQ mode")
    table.add_column("w/o EQ", justify="right")
    table.add_column("w/ EQ", justify="right")
    table.add_column("Diff", justify="right")
    for row in result.rows:
        table.add_row(row.mode, _fmt(row.without), _fmt(row.with_eq), _fmt(row.diff, signed=True))
    return table


def _fmt(stat: Stat, signed: bool = False) -> str:
    if math.isnan(stat.mean):
        return "–"
    mean = f"{100 * stat.mean:+.3f}" if signed else f"{100 * stat.mean:.3f}"
    return mean if math.isnan(stat.std) else f"{mean} ± {100 * stat.std:.3f}"


def grad_table(result: Comparison) -> Table | None:
    """Per mode and site: grad_ratio at the first and the last logged step (mean over seeds); None when
    the runs logged none."""
    from eqsurgeon.training.compare_grads import grad_summary

    modes = ["none", *(r.mode for r in result.rows)]
    rows = grad_summary([(o.mode, o.grad_curve) for o in result.runs], modes)
    if not rows:
        return None
    table = Table(title="grad_ratio (max/min weight-gradient RMS over a site's inputs), first → last log")
    table.add_column("EQ mode")
    table.add_column("site", overflow="fold")
    table.add_column("grad_ratio", justify="right")
    for row in rows:
        first, last = (f"{row[k]:.2f}" if row[k] is not None else "–" for k in ("first", "last"))
        table.add_row(row["mode"], row["layer"], f"{first} → {last}")
    return table
