"""``eqsurgeon models``: list the built-in zoo with size, cost, fusion sites and paper table."""

from __future__ import annotations

import fnmatch
import json
from typing import Annotated

import typer
from rich.table import Table

from eqsurgeon.cli._common import console, err_console, handle_errors
from eqsurgeon.errors import ModelLoadError
from eqsurgeon.zoo import list_models
from eqsurgeon.zoo.summary import FLOPS_SIZE, ModelSummary, summarize


@handle_errors
def models(
    pattern: Annotated[
        str | None,
        typer.Argument(help="only models whose name matches this glob, e.g. 'upernet_*'", show_default=False),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="write JSON to stdout instead of a table (exact parameter counts)")
    ] = False,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="count GFLOPs at 512x512")] = True,
    sites: Annotated[
        bool, typer.Option("--sites/--no-sites", help="count fusion sites (builds each model on CPU)")
    ] = True,
) -> None:
    """List the zoo: parameters, GFLOPs at 512x512, fusion sites, and the paper table each model is in.

    Any name listed here works as MODEL in the other commands, e.g. `eqsurgeon analyze upernet_swin_tiny`.
    """
    names = list_models()
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern) or pattern == n]
        if not names:
            raise ModelLoadError(f"no zoo model matches {pattern!r}; run `eqsurgeon models` to list them all")
    rows = []
    # Capturing each graph takes seconds (Swin's about ten), so say what is happening on stderr.
    with err_console.status("") as status:
        for name in names:
            status.update(f"describing {name} ({len(rows) + 1}/{len(names)})")
            rows.append(summarize(name, flops=flops, sites=sites))
    if as_json:
        typer.echo(json.dumps(_to_json(rows), indent=2))
    else:
        console.print(_table(rows))


def _to_json(rows: list[ModelSummary]) -> dict[str, object]:
    return {
        "flops_input": list(FLOPS_SIZE),
        "models": [
            {
                "name": r.name,
                "params": r.params,
                "gflops": None if r.gflops is None else round(r.gflops, 2),
                "sites": r.sites,
                "paper_table": r.paper_table,
                "mmseg_config": r.mmseg_config,
                "tags": list(r.tags),
            }
            for r in rows
        ],
    }


def _table(rows: list[ModelSummary]) -> Table:
    h, w = FLOPS_SIZE
    table = Table(title="eqsurgeon model zoo (150 classes, auxiliary head included)")
    table.add_column("name", style="bold", no_wrap=True)  # the name is what users copy: never cut it
    table.add_column("params (M)", justify="right")
    table.add_column(f"GFLOPs {h}x{w}", justify="right")
    table.add_column("sites", justify="right")
    table.add_column("paper", no_wrap=True)
    table.add_column("mmseg config", overflow="fold")
    for r in rows:
        table.add_row(
            r.name,
            f"{r.params / 1e6:.2f}",
            "-" if r.gflops is None else f"{r.gflops:.1f}",
            "-" if r.sites is None else str(r.sites),
            r.paper_table or "-",
            r.mmseg_config.removeprefix("configs/") or "-",
        )
    return table
