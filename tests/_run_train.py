"""`python tests/_run_train.py RECIPE ...`: the train command alone, for subprocess and torchrun tests."""

import typer

from eqsurgeon.cli.train import train

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(train)

if __name__ == "__main__":
    app()
