"""The ``eqsurgeon`` command line: a thin shell over the library, one file per command."""

from __future__ import annotations

from typing import Annotated

import typer

from eqsurgeon.cli._common import State

app = typer.Typer(
    name="eqsurgeon",
    help="Find and repair scale disequilibrium at the feature-fusion sites of segmentation networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False,
) -> None:
    State.debug = debug


def _register() -> None:
    # Each command lives in its own module; registering here keeps the order of `--help` deliberate.
    from eqsurgeon.cli import analyze, calibrate, check, convert_mmseg, demo_data, eval, models, train, verify

    app.command("analyze")(analyze.analyze)
    app.command("check")(check.check_cmd)
    app.command("calibrate")(calibrate.calibrate)
    app.command("verify")(verify.verify)
    app.command("models")(models.models)
    app.command("train")(train.train)
    app.command("eval")(eval.evaluate)
    app.command("demo-data")(demo_data.demo_data)
    app.command("convert-mmseg")(convert_mmseg.convert_mmseg)


_register()


def main() -> None:
    """Entry point of the ``eqsurgeon`` console script."""
    app()
