"""``eqsurgeon check``: exit 1 when a fusion site is out of scale equilibrium (for CI)."""

from __future__ import annotations

import json
from typing import Annotated
from xml.sax.saxutils import quoteattr

import typer

from eqsurgeon.checking import DEFAULT_MAX_RATIO, CheckResult, check
from eqsurgeon.cli import _common as c
from eqsurgeon.cli._render import print_capture

FORMATS = ("text", "json", "junit")


@c.handle_errors
def check_cmd(
    model: c.ModelArg,
    max_ratio: Annotated[
        float, typer.Option("--max-ratio", help="largest effective var_ratio that passes", min=1.0)
    ] = DEFAULT_MAX_RATIO,
    fmt: Annotated[str, typer.Option("--format", help="text, json or junit (to stdout)")] = "text",
    allow_unsearched: Annotated[
        bool,
        typer.Option(
            "--allow-unsearched", help="pass although a leaf module could not be searched for sites"
        ),
    ] = False,
    arg: c.ArgOpt = None,
    checkpoint: c.CheckpointOpt = None,
    frontend: c.FrontendOpt = "auto",
    data: c.DataOpt = None,
    input_size: c.InputSizeOpt = c.MEASURE_INPUT_SIZE,
    batch_size: c.BatchSizeOpt = c.MEASURE_BATCH_SIZE,
    batches: c.BatchesOpt = c.MEASURE_BATCHES,
    seed: c.SeedOpt = 0,
    bn_mode: c.BnModeOpt = "auto",
    device: c.DeviceOpt = "cpu",
) -> None:
    """Exit 0 when every equalizable site's effective var_ratio ≤ --max-ratio, 1 when not, 2 on bad input."""
    if fmt not in FORMATS:
        raise c.EqSurgeonError(f"--format {fmt!r} is unknown; use text, json or junit")
    analysis, metadata = c.measured_analysis(
        model, arg, checkpoint, data, input_size, batch_size, batches, seed, bn_mode, frontend, device
    )
    result = check(analysis, max_ratio, metadata, allow_unsearched)
    if fmt == "json":
        typer.echo(json.dumps(_as_dict(model, result), indent=2))
    elif fmt == "junit":
        typer.echo(_as_junit(model, result))
    else:
        print_capture(analysis)
        _print_text(result)
        if analysis.unsearched and not allow_unsearched:
            c.console.print("pass --allow-unsearched to accept leaf modules that could not be searched")
    raise typer.Exit(0 if result.passed else 1)


def _print_text(result: CheckResult) -> None:
    if not result.verdicts:
        c.console.print("[bold green]pass[/]: no fusion site in this model, nothing to equalize")
        return
    for v in result.verdicts:
        mark = "[green]pass[/]" if v.passed else "[red]FAIL[/]"
        ratio = "-" if v.ratio is None else f"{v.ratio:.3f}"
        eq = " (folded scales applied)" if v.equalized else ""
        c.console.print(f"{mark} {v.layer}: var_ratio {ratio}{eq} — {v.note}", highlight=False)
    failed = sum(not v.passed for v in result.verdicts)
    summary = "all sites in equilibrium" if result.passed else f"{failed} site(s) out of equilibrium"
    c.console.print(f"[bold]{summary}[/] (max ratio {result.max_ratio:g})")


def _as_dict(model: str, result: CheckResult) -> dict[str, object]:
    return {
        "model": model,
        "passed": result.passed,
        "max_ratio": result.max_ratio,
        "sites": [
            {
                "layer": v.layer,
                "var_ratio": v.ratio,
                "passed": v.passed,
                "equalized": v.equalized,
                "note": v.note,
            }
            for v in result.verdicts
        ],
    }


def _as_junit(model: str, result: CheckResult) -> str:
    failures = sum(not v.passed for v in result.verdicts)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<testsuite name="eqsurgeon.check" tests="{len(result.verdicts)}" failures="{failures}">',
    ]
    for v in result.verdicts:
        attrs = f"classname={quoteattr(model)} name={quoteattr(v.layer)}"
        if v.passed:
            lines.append(f"  <testcase {attrs}/>")
        else:
            lines.append(f"  <testcase {attrs}><failure message={quoteattr(v.note)}/></testcase>")
    lines.append("</testsuite>")
    return "\n".join(lines)
