"""``eqsurgeon train RECIPE``: fine-tune a segmentation model with a recipe, on one CPU or many GPUs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from eqsurgeon.cli._common import State, console, handle_errors
from eqsurgeon.training.config import TrainConfig, load_config

if TYPE_CHECKING:
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
    from eqsurgeon.cli.train_compare import batch_note, run_compare

    State.on_interrupt = lambda: _interrupted(recipe, Path(cfg.run.out), compare)
    note = batch_note(cfg)
    if note:
        console.print(note)
    if compare:  # --out is the comparison folder: one run folder per (mode, seed) inside

        run_compare(cfg, seeds, resume)
        return
    with _progress(cfg) as on_log:
        result = run_training(cfg, resume=resume, on_log=on_log)
    if result.metrics is not None:
        console.print(iou_table(result.metrics, cfg.data.class_names))
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


def iou_table(metrics: SegMetrics, names: tuple[str, ...] = ()) -> Table:
    """Per-class IoU and accuracy, with mIoU and overall accuracy in the footer."""
    table = Table(title="per-class IoU", show_footer=True)
    table.add_column("class", footer="mean")
    table.add_column("IoU %", justify="right", footer=_pct(metrics.miou))
    table.add_column("Acc %", justify="right", footer=f"aAcc {_pct(metrics.aacc)}")
    for i, (iou, acc) in enumerate(zip(metrics.iou, metrics.acc, strict=True)):
        table.add_row(Text(names[i] if i < len(names) else str(i)), _pct(iou), _pct(acc))
    return table


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.2f}"


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


class _progress:
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
        if record["phase"] == "eval":
            self.bar.update(self.task, miou=f"mIoU {_pct(record['mIoU'])}")
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
