"""``eqsurgeon check``: exit 1 when a fusion site is out of scale equilibrium (for CI)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal
from xml.sax.saxutils import quoteattr

import typer
from rich.console import Console

from eqsurgeon.cli import _common as c
from eqsurgeon.cli._render import data_options, measure_options, print_capture, print_skipped, with_caps

if TYPE_CHECKING:
    from eqsurgeon.checking import CheckResult

MAX_RATIO = 1.5  # eqsurgeon.checking.DEFAULT_MAX_RATIO, repeated here so --help imports no torch


@c.handle_errors
def check_cmd(
    model: c.ModelArg,
    max_ratio: Annotated[
        float, typer.Option("--max-ratio", help="largest effective var_ratio that passes", min=1.0)
    ] = MAX_RATIO,
    fmt: Annotated[
        Literal["text", "json", "junit"], typer.Option("--format", help="text, or json/junit to stdout")
    ] = "text",
    allow_unsearched: Annotated[
        bool, typer.Option("--allow-unsearched", help="pass although a leaf module could not be searched")
    ] = False,
    arg: c.ArgOpt = None,
    checkpoint: c.CheckpointOpt = None,
    checkpoint_key: c.CheckpointKeyOpt = None,
    frontend: c.FrontendOpt = "auto",
    data: c.DataOpt = None,
    input_size: c.InputSizeOpt = None,
    batch_size: c.BatchSizeOpt = c.BATCH_SIZE,
    batches: c.BatchesOpt = c.BATCHES,
    seed: c.SeedOpt = 0,
    max_megapixels: c.MaxMegapixelsOpt = c.MAX_MEGAPIXELS,
    max_aspect: c.MaxAspectOpt = c.MAX_ASPECT,
    bn_mode: c.BnModeOpt = "auto",
    device: c.DeviceOpt = "auto",
) -> None:
    """Exit 0 when every equalizable site's effective var_ratio ≤ --max-ratio, 1 when not, 2 on bad input."""
    from eqsurgeon import api
    from eqsurgeon.report import check_to_dict

    try:
        opts = data_options(input_size, batch_size, seed, device, batches=batches)
        opts = with_caps(opts, max_megapixels, max_aspect)
        ref = c.model_ref(model, arg, checkpoint, checkpoint_key)
        how = measure_options(bn_mode, frontend)
        done = api.check(ref, data, opts, how, max_ratio, allow_unsearched=allow_unsearched)
    except Exception as exc:  # CI reads the document: it must say what failed, then the boundary exits
        if fmt != "text":
            _emit_error(fmt, model, max_ratio, *c.describe(exc))
        raise
    assert done.result is not None
    out = c.human(fmt)
    print_skipped(c.err_console, done.skipped)
    if fmt == "json":
        c.emit_json(check_to_dict(model, done.result))
    elif fmt == "junit":
        typer.echo(_as_junit(model, done.result))
    else:
        print_capture(out, done.analysis)
        _print_text(out, done.result)
        if done.analysis.unsearched and not allow_unsearched:
            out.print("pass --allow-unsearched to accept leaves that could not be searched", markup=False)
    raise typer.Exit(0 if done.result.passed else c.EXIT_FAILED)


def _print_text(out: Console, result: CheckResult) -> None:
    verdicts = result.verdicts
    if not verdicts:
        out.print("[bold green]pass[/]: no fusion site in this model, nothing to equalize")
        return
    for v in verdicts:
        mark = "[green]pass[/]" if v.passed else "[red]FAIL[/]"
        ratio = "-" if v.ratio is None else f"{v.ratio:.3f}"
        eq = {"record": " (folded scales applied)", "weights": " (folded scales read from the weights)"}.get(
            v.scales_from or "", ""
        )
        out.print(mark, end=" ")
        out.print(f"{v.layer}: var_ratio {ratio}{eq} — {v.note}", markup=False)
    failed = sum(not v.passed for v in verdicts)
    passed = result.passed
    summary = "all sites in equilibrium" if passed else f"{failed} site(s) out of equilibrium"
    out.print(f"[bold]{summary}[/] (max ratio {result.max_ratio:g})")


def _emit_error(fmt: str, model: str, max_ratio: float, code: int, message: str) -> None:
    # The document a CI job gets when check could not run (exit 2; 3 for a bug): one error, no sites.
    message = " ".join(message.split())
    if fmt == "json":
        c.emit_json(
            {"model": model, "passed": False, "max_ratio": max_ratio, "sites": [], "error": message,
             "exit_code": code}
        )  # fmt: skip
        return
    typer.echo(
        "\n".join([
            '<?xml version="1.0" encoding="utf-8"?>',
            '<testsuite name="eqsurgeon.check" tests="1" failures="0" errors="1">',
            f"  <testcase classname={quoteattr(model)} name=\"check\"><error message={quoteattr(message)} "
            f'type="exit {code}"/></testcase>',
            "</testsuite>",
        ])
    )  # fmt: skip


def _as_junit(model: str, result: CheckResult) -> str:
    verdicts = result.verdicts
    failures = sum(not v.passed for v in verdicts)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<testsuite name="eqsurgeon.check" tests="{len(verdicts)}" failures="{failures}">',
    ]
    for v in verdicts:
        attrs = f"classname={quoteattr(model)} name={quoteattr(v.layer)}"
        if v.passed:
            lines.append(f"  <testcase {attrs}/>")
        else:
            ratio = "not measurable" if v.ratio is None else f"{v.ratio:.4f}"
            message = f"var_ratio {ratio} > max_ratio {result.max_ratio:g}: {v.note}"
            lines.append(f"  <testcase {attrs}><failure message={quoteattr(message)}/></testcase>")
    lines.append("</testsuite>")
    return "\n".join(lines)
