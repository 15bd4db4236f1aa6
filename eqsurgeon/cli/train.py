"""``eqsurgeon train RECIPE``: fine-tune a segmentation model with a recipe, on one CPU or many GPUs;
``--compare --seeds N`` runs the A/B (without EQ, fold, insert) and prints the paper's table."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from eqsurgeon.cli._common import State, console, handle_errors
from eqsurgeon.cli._train_progress import pct as _pct
from eqsurgeon.cli._train_progress import progress
from eqsurgeon.training import runlog
from eqsurgeon.training.config import TrainConfig, load_config

if TYPE_CHECKING:
    from eqsurgeon.training.compare import Comparison, Stat
    from eqsurgeon.training.metrics import SegMetrics

RecipeArg = Annotated[Path, typer.Argument(help="training recipe (TOML), e.g. train/recipes/demo.toml")]
DataDirOpt = Annotated[Path | None, typer.Option("--data", help="dataset folder (overrides data.root)")]
InitOpt = Annotated[Path | None, typer.Option("--init", help="start from these weights (.safetensors)")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a recipe key, section.key=value (TOML value); repeatable"),
]


@handle_errors
def train(
    recipe: RecipeArg,
    data: DataDirOpt = None,
    init: InitOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder (overrides run.out)")] = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    seed: Annotated[int | None, typer.Option("--seed", help="run seed (overrides run.seed)")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model")] = False,
    compare: Annotated[
        bool, typer.Option("--compare", help="run without EQ and with fold and insert; print the table")
    ] = False,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="seeds per EQ mode with --compare")] = 3,
) -> None:
    """Train RECIPE; works as is under `torchrun --nproc-per-node N` (DDP, rank 0 writes)."""
    from eqsurgeon.training.loop import train as run_training

    cfg = load_config(
        recipe, recipe_overrides(set_, data=data, init=init, out=out, seed=seed, compile_=compile_)
    )
    State.on_interrupt = lambda: _interrupted(recipe, Path(cfg.run.out), compare)
    note = batch_note(cfg)
    if note and runlog.launched_rank() == 0:
        console.print(note)
    if compare:  # --out is the comparison folder: one run folder per (mode, seed) inside
        run_compare(cfg, seeds, resume)
        return
    with progress(cfg) as on_log:
        result = run_training(cfg, resume=resume, on_log=on_log)
    if not result.is_main:  # under torchrun, rank 0 alone reports
        return
    if result.metrics is not None:
        full = f"{result.run_dir / runlog.LOG_NAME} and eval.json"
        console.print(iou_table(result.metrics, result.class_names, full_table=full))
    summary = Table(title="run summary", show_header=False)
    summary.add_row("run folder", Text(str(result.run_dir)))  # user paths are never markup
    summary.add_row("iterations", str(result.iterations))
    summary.add_row("final weights", Text(str(result.weights)))
    summary.add_row("final mIoU", _pct(result.metrics.miou if result.metrics else math.nan))
    summary.add_row("best mIoU", _pct(result.best_miou if result.best_miou is not None else math.nan))
    applied = result.eq.mode if result.eq else "none"
    if result.eq and cfg.eq.mode == "none":
        applied += " (from --init)"
    summary.add_row("equalization", applied)
    summary.add_row("time", f"{result.seconds:.1f} s")
    console.print(summary)


def recipe_overrides(
    set_: list[str] | None,
    *,
    data: Path | None = None,
    init: Path | None = None,
    out: Path | None = None,
    seed: int | None = None,
    compile_: bool = False,
) -> list[str]:
    """The ``--set`` list with the dedicated options appended (they win over the recipe)."""
    items = list(set_ or [])
    if data is not None:
        items.append(f"data.root={_toml_str(data)}")
    if init is not None:
        items.append(f"model.init={_toml_str(init)}")
    if out is not None:
        items.append(f"run.out={_toml_str(out)}")
    if seed is not None:
        items.append(f"run.seed={seed}")
    if compile_:
        items.append("run.compile=true")
    return items


def iou_table(metrics: SegMetrics, names: tuple[str, ...] = (), full_table: str = "") -> Table:
    """Per-class IoU and accuracy, with mIoU and overall accuracy in the footer.

    A long table (ADE20K's 150 classes) shows only the worst and best classes by IoU; ``full_table`` says
    where every row is.
    """
    rows = runlog.class_rows(names or tuple(map(str, range(len(metrics.iou)))), metrics.iou)
    caption = None
    if -1 in rows:
        caption = f"{len(metrics.iou)} classes: the {runlog.SUMMARY_ROWS} worst and best by IoU"
        caption += f"; every class in {full_table}" if full_table else ""
    table = Table(title="per-class IoU", show_footer=True, caption=caption)
    table.add_column("class", footer="mean")
    table.add_column("IoU %", justify="right", footer=_pct(metrics.miou))
    table.add_column("Acc %", justify="right", footer=f"aAcc {_pct(metrics.aacc)}")
    for i in rows:
        if i < 0:
            table.add_row("…", "", "")
            continue
        name = names[i] if i < len(names) else str(i)
        table.add_row(Text(name), _pct(metrics.iou[i]), _pct(metrics.acc[i]))
    return table


def _interrupted(recipe: Path, run_dir: Path, compare: bool) -> str:
    """What Ctrl-C says: how to continue, or that nothing was kept (a start is undone before its first
    checkpoint)."""
    from eqsurgeon.training.checkpoint import list_checkpoints

    again = f"eqsurgeon train {recipe}{' --compare' if compare else ''} --resume"
    if compare:
        return f"interrupted; finished runs in {run_dir} are kept: continue with `{again}` (same options)"
    kept = list_checkpoints(run_dir) if run_dir.is_dir() else []
    if not kept:
        return "interrupted before the first checkpoint, so nothing was kept; run the same command again"
    return (
        f"interrupted; {run_dir} keeps its checkpoint of iteration {kept[-1].iteration}: continue with "
        f"`{again}` and the same options"
    )


def _toml_str(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_compare(cfg: TrainConfig, seeds: int, resume: bool) -> Comparison:
    """Run the comparison with a progress bar per run, print the table and where the files are."""
    from eqsurgeon.training.compare import compare
    from eqsurgeon.training.loop import train as loop_train

    def train_one(run_cfg: TrainConfig, run_resume: bool) -> object:
        with progress(run_cfg) as on_log:
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
