"""The A/B comparison: one recipe without equalization and with each mode, for several seeds.

    <out>/none_s0  fold_s0  insert_s0  none_s1 ...   one ordinary run folder each (trainer's layout)
    <out>/compare.json                              every run's final and best mIoU, curve, and the table
    <out>/miou_curves.png                           mIoU against iteration, one colour per mode, and
                                                    each site's grad_ratio against iteration beside it

Runs of the same seed share the model initialization and the data order, so "Diff" is a paired
difference per seed; the table reports mean ± sample std over seeds, like the paper's five-seed averages.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eqsurgeon.errors import OutputExistsError
from eqsurgeon.io import write_json
from eqsurgeon.training import distributed, runlog
from eqsurgeon.training.compare_grads import (
    COLOURS,
    STYLES,
    GradCurve,
    grad_curve,
    grad_summary,
    layers_of,
    plot_grad_panels,
)
from eqsurgeon.training.config import TrainConfig

COMPARE_JSON = "compare.json"
CURVES_PNG = "miou_curves.png"
BASELINE = "none"


@dataclass(frozen=True)
class RunOutcome:
    """One finished run of the comparison."""

    mode: str  # none | fold | insert
    seed: int
    run_dir: Path
    miou: float  # at the end of training
    best_miou: float
    curve: tuple[tuple[int, float], ...]  # (iteration, mIoU) at each evaluation
    grad_curve: GradCurve = ()  # (iteration, {layer: grad_ratio}) every run.log_interval


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (std is NaN for one seed)."""

    mean: float
    std: float


@dataclass(frozen=True)
class CompareRow:
    """One line of the paper's table: w/o EQ, w/ EQ (this mode) and their per-seed difference."""

    mode: str
    without: Stat
    with_eq: Stat
    diff: Stat


@dataclass(frozen=True)
class Comparison:
    """Everything ``compare`` produced."""

    out: Path
    seeds: tuple[int, ...]
    runs: tuple[RunOutcome, ...]
    rows: tuple[CompareRow, ...]
    json_path: Path
    png_path: Path


TrainFn = Callable[[TrainConfig, bool], Any]  # (cfg, resume) -> the trainer's TrainResult


def compare(
    cfg: TrainConfig,
    seeds: int,
    *,
    modes: Sequence[str] = ("fold", "insert"),
    resume: bool = False,
    force: bool = False,
    train_fn: TrainFn | None = None,
    on_run: Callable[[str, int, TrainConfig], None] | None = None,
) -> Comparison:
    """Train ``cfg`` with ``eq.mode`` none and each of ``modes`` for ``seeds`` seeds; summarize.

    Args:
        cfg: the resolved recipe; ``run.out`` becomes the comparison folder, ``run.seed`` the first seed.
        seeds: how many seeds (run.seed, run.seed + 1, ...).
        modes: the equalization modes compared against no equalization.
        resume: reuse finished runs in ``run.out`` and resume unfinished ones from their checkpoints.
        force: overwrite an existing compare.json (each run folder still refuses to be overwritten).
        train_fn: the trainer (default ``eqsurgeon.training.loop.train``); a test may pass its own.
        on_run: called before each run with (mode, seed, its config), e.g. to show progress.

    Raises:
        OutputExistsError: ``run.out`` already holds a comparison and neither ``resume`` nor ``force``.

    >>> # runs real trainings; see tests/test_compare.py
    """
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: pass at least 1")
    out = Path(cfg.run.out)
    json_path, png_path = out / COMPARE_JSON, out / CURVES_PNG
    if json_path.exists() and not (resume or force):
        raise OutputExistsError(
            f"{json_path} exists; pass --resume to reuse its runs or choose another --out"
        )
    if train_fn is None:
        from eqsurgeon.training.loop import train as loop_train

        def train_fn(c: TrainConfig, r: bool) -> Any:
            return loop_train(c, resume=r)

    seed_list = tuple(cfg.run.seed + i for i in range(seeds))
    with distributed.process_group(cfg.run.device):
        outcomes = _run_all(cfg, out, seed_list, modes, resume, train_fn, on_run)
    rows = tuple(summarize(outcomes, modes))
    result = Comparison(out, seed_list, tuple(outcomes), rows, json_path, png_path)
    if runlog.launched_rank() == 0:  # rank 0 alone writes the comparison
        write_json(json_path, to_json(result, cfg))
        plot_curves(result.runs, png_path)
    return result


def _run_all(
    cfg: TrainConfig,
    out: Path,
    seed_list: tuple[int, ...],
    modes: Sequence[str],
    resume: bool,
    train_fn: TrainFn,
    on_run: Callable[[str, int, TrainConfig], None] | None,
) -> list[RunOutcome]:
    outcomes = []
    for seed in seed_list:
        for mode in (BASELINE, *modes):
            run_cfg = dataclasses.replace(
                cfg,
                eq=dataclasses.replace(cfg.eq, mode=mode),
                run=dataclasses.replace(cfg.run, seed=seed, out=str(out / f"{mode}_s{seed}")),
            )
            run_dir = Path(run_cfg.run.out)
            if not (resume and (run_dir / "summary.json").is_file()):
                if on_run is not None:
                    on_run(mode, seed, run_cfg)
                train_fn(run_cfg, resume and (run_dir / "config.toml").is_file())
            distributed.barrier()  # rank 0 has written the run's summary before any rank reads it
            outcomes.append(read_outcome(run_dir, mode, seed))
    return outcomes


