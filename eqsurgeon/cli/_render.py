"""Rich rendering of analyses (only the CLI prints)."""

from __future__ import annotations

import math

from rich.markup import escape
from rich.table import Table

from eqsurgeon.analysis import Analysis
from eqsurgeon.cli._common import console
from eqsurgeon.report import reading


def print_capture(analysis: Analysis) -> None:
    line = f"captured with [bold]{analysis.frontend}[/]"
    if analysis.fx_error:
        line += f" (torch.fx failed: {analysis.fx_error})"
    console.print(line, highlight=False)
    console.print(
        f"measured on {analysis.input.images} {analysis.input.source} image(s) at "
        f"{analysis.input.size[0]}x{analysis.input.size[1]}, BN on "
        f"{'batch statistics' if analysis.bn_mode == 'batch' else 'running statistics (eval)'}",
        highlight=False,
    )
    for leaf in analysis.unsearched:
        console.print(
            f"[yellow]warning[/]: leaf module {escape(leaf.name)} could not be searched for sites "
            f"({escape(leaf.reason)})",
            highlight=False,
        )


def print_sites(analysis: Analysis) -> None:
    """One table per site, plus the add sites."""
    if not analysis.sites:
        console.print("[bold]no fusion site[/]: no upsample → concat → conv/linear in this model")
    for site in analysis.sites:
        ratio = analysis.var_ratio(site)
        table = Table(
            title=escape(
                f"{site.layer}  ({site.op}, groups={site.groups})  var_ratio={_fmt(ratio)}  [{site.status}]"
            ),
            title_justify="left",
            caption=escape(reading(analysis, site)),
            caption_justify="left",
        )
        for col in ("input", "channels", "source", "upsample", "mean", "var"):
            table.add_column(col, justify="right" if col in ("mean", "var") else "left", overflow="fold")
        moments = analysis.moments.get(site.layer)
        for i, s in enumerate(site.subjects):
            up = "-" if s.upsample is None else f"{s.upsample.mode} {_factor(s.upsample.factor)}"
            mean = _fmt(moments[i].mean) if moments else "-"
            var = _fmt(moments[i].var) if moments else "-"
            table.add_row(str(i), f"{s.channels[0]}:{s.channels[1]}", s.source, up, mean, var)
        console.print(table)
    for add in analysis.add_sites:
        ups = ", ".join(
            f"{s.source}" + (f" ({s.upsample.mode} {_factor(s.upsample.factor)})" if s.upsample else "")
            for s in add.inputs
        )
        console.print(f"add fusion (reported, not changed): {add.name} ← {ups}", highlight=False)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return "inf"
    return f"{x:.4f}"


def _factor(factor: tuple[float, ...]) -> str:
    """``(2.0, 2.0)`` → ``x2``; ``(1.5, 2.0)`` → ``x1.5x2``."""
    if not factor:
        return ""
    if len(set(factor)) == 1:
        return f"x{factor[0]:g}"
    return "x" + "x".join(f"{f:g}" for f in factor)
