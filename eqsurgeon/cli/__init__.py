"""The ``eqsurgeon`` command line: a thin shell over the library, one file per command.

Importing this package imports no torch, so ``eqsurgeon --help`` answers at once. Exit codes: 0 ok,
1 check failed, 2 bad input or environment, 3 an unexpected error (a bug), 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from eqsurgeon.cli._common import EXIT_INTERRUPTED, State, say_error


class _Group(TyperGroup):
    """Accepts ``--debug`` anywhere on the line, before or after the command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--debug" in args:
            cut = args.index("--") if "--" in args else len(args)
            State.debug = "--debug" in args[:cut]
            args = [a for i, a in enumerate(args) if a != "--debug" or i >= cut]
        else:
            State.debug = False
        return super().parse_args(ctx, args)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Usage errors (unknown option, bad value) as one ``error:`` line with exit 2, like every error."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # click's (vendored by typer) usage errors
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed: `eqsurgeon` alone
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            say_error(exc.format_message().rstrip(".") + hint)
            sys.exit(exc.exit_code)
        except click.Abort:
            say_error("aborted")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="eqsurgeon",
    cls=_Group,
    help="Find and repair scale disequilibrium at the feature-fusion sites of segmentation networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from eqsurgeon import __version__

        typer.echo(f"eqsurgeon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks (also after COMMAND)")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    State.debug = State.debug or debug


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


def main(*args: Any) -> None:
    """Entry point of the ``eqsurgeon`` console script."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not crash a print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    app()