def read_outcome(run_dir: Path, mode: str, seed: int) -> RunOutcome:
    """A finished run's mIoU figures and grad_ratio curve, read from its metrics.jsonl and summary.json."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    curve = [(int(r["iter"]), float(r["mIoU"])) for r in records if "mIoU" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary.get("mIoU")
    best = summary.get("best_mIoU")
    return RunOutcome(
        mode,
        seed,
        run_dir,
        float(final) if final is not None else math.nan,
        float(best) if best is not None else math.nan,
        tuple(curve),
        grad_curve(records),
    )


def summarize(outcomes: Sequence[RunOutcome], modes: Sequence[str]) -> list[CompareRow]:
    """Per mode: final mIoU without and with equalization, and their paired difference per seed.

    >>> runs = [RunOutcome("none", s, Path("."), m, m, ()) for s, m in ((0, 0.40), (1, 0.42))]
    >>> runs += [RunOutcome("fold", s, Path("."), m, m, ()) for s, m in ((0, 0.41), (1, 0.44))]
    >>> row = summarize(runs, ["fold"])[0]
    >>> round(row.diff.mean, 3), round(row.with_eq.mean, 3)
    (0.015, 0.425)
    """
    base = {o.seed: o.miou for o in outcomes if o.mode == BASELINE}
    rows = []
    for mode in modes:
        eq = {o.seed: o.miou for o in outcomes if o.mode == mode}
        paired = sorted(set(base) & set(eq))
        rows.append(
            CompareRow(
                mode,
                _stat([base[s] for s in paired]),
                _stat([eq[s] for s in paired]),
                _stat([eq[s] - base[s] for s in paired]),
            )
        )
    return rows


def to_json(result: Comparison, cfg: TrainConfig) -> dict[str, Any]:
    """The compare.json document (keys may be added, never renamed)."""
    modes = [r.mode for r in result.rows]
    return {
        "model": cfg.model.name,
        "iterations": cfg.schedule.iters,
        "seeds": list(result.seeds),
        "metric": "mIoU at the end of training (fraction, 0-1)",
        "runs": [
            {
                "mode": o.mode,
                "seed": o.seed,
                "run_dir": str(o.run_dir),
                "mIoU": _finite(o.miou),
                "best_mIoU": _finite(o.best_miou),
                "curve": [list(p) for p in o.curve],
                "grad_ratio": [[i, dict(r)] for i, r in o.grad_curve],
            }
            for o in result.runs
        ],
        "grad_ratio": grad_summary([(o.mode, o.grad_curve) for o in result.runs], (BASELINE, *modes)),
        "table": [
            {
                "mode": r.mode,
                **{k: {"mean": _finite(s.mean), "std": _finite(s.std)} for k, s in _row_stats(r)},
            }
            for r in result.rows
        ],
        "png": str(result.png_path),
    }


def plot_curves(outcomes: Sequence[RunOutcome], path: Path) -> None:
    """mIoU against iteration for every run (one colour per mode, one line per seed) and, beside it, one
    panel of grad_ratio against iteration per fusion site; written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    panels = 1 + len(layers_of([o.grad_curve for o in outcomes]))
    fig, axes = plt.subplots(1, panels, figsize=(6.4 + 4.6 * (panels - 1), 4.0), dpi=100, squeeze=False)
    ax = axes[0][0]
    labelled: set[str] = set()
    seeds = sorted({o.seed for o in outcomes})
    plot_grad_panels(axes[0][1:], [(o.mode, o.seed, o.grad_curve) for o in outcomes], seeds)
    for o in outcomes:
        if not o.curve:
            continue
        iters, mious = zip(*o.curve, strict=True)
        label = None if o.mode in labelled else ("w/o EQ" if o.mode == BASELINE else f"w/ EQ ({o.mode})")
        labelled.add(o.mode)
        style = STYLES[seeds.index(o.seed) % len(STYLES)]
        ax.plot(
            iters, [100 * m for m in mious], style, color=COLOURS.get(o.mode), marker="o", ms=3, label=label
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"line style = seed ({', '.join(map(str, seeds))})", fontsize=9)
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _row_stats(row: CompareRow) -> list[tuple[str, Stat]]:
    return [("without_eq", row.without), ("with_eq", row.with_eq), ("diff", row.diff)]


def _stat(values: list[float]) -> Stat:
    if not values:
        return Stat(math.nan, math.nan)
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return Stat(statistics.fmean(values), std)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
